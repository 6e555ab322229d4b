package bus_test

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/wal"
)

// crashFS is the real file system until a set number of changes to it
// (writes, truncates, creations, removals, renames) have been made; from
// then on it changes nothing and reports success, as if the process had
// been killed there while the bus went on in a dream. With tear, the
// write the kill interrupts stores half its bytes. What a kill -9 leaves
// is what was written before the kill (the page cache keeps it, synced or
// not), so syncs do nothing here, unless they fail (failSyncsUnder);
// opening the directory again with the real file system is the restart.
type crashFS struct {
	wal.OSFS
	mu       sync.Mutex
	limit    int // changes allowed; < 0: no limit
	changes  int
	attempts int // changes made or refused
	refused  bool
	tear     bool
	// failSyncs fails the fdatasyncs of files whose path contains it.
	failSyncs string
}

// failSyncsUnder makes the fdatasyncs of files whose path contains dir
// fail with EIO until the returned func is called.
func (f *crashFS) failSyncsUnder(dir string) (recover func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failSyncs = dir
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.failSyncs = ""
	}
}

func newCrashFS() *crashFS { return &crashFS{limit: -1} }

// crashAfter lets n more changes through.
func (f *crashFS) crashAfter(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.limit = f.changes + n
}

// change counts one change and reports whether it may happen, and
// whether it is the one the kill interrupts.
func (f *crashFS) change() (ok, killed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts++
	if f.limit >= 0 && f.changes >= f.limit {
		killed = !f.refused
		f.refused = true
		return false, killed
	}
	f.changes++
	return true, false
}

// attempted counts the changes made or refused so far.
func (f *crashFS) attempted() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts
}

// crashed reports whether a change was refused: the process is "dead".
func (f *crashFS) crashed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refused
}

func (f *crashFS) OpenFile(name string, flag int, perm os.FileMode) (wal.File, error) {
	if flag&os.O_CREATE != 0 {
		if ok, _ := f.change(); !ok {
			return deadFile{}, nil
		}
	}
	file, err := f.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &crashFile{File: file, fs: f, name: name}, nil
}

func (f *crashFS) Remove(name string) error {
	if ok, _ := f.change(); !ok {
		return nil
	}
	return f.OSFS.Remove(name)
}

func (f *crashFS) Rename(from, to string) error {
	if ok, _ := f.change(); !ok {
		return nil
	}
	return f.OSFS.Rename(from, to)
}

func (f *crashFS) SyncDir(string) error { return nil }

type crashFile struct {
	wal.File
	fs   *crashFS
	name string
}

func (f *crashFile) WriteAt(p []byte, off int64) (int, error) {
	ok, killed := f.fs.change()
	if ok {
		return f.File.WriteAt(p, off)
	}
	if killed && f.fs.tear {
		if _, err := f.File.WriteAt(p[:len(p)/2], off); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (f *crashFile) Truncate(size int64) error {
	if ok, _ := f.fs.change(); !ok {
		return nil
	}
	return f.File.Truncate(size)
}

func (f *crashFile) Sync() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.fs.failSyncs != "" && strings.Contains(f.name, f.fs.failSyncs) {
		return &os.PathError{Op: "fdatasync", Path: f.name, Err: syscall.EIO}
	}
	return nil
}

// deadFile is a file created after the crash: it never reaches the disk.
type deadFile struct{}

func (deadFile) ReadAt([]byte, int64) (int, error)      { return 0, io.EOF }
func (deadFile) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }
func (deadFile) Truncate(int64) error                   { return nil }
func (deadFile) Sync() error                            { return nil }
func (deadFile) Close() error                           { return nil }

// TestDeadLetterMoveCrashAtEveryWrite kills the bus, in effect, after each
// change a dead-letter move makes to the disk in turn (or in the middle of
// it), from the publish of a poison event through its two nacks to the
// move into dlq, and checks after the restart that the event is in
// exactly one of the two queues (in none only if the crash came before its
// publish was written), that a dead letter carries the nacks' reason, and
// that an event left in order has deliveries to spare (one that used them
// up is moved at the start). Stepwise, each delivery and nack is written
// before the next step, so that each record is a crash point of its own;
// otherwise the logs batch them as they come. With srcFails, the source's
// fdatasyncs fail from the last nack on: the dead letter must stay
// undelivered through a failed retry, and land once a retry succeeds,
// the crash points of the retries included.
func TestDeadLetterMoveCrashAtEveryWrite(t *testing.T) {
	for _, tc := range []struct {
		order, dead bus.Fsync
		stepwise    bool
		tear        bool
		srcFails    bool
	}{
		{bus.FsyncAlways, bus.FsyncAlways, true, false, false},
		{bus.FsyncAlways, bus.FsyncAlways, true, true, false},
		{bus.FsyncAlways, bus.FsyncAlways, false, false, false},
		{bus.FsyncAlways, bus.FsyncInterval, true, false, false},
		{bus.FsyncAlways, bus.FsyncInterval, false, true, false},
		{bus.FsyncInterval, bus.FsyncAlways, true, false, false},
		{bus.FsyncInterval, bus.FsyncAlways, false, true, false},
		{bus.FsyncAlways, bus.FsyncAlways, true, false, true},
		{bus.FsyncAlways, bus.FsyncAlways, false, true, true},
		{bus.FsyncAlways, bus.FsyncInterval, true, true, true},
		{bus.FsyncInterval, bus.FsyncAlways, true, false, true},
	} {
		name := fmt.Sprintf("order=%s/dlq=%s/stepwise=%v/torn=%v/srcFails=%v", tc.order, tc.dead, tc.stepwise, tc.tear, tc.srcFails)
		t.Run(name, func(t *testing.T) {
			qs := durableQueues()
			qs[0].Fsync, qs[2].Fsync = tc.order, tc.dead
			const reason = "risk check failed: symbol halted"
			for crashAt := 0; ; crashAt++ {
				if crashAt > 200 {
					t.Fatal("the move makes more than 200 changes to the disk")
				}
				dir := t.TempDir()
				fsys := newCrashFS()
				fsys.tear = tc.tear
				clk := testkit.NewClock()
				b, stop := openDurable(t, dir, qs, clk, bus.WithWALOptions(wal.Options{FS: fsys}))
				fsys.crashAfter(crashAt)
				publishID(t, b, "order", 1, "poison")
				published := !fsys.crashed()
				c := subscribe(t, b, "order", 1)
				step := func(what string, fn func()) {
					before := fsys.attempted()
					fn()
					if tc.stepwise {
						testkit.Eventually(t, what+" written", func() bool { return fsys.attempted() > before })
					}
				}
				recoverSrc := func() {}
				for i := range 2 {
					var d bus.Delivery
					step("a delivery", func() { d = mustReceive(t, c) })
					if i == 1 && tc.srcFails {
						recoverSrc = fsys.failSyncsUnder(filepath.Join("queues", "order"))
					}
					step("a nack", func() {
						if err := c.NackReason(d.Seq, reason); err != nil {
							t.Fatal(err)
						}
					})
				}
				if tc.srcFails {
					for retry := range 2 {
						testkit.Eventually(t, "a retry of the source's sync armed, or the dead letter delivered", func() bool {
							return clk.Timers() == 1 || b.Stats()["dlq"].Size > 0
						})
						if st := b.Stats(); st["dlq"].Size != 0 || st["order"].DeadLettered != 0 {
							t.Fatalf("crash after %d changes: dlq holds %d, order dead_lettered %d while the source's ack is not durable; want 0, 0",
								crashAt, st["dlq"].Size, st["order"].DeadLettered)
						}
						if retry == 1 {
							recoverSrc()
						}
						clk.Advance(time.Minute) // past any retry's backoff
					}
				}
				testkit.Eventually(t, "the move, in memory", func() bool {
					st := b.Stats()
					return st["dlq"].Size == 1 && st["order"].DeadLettered == 1
				})
				stop()
				done := !fsys.crashed()

				// The second start finds what the first one finished; only
				// then is the event taken, which records a delivery.
				for restart := 1; restart <= 2; restart++ {
					b, stop = openDurable(t, dir, qs, clk)
					st := b.Stats()
					where := fmt.Sprintf("crash after %d changes, start %d: order holds %d, dlq %d", crashAt, restart, st["order"].Size, st["dlq"].Size)
					switch n := st["order"].Size + st["dlq"].Size; {
					case n > 1:
						t.Fatalf("%s: the event is in two places", where)
					case n == 0 && published:
						t.Fatalf("%s: the accepted event is lost", where)
					case restart == 1:
					case n == 1 && st["dlq"].Size == 1:
						d := mustReceive(t, subscribe(t, b, "dlq", 1))
						want := bus.DeadLetter{Queue: "order", Seq: 1, Deliveries: 2, Reason: reason}
						if d.DeadLetter == nil || *d.DeadLetter != want || d.Event.MsgID != "poison" || payloadID(t, d) != 1 {
							t.Fatalf("%s: dead letter %+v %s, want %+v", where, d.DeadLetter, d.Event.Payload, want)
						}
					case n == 1:
						d := mustReceive(t, subscribe(t, b, "order", 1))
						if d.Redeliveries >= 2 || payloadID(t, d) != 1 {
							t.Fatalf("%s: order gives back %s after %d deliveries; one with its deliveries used up belongs in dlq", where, d.Event.Payload, d.Redeliveries)
						}
					}
					stop()
				}
				if done {
					t.Logf("%d crash points", crashAt)
					return
				}
			}
		})
	}
}

// TestDeadLetterWaitsForTheSourceAck holds every fdatasync of the source
// queue's log while an event moves to its dead-letter queue: the dead
// letter must not be delivered until the source's ack is durable, or a
// consumer could ack it (and its log drop it) while a crash could still
// give the event back to the source.
func TestDeadLetterWaitsForTheSourceAck(t *testing.T) {
	fsys := &faultFS{}
	b, _ := openDurable(t, t.TempDir(), durableQueues(), testkit.NewClock(), bus.WithWALOptions(wal.Options{FS: fsys}))
	publishN(t, b, "order", "ORDER", 1, 1)
	c := subscribe(t, b, "order", 1)
	if err := c.NackReason(mustReceive(t, c).Seq, "first"); err != nil {
		t.Fatal(err)
	}
	d := mustReceive(t, c)
	open := fsys.holdSyncsUnder(filepath.Join("queues", "order"))
	t.Cleanup(open) // a failure must not leave Shutdown waiting on the gate
	before := fsys.syncCount()
	if err := c.NackReason(d.Seq, "second"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "the source's ack waiting for its fdatasync", func() bool { return fsys.syncCount() > before })
	if st := b.Stats(); st["dlq"].Size != 0 || st["order"].DeadLettered != 0 {
		t.Fatalf("dlq holds %d, order dead_lettered %d while the source's ack is not durable; want 0, 0", st["dlq"].Size, st["order"].DeadLettered)
	}
	open()
	testkit.Eventually(t, "the dead letter in dlq", func() bool {
		st := b.Stats()
		return st["dlq"].Size == 1 && st["order"].DeadLettered == 1
	})
	if d := mustReceive(t, subscribe(t, b, "dlq", 1)); d.DeadLetter == nil || d.DeadLetter.Reason != "second" {
		t.Fatalf("dead letter %+v, want reason second", d.DeadLetter)
	}
}

// TestDeadLetterHeldWhileTheSourceFails fails the source's log while an
// event moves to its dead-letter queue (its fdatasyncs, or its writes and
// fdatasyncs): the dead letter must stay undelivered, retried on the bus's
// clock with one error logged for the lot, until the source's ack is
// durable. When the disk recovers, it is delivered once; when the bus
// stops while it is held, its retry timer stops and the next start finds
// the event in exactly one queue, the dead-letter queue.
func TestDeadLetterHeldWhileTheSourceFails(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes bool // writes fail too: the ack never reaches the disk
		crash  bool // the bus stops while the dead letter is held
	}{
		{"fdatasync fails, then recovers", false, false},
		{"disk full, then recovers", true, false},
		{"fdatasync fails, stopped while held", false, true},
		{"disk full, stopped while held", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			clk := testkit.NewClock()
			fsys := &faultFS{}
			logs := &testkit.SyncBuffer{}
			b, stop := openDurable(t, dir, durableQueues(), clk, bus.WithWALOptions(wal.Options{FS: fsys}),
				bus.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
			publishID(t, b, "order", 1, "poison")
			c := subscribe(t, b, "order", 1)
			if err := c.NackReason(mustReceive(t, c).Seq, "halted"); err != nil {
				t.Fatal(err)
			}
			d := mustReceive(t, c)
			recoverSrc := fsys.failUnder(filepath.Join("queues", "order"), tc.writes)
			if err := c.NackReason(d.Seq, "still halted"); err != nil {
				t.Fatal(err)
			}
			for range 3 {
				testkit.Eventually(t, "a retry of the source's sync armed, or the dead letter delivered", func() bool {
					return clk.Timers() == 1 || b.Stats()["dlq"].Size > 0
				})
				if st := b.Stats(); st["dlq"].Size != 0 || st["order"].DeadLettered != 0 {
					t.Fatalf("dlq holds %d, order dead_lettered %d while the source's ack is not durable; want 0, 0",
						st["dlq"].Size, st["order"].DeadLettered)
				}
				clk.Advance(time.Minute) // past any retry's backoff
			}
			testkit.Eventually(t, "the next retry armed", func() bool { return clk.Timers() == 1 })
			if n := fsys.failureCount(); n < 3 {
				t.Fatalf("the source's disk failed %d times, want at least 3: the first sync and each retry", n)
			}
			if n := strings.Count(logs.String(), "dead letters held"); n != 1 {
				t.Fatalf("%d error lines for one failure episode, want 1:\n%s", n, logs.String())
			}
			if tc.crash {
				stop()
				if n := clk.Timers(); n != 0 {
					t.Fatalf("%d timers armed after Shutdown, want the retry stopped", n)
				}
			} else {
				recoverSrc()
				clk.Advance(time.Minute)
				testkit.Eventually(t, "the dead letter in dlq", func() bool {
					st := b.Stats()
					return st["dlq"].Size == 1 && st["order"].DeadLettered == 1
				})
				dl := mustReceive(t, subscribe(t, b, "dlq", 1)).DeadLetter
				if dl == nil || *dl != (bus.DeadLetter{Queue: "order", Seq: 1, Deliveries: 2, Reason: "still halted"}) {
					t.Fatalf("dead letter %+v", dl)
				}
				if n := strings.Count(logs.String(), "dead letters released"); n != 1 {
					t.Fatalf("%d lines for the end of the failure episode, want 1:\n%s", n, logs.String())
				}
				stop()
			}

			b, _ = openDurable(t, dir, durableQueues(), clk)
			if st := b.Stats(); st["order"].Size != 0 || st["dlq"].Size != 1 {
				t.Fatalf("after the restart order holds %d, dlq %d; want 0, 1", st["order"].Size, st["dlq"].Size)
			}
			if d := mustReceive(t, subscribe(t, b, "dlq", 1)); d.DeadLetter == nil || d.DeadLetter.Seq != 1 || payloadID(t, d) != 1 {
				t.Fatalf("dlq gave %+v %s, want event 1's dead letter", d.DeadLetter, d.Event.Payload)
			}
		})
	}
}

// TestNackReasonSurvivesRestart: the reason of the last nack comes back
// with its event after a restart and goes with it to the dead-letter queue,
// whether the last delivery is nacked, abandoned, or in flight at the
// crash (the move then happens at the start).
func TestNackReasonSurvivesRestart(t *testing.T) {
	for _, tc := range []struct {
		name string
		last string // what ends the second delivery: nack, nack without reason, abandon, crash
		want string
	}{
		{"nacked again", "nack", "still halted"},
		{"nacked again without a reason", "nack without reason", ""},
		{"abandoned", "abandon", "halted"},
		{"in flight at the crash", "crash", "halted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			clk := testkit.NewClock()
			b, stop := openDurable(t, dir, durableQueues(), clk)
			publishID(t, b, "order", 1, "m-1")
			c := subscribe(t, b, "order", 1)
			if err := c.NackReason(mustReceive(t, c).Seq, "halted"); err != nil {
				t.Fatal(err)
			}
			stop()

			b, stop = openDurable(t, dir, durableQueues(), clk)
			c, err := b.Subscribe("order", 1)
			if err != nil {
				t.Fatal(err)
			}
			d := mustReceive(t, c)
			switch tc.last {
			case "nack":
				err = c.NackReason(d.Seq, "still halted")
			case "nack without reason":
				err = c.Nack(d.Seq)
			case "abandon":
				c.Close()
			case "crash":
				stop()
				b, _ = openDurable(t, dir, durableQueues(), clk)
			}
			if err != nil {
				t.Fatal(err)
			}
			testkit.Eventually(t, "the dead letter in dlq", func() bool { return b.Stats()["dlq"].Size == 1 })
			dl := mustReceive(t, subscribe(t, b, "dlq", 1)).DeadLetter
			if dl == nil || dl.Reason != tc.want || dl.Deliveries != 2 {
				t.Fatalf("dead letter %+v, want reason %q after 2 deliveries", dl, tc.want)
			}
			if st := b.Stats()["order"]; st.Size != 0 || st.DeadLettered != 1 {
				t.Fatalf("order holds %d, dead_lettered %d; want 0, 1", st.Size, st.DeadLettered)
			}
		})
	}
}

// TestDeadLetterOriginMustBeTheSameEvent: a seq can be given again when a
// log loses its tail (a power loss in fsync interval mode, or a log
// directory removed by hand). A dead letter naming that seq must not take
// the other event that now has it.
func TestDeadLetterOriginMustBeTheSameEvent(t *testing.T) {
	dir := t.TempDir()
	clk := testkit.NewClock()
	b, stop := openDurable(t, dir, durableQueues(), clk)
	publishID(t, b, "order", 1, "")
	c := subscribe(t, b, "order", 1)
	for range 2 {
		if err := c.NackReason(mustReceive(t, c).Seq, "poison"); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, "the dead letter in dlq", func() bool { return b.Stats()["dlq"].Size == 1 })
	stop()
	if err := os.RemoveAll(filepath.Join(dir, "queues", "order")); err != nil {
		t.Fatal(err)
	}
	b, stop = openDurable(t, dir, durableQueues(), clk)
	publishID(t, b, "order", 2, "") // seq 1 again
	stop()

	b, _ = openDurable(t, dir, durableQueues(), clk)
	d := mustReceive(t, subscribe(t, b, "order", 1))
	if d.Seq != 1 || payloadID(t, d) != 2 {
		t.Fatalf("order gave seq %d %s, want seq 1 holding event 2", d.Seq, d.Event.Payload)
	}
	if dl := mustReceive(t, subscribe(t, b, "dlq", 1)); dl.DeadLetter == nil || dl.DeadLetter.Seq != 1 || payloadID(t, dl) != 1 {
		t.Fatalf("dlq gave %+v %s, want event 1's dead letter", dl.DeadLetter, dl.Event.Payload)
	}
}
