package bus

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
)

// checkFIFOOps drives a fifo with pushes, pops and requeues coded in ops
// and compares it with a sorted slice: the queue must always hold its
// events in seq order, whatever comes back and whichever blocks they sit
// in.
func checkFIFOOps(t *testing.T, ops []byte) {
	t.Helper()
	f := newFIFO()
	var model []uint64 // waiting seqs
	var out []uint64   // popped, not yet requeued
	next := uint64(0)
	for _, op := range ops {
		switch op % 3 {
		case 0:
			next++
			f.Push(entry{seq: next})
			model = append(model, next)
		case 1:
			if f.Len() == 0 {
				continue
			}
			e := f.Pop()
			if e.seq != model[0] {
				t.Fatalf("Pop = %d, want %d", e.seq, model[0])
			}
			model = model[1:]
			out = append(out, e.seq)
		case 2:
			if len(out) == 0 {
				continue
			}
			i := int(op/3) % len(out)
			seq := out[i]
			out = slices.Delete(out, i, i+1)
			f.Requeue(entry{seq: seq})
			model = append(model, seq)
			slices.Sort(model)
		}
		if f.Len() != len(model) {
			t.Fatalf("Len = %d, want %d", f.Len(), len(model))
		}
	}
	for _, want := range model {
		if got := f.Pop().seq; got != want {
			t.Fatalf("drain: %d, want %d", got, want)
		}
	}
}

// repeat is n copies of op.
func repeat(op byte, n int) []byte { return slices.Repeat([]byte{op}, n) }

// TestFIFOKeepsSeqOrder runs the model check over sequences that take the
// fifo across block boundaries: pops that empty a block, requeues that need
// a block before the head, requeues between waiting events of two blocks.
func TestFIFOKeepsSeqOrder(t *testing.T) {
	tests := []struct {
		name string
		ops  []byte
	}{
		{"push and pop one block and a bit", slices.Concat(repeat(0, fifoSlots+1), repeat(1, fifoSlots+1))},
		{"requeue before a full head block", slices.Concat(repeat(0, 2), repeat(1, 2), repeat(0, fifoSlots), repeat(2, 2))},
		{"requeue the newest behind older waiting events", slices.Concat(repeat(0, 3*fifoSlots), repeat(1, fifoSlots+5),
			repeat(5, fifoSlots+5), repeat(1, 7), repeat(2, 7))},
		{"pop everything requeued across blocks", slices.Concat(repeat(0, 2*fifoSlots), repeat(1, 2*fifoSlots),
			repeat(2, 2*fifoSlots), repeat(1, 2*fifoSlots), repeat(0, 3))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { checkFIFOOps(t, tt.ops) })
	}
}

// TestFIFORequeueAcrossBlocks requeues one event among waiting ones that
// fill a few blocks from a given head slot, so that it lands at each kind
// of place: first (in the head block, or in a block put before it), in
// the last slot of a block or the first of the next, and last, after
// every waiting event has moved back across the blocks.
func TestFIFORequeueAcrossBlocks(t *testing.T) {
	tests := []struct {
		name    string
		popped  int // events popped first: the head's slot in its block
		waiting int
		ahead   int // waiting events with a lower seq than the requeued one
	}{
		{"into an empty fifo", 0, 0, 0},
		{"first, in a block before the head", 0, 5, 0},
		{"first, in the head block", 3, 5, 0},
		{"in the head block's last slot", 7, 2 * fifoSlots, fifoSlots - 7},
		{"in the next block's first slot", 7, 2 * fifoSlots, fifoSlots - 6},
		{"into the head block from a block before it", 0, 2 * fifoSlots, 1},
		{"mid-way, from a block before the head", 0, 2 * fifoSlots, fifoSlots + 3},
		{"last, from a block before the head", 0, 3 * fifoSlots, 3 * fifoSlots},
		{"last, from mid-block", 7, 2*fifoSlots + 5, 2*fifoSlots + 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFIFO()
			// Even seqs wait; the requeued one is odd, between two.
			var want []uint64
			for i := range tt.popped + tt.waiting {
				seq := uint64(2 * (i + 1))
				f.Push(entry{seq: seq})
				if i >= tt.popped {
					want = append(want, seq)
				}
			}
			for range tt.popped {
				f.Pop()
			}
			seq := uint64(2*(tt.popped+tt.ahead) + 1)
			f.Requeue(entry{seq: seq})
			want = slices.Insert(want, tt.ahead, seq)
			if f.Len() != len(want) {
				t.Fatalf("Len = %d, want %d", f.Len(), len(want))
			}
			var got []uint64
			for f.Len() > 0 {
				got = append(got, f.Pop().seq)
			}
			if !slices.Equal(got, want) {
				t.Errorf("order after requeueing %d:\n got %v\nwant %v", seq, got, want)
			}
		})
	}
}

// FuzzFIFOMatchesModel is the model check over random operations.
func FuzzFIFOMatchesModel(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 2, 1, 2, 0})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2})
	f.Add(slices.Concat(repeat(0, fifoSlots+3), repeat(1, fifoSlots), repeat(2, 5), repeat(8, 9)))
	f.Fuzz(checkFIFOOps)
}

// blocks is the number of blocks f holds, its spares included.
func (f *fifo) blocks() int {
	n := 0
	for b := f.head; b != nil; b = b.next {
		n++
	}
	for b := f.spare; b != nil; b = b.next {
		n++
	}
	return n
}

// TestFIFOHoldsBlocksForItsDepth checks that a fifo's blocks follow the
// most events it holds at once, not its queue's capacity: an idle queue,
// or one whose events pass a few at a time, keeps a block or two however
// many events have gone through it, one whose depth goes up and down by
// a prefetch or a default queue's capacity keeps the blocks for it, and
// one that filled past that gives all but maxSpareBlocks of its blocks
// back as it drains.
func TestFIFOHoldsBlocksForItsDepth(t *testing.T) {
	// spanned is the most blocks that rounds of depth events span: a round
	// starts in the block where the last one ended, where it ended.
	spanned := func(depth, rounds int) int {
		most := 0
		for r := range rounds {
			most = max(most, (r*depth%fifoSlots+depth+fifoSlots-1)/fifoSlots)
		}
		return most
	}
	tests := []struct {
		name          string
		depth, rounds int
		wantPeak      int // blocks held at the fullest
		wantAfter     int // blocks held once drained
	}{
		{"never used", 0, 0, 0, 0},
		{"one at a time", 1, 5000, 1, 1},
		{"a block at a time", fifoSlots, 100, 1, 1},
		{"a block and one at a time", fifoSlots + 1, 100, 2, 2},
		{"a prefetch at a time", 256, 100, spanned(256, 100), spanned(256, 100)},
		{"a full data queue", 1000, 2, spanned(1000, 2), spanned(1000, 2)},
		{"a burst past the spares", 3000, 2, spanned(3000, 2), 1 + maxSpareBlocks},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFIFO()
			seq, peak := uint64(0), 0
			for range tt.rounds {
				for range tt.depth {
					seq++
					f.Push(entry{seq: seq})
				}
				peak = max(peak, f.blocks())
				for range tt.depth {
					f.Pop()
				}
			}
			if peak != tt.wantPeak {
				t.Errorf("%d rounds of %d events: at most %d blocks, want %d", tt.rounds, tt.depth, peak, tt.wantPeak)
			}
			if got := f.blocks(); got != tt.wantAfter {
				t.Errorf("%d rounds of %d events: %d blocks once drained, want %d", tt.rounds, tt.depth, got, tt.wantAfter)
			}
		})
	}
}

// TestIdleQueuesHoldNoBlocks checks the same through the bus: a new bus
// holds no blocks for its queues, and events published and acked one at a
// time keep one block.
func TestIdleQueuesHoldNoBlocks(t *testing.T) {
	b := newInternalBus(t, DefaultQueues())
	blocks := func(name string) int {
		q := b.byName[name]
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.store.blocks()
	}
	for _, name := range b.Queues() {
		if n := blocks(name); n != 0 {
			t.Errorf("queue %s holds %d blocks before its first event, want 0", name, n)
		}
	}
	c, err := b.Subscribe("data", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	for i := range 2000 { // twice data's capacity
		if out, err := b.Publish(ctx, Event{Type: "CANDLE_UPDATE", Payload: json.RawMessage(`{}`)}, "data"); out != Accepted {
			t.Fatalf("publish %d: %v, %v", i, out, err)
		}
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Ack(d.Seq); err != nil {
			t.Fatal(err)
		}
	}
	if n := blocks("data"); n != 1 {
		t.Errorf("data holds %d blocks after events passed one at a time, want 1", n)
	}
}
