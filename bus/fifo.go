package bus

import "unsafe"

// fifo is the in-memory store: the waiting events in a chain of
// fixed-size blocks of entries kept by value, oldest first. It holds
// blocks for the most events its queue holds at once rather than for its
// capacity, so a queue sized for bursts costs nothing while idle. Growing
// adds a block and copies nothing, so a queue that fills leaves no
// outgrown buffers behind for the collector: a doubling buffer would
// leave as many bytes of garbage as it ends up holding, and the heap
// keeps that garbage resident until the next collection. A block whose
// last event leaves is kept as a spare for the next growth, up to
// maxSpareBlocks of them, and let go beyond: a queue whose depth goes up
// and down, even across the whole of a default queue's capacity,
// allocates nothing, and one of a larger capacity drained after a burst
// does not hold the burst's blocks.
type fifo struct {
	head *fifoBlock // holds the oldest event; nil before the first push
	tail *fifoBlock // holds the newest
	hi   int        // index in head of the oldest event
	ti   int        // index in tail of the next push; fifoSlots: no room
	n    int
	// spare lists the empty blocks kept for the next growth, linked by
	// next.
	spare *fifoBlock
}

// maxSpareBlocks is the most empty blocks a fifo keeps: 128 KiB, room for
// 1344 events, more than the largest default queue holds (data, 1000).
// With 8 (336 events), concurrent publishers to data allocated 58 B per
// event (BenchmarkPublishDeliverConcurrent).
const maxSpareBlocks = 32

// fifoBlockBytes is a block's size: a size class of the allocator, so that
// a block wastes no more than the tail of its last slot, and small enough
// that a queue holding a few events holds a few kilobytes.
const fifoBlockBytes = 4096

// fifoSlots is the number of entries per block: as many as fit in
// fifoBlockBytes beside the link and the spare count.
const fifoSlots = int((fifoBlockBytes - 2*unsafe.Sizeof(uintptr(0))) / unsafe.Sizeof(entry{}))

type fifoBlock struct {
	next *fifoBlock // toward the tail, or the next spare
	// spares counts the spare blocks from this one on, while it is the
	// first spare: kept here rather than in the fifo, so that taking a
	// spare, on the path of every push that needs a block, has no count
	// to update.
	spares int
	slots  [fifoSlots]entry
}

// The queue holds its fifo by its concrete type, so that the per-event
// calls inline and a publish can fill its slot in place.
var _ store = (*fifo)(nil)

func newFIFO() *fifo { return &fifo{ti: fifoSlots} }

func (f *fifo) Len() int { return f.n }

func (f *fifo) Push(e entry) { *f.pushSlot() = e }

// pushSlot appends a zero entry and returns it, for the caller to fill in
// place: a publish writes its fields straight into its slot instead of
// building an entry to copy there.
func (f *fifo) pushSlot() *entry {
	if f.ti == fifoSlots {
		f.addTail()
	}
	e := &f.tail.slots[f.ti] // zero: dropHead clears what it takes
	f.ti++
	f.n++
	return e
}

// addTail links a block after the tail, which is full (or missing).
func (f *fifo) addTail() {
	b := f.newBlock()
	if f.tail == nil {
		f.head, f.hi = b, 0
	} else {
		f.tail.next = b
	}
	f.tail, f.ti = b, 0
}

// newBlock returns the spare block, or a new one.
func (f *fifo) newBlock() *fifoBlock {
	if b := f.spare; b != nil {
		f.spare, b.next = b.next, nil
		return b
	}
	return new(fifoBlock)
}

func (f *fifo) Pop() entry {
	e := *f.oldest()
	f.dropHead()
	return e
}

// oldest is the oldest event's slot, for a caller that copies it out itself
// before dropHead. Len must be > 0.
func (f *fifo) oldest() *entry { return &f.head.slots[f.hi] }

// dropHead removes the oldest event. Len must be > 0.
func (f *fifo) dropHead() {
	f.head.slots[f.hi] = entry{} // release the payload for the GC
	f.hi++
	f.n--
	if f.hi == fifoSlots {
		f.headDone()
	}
}

// headDone follows dropHead when it has taken the head block's last slot:
// an empty fifo starts again at that block's first slot, keeping it, as
// it keeps its place in the block while it has room; otherwise the block
// goes, to the spares or to the collector.
func (f *fifo) headDone() {
	if f.n == 0 {
		// head is the tail, and full: every event in it has gone.
		f.hi, f.ti = 0, 0
		return
	}
	b := f.head
	f.head, f.hi = b.next, 0
	b.next = f.spare
	if b.spares = 1; b.next != nil {
		b.spares += b.next.spares
	}
	if b.spares <= maxSpareBlocks {
		f.spare = b
	}
}

func (f *fifo) Requeue(e entry) {
	if f.n == 0 {
		f.Push(e)
		return
	}
	// A slot before the head, then each waiting event with a lower seq
	// than e's moves back into the free slot before it, which goes
	// forward with it: one walk over the blocks from the head.
	if f.hi == 0 {
		b := f.newBlock()
		b.next = f.head
		f.head, f.hi = b, fifoSlots
	}
	f.hi--
	b, i := f.head, f.hi // the free slot
	for range f.n {
		nb, ni := b, i+1 // the next waiting event
		if ni == fifoSlots {
			nb, ni = b.next, 0
		}
		if nb.slots[ni].seq >= e.seq {
			break
		}
		b.slots[i] = nb.slots[ni]
		b, i = nb, ni
	}
	b.slots[i] = e
	f.n++
}
