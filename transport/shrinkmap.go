package transport

// shrinkMapsAbove: a shrinkingMap that held more entries than this is
// rebuilt by shrink once it is down to a quarter of them. Below it a map
// is a few KiB at most and is left alone.
const shrinkMapsAbove = 64

// shrinkingMap is a map that can give back the room a burst made it grow
// to: a Go map keeps its largest size until it is dropped, so a
// connection's bookkeeping of hundreds of in-flight deliveries or waiting
// publishes would otherwise stay for as long as the connection is open.
// It shrinks only when told (shrink), once the connection has been quiet
// for a while: shrinking on the fly would rebuild and regrow it over and
// over while the number of entries swings, as it does under steady load.
// The zero value is empty and ready to use; it is not safe for concurrent
// use.
type shrinkingMap[K comparable, V any] struct {
	m    map[K]V
	peak int // the most entries m held since it was made
}

func (s *shrinkingMap[K, V]) get(k K) (V, bool) {
	v, ok := s.m[k]
	return v, ok
}

// put sets k to v. It reports whether the map just grew past
// shrinkMapsAbove, from when on it is worth a shrink.
func (s *shrinkingMap[K, V]) put(k K, v V) bool {
	if s.m == nil {
		s.m = make(map[K]V)
	}
	s.m[k] = v
	if n := len(s.m); n > s.peak {
		s.peak = n
		return n == shrinkMapsAbove+1
	}
	return false
}

func (s *shrinkingMap[K, V]) delete(k K) { delete(s.m, k) }

func (s *shrinkingMap[K, V]) len() int { return len(s.m) }

// grown reports whether the map has held more than shrinkMapsAbove entries
// since it was last rebuilt.
func (s *shrinkingMap[K, V]) grown() bool { return s.peak > shrinkMapsAbove }

// shrink rebuilds a grown map at its size once a quarter or less of its
// peak is left, and reports whether it is still grown (to be tried again
// later).
func (s *shrinkingMap[K, V]) shrink() bool {
	n := len(s.m)
	if !s.grown() || n > s.peak/4 {
		return s.grown()
	}
	if n == 0 {
		// Made again by the next put, as small as it needs.
		s.m, s.peak = nil, 0
		return false
	}
	// maps.Clone would keep the old map's size.
	m := make(map[K]V, n)
	for k, v := range s.m {
		m[k] = v
	}
	s.m, s.peak = m, n
	return s.grown()
}

// all iterates over the entries, in no particular order; the map must not
// change meanwhile.
func (s *shrinkingMap[K, V]) all(yield func(K, V) bool) {
	for k, v := range s.m {
		if !yield(k, v) {
			return
		}
	}
}
