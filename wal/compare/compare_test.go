// Package compare benchmarks the purpose-built wal against general-purpose
// Go storage libraries on the sidecar's workload: durable appends from
// concurrent publishers (each call returns once its record is synced), and
// the append+delete steady state of a queue that keeps up. It is its own
// module so the sidecar does not depend on the libraries compared.
package compare

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	tidwall "github.com/tidwall/wal"
	bolt "go.etcd.io/bbolt"

	"github.com/eventbus-sidecar/eventbus-sidecar/wal"
)

// store is the workload's view of a log: a durable append and a delete
// (ack) that need not be synced at once.
type store interface {
	Append(data []byte) (uint64, error)
	Delete(seq uint64) error
	Close() error
}

var impls = []struct {
	name string
	open func(b *testing.B, dir string) store
}{
	{"eventbus-wal", openEventbus},
	{"tidwall-wal", openTidwall},
	{"bbolt", openBolt},
}

func runWriters(b *testing.B, w int, op func()) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range w {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				op()
			}
		})
	}
	wg.Wait()
}

func BenchmarkDurableAppend(b *testing.B) {
	for _, im := range impls {
		for _, writers := range []int{8, 64} {
			for _, size := range []int{256, 1024} {
				b.Run(fmt.Sprintf("%s/writers=%d/bytes=%d", im.name, writers, size), func(b *testing.B) {
					s := im.open(b, b.TempDir())
					defer s.Close()
					data := make([]byte, size)
					b.ReportAllocs()
					b.ResetTimer()
					runWriters(b, writers, func() {
						if _, err := s.Append(data); err != nil {
							b.Error(err)
						}
					})
				})
			}
		}
	}
}

func BenchmarkAppendDelete(b *testing.B) {
	for _, im := range impls {
		for _, writers := range []int{8, 64} {
			b.Run(fmt.Sprintf("%s/writers=%d/bytes=256", im.name, writers), func(b *testing.B) {
				s := im.open(b, b.TempDir())
				defer s.Close()
				data := make([]byte, 256)
				b.ReportAllocs()
				b.ResetTimer()
				runWriters(b, writers, func() {
					seq, err := s.Append(data)
					if err == nil {
						err = s.Delete(seq)
					}
					if err != nil {
						b.Error(err)
					}
				})
			})
		}
	}
}

// eventbus: the package under test, fsync always (group commit built in).
type eventbus struct{ l *wal.Log }

func openEventbus(b *testing.B, dir string) store {
	l, _, err := wal.Open(context.Background(), dir, wal.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return eventbus{l}
}

func (e eventbus) Append(data []byte) (uint64, error) {
	a, err := e.l.Append(context.Background(), data, "", time.Time{})
	return a.Seq, err
}
func (e eventbus) Delete(seq uint64) error { return e.l.Ack(seq) }
func (e eventbus) Close() error            { return e.l.Close() }

// groupCommit batches concurrent appends for a library that syncs once
// per call but has no group commit of its own: the first appender becomes
// the leader and commits everything queued behind it until none is left.
type groupCommit struct {
	mu     sync.Mutex
	cur    *pending
	busy   bool
	commit func(items [][]byte) (first uint64, err error)
}

type pending struct {
	items [][]byte
	first uint64
	done  chan struct{}
	err   error
}

func (g *groupCommit) append(data []byte) (uint64, error) {
	g.mu.Lock()
	if g.cur == nil {
		g.cur = &pending{done: make(chan struct{})}
	}
	p := g.cur
	i := len(p.items)
	p.items = append(p.items, data)
	if g.busy {
		g.mu.Unlock()
		<-p.done
		return p.first + uint64(i), p.err
	}
	g.busy = true
	for g.cur != nil {
		q := g.cur
		g.cur = nil
		g.mu.Unlock()
		q.first, q.err = g.commit(q.items)
		close(q.done)
		g.mu.Lock()
	}
	g.busy = false
	g.mu.Unlock()
	return p.first + uint64(i), p.err
}

// tidwall: github.com/tidwall/wal, a sync per WriteBatch (the default),
// with groupCommit in front. It deletes only a prefix (TruncateFront), so
// acks are applied every 4096 deletes up to the oldest one not yet
// deleted; an out-of-order ack waits for the prefix to reach it.
type tidwallStore struct {
	l    *tidwall.Log
	gc   *groupCommit
	next uint64

	dmu     sync.Mutex
	deleted map[uint64]bool
	front   uint64
	count   int
}

func openTidwall(b *testing.B, dir string) store {
	l, err := tidwall.Open(filepath.Join(dir, "log"), &tidwall.Options{SegmentSize: 8 << 20, AllowEmpty: true, NoCopy: true})
	if err != nil {
		b.Fatal(err)
	}
	t := &tidwallStore{l: l, next: 1, front: 1, deleted: map[uint64]bool{}}
	var batch tidwall.Batch
	t.gc = &groupCommit{commit: func(items [][]byte) (uint64, error) {
		batch.Clear()
		first := t.next
		for i, it := range items {
			batch.Write(first+uint64(i), it)
		}
		if err := l.WriteBatch(&batch); err != nil {
			return 0, err
		}
		t.next += uint64(len(items))
		return first, nil
	}}
	return t
}

func (t *tidwallStore) Append(data []byte) (uint64, error) { return t.gc.append(data) }

func (t *tidwallStore) Delete(seq uint64) error {
	t.dmu.Lock()
	defer t.dmu.Unlock()
	t.deleted[seq] = true
	t.count++
	if t.count%4096 != 0 {
		return nil
	}
	f := t.front
	for t.deleted[f] {
		delete(t.deleted, f)
		f++
	}
	if f == t.front {
		return nil
	}
	t.front = f
	return t.l.TruncateFront(f)
}

func (t *tidwallStore) Close() error { return t.l.Close() }

// bolt: go.etcd.io/bbolt, one bucket keyed by big-endian seq. DB.Batch is
// its group commit; MaxBatchDelay is lowered from 10 ms to 1 ms, about one
// fdatasync on this disk, or every batch would wait the full 10 ms.
type boltStore struct {
	db  *bolt.DB
	seq atomic.Uint64
}

var bucket = []byte("q")

func openBolt(b *testing.B, dir string) store {
	db, err := bolt.Open(filepath.Join(dir, "bolt.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	db.MaxBatchDelay = time.Millisecond
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucketIfNotExists(bucket); return err }); err != nil {
		b.Fatal(err)
	}
	return &boltStore{db: db}
}

func (s *boltStore) Append(data []byte) (uint64, error) {
	seq := s.seq.Add(1)
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return seq, s.db.Batch(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put(k[:], data) })
}

func (s *boltStore) Delete(seq uint64) error {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return s.db.Batch(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete(k[:]) })
}

func (s *boltStore) Close() error { return s.db.Close() }
