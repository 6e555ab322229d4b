package load

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// timersOf reports how many timerfds c has open and how many of them are
// free.
func timersOf(t *testing.T, c *realClock) (open, free int) {
	t.Helper()
	c.timers.mu.Lock()
	defer c.timers.mu.Unlock()
	return c.timers.open, len(c.timers.free)
}

func TestRealClockSleepsOnAReusedTimerfd(t *testing.T) {
	c := newRealClock()
	for _, d := range []time.Duration{0, time.Microsecond, 2 * time.Millisecond, 2 * time.Millisecond} {
		start := time.Now()
		if err := c.Sleep(context.Background(), d); err != nil {
			t.Fatalf("Sleep(%v): %v", d, err)
		}
		if took := time.Since(start); took < d {
			t.Fatalf("Sleep(%v) returned after %v", d, took)
		}
		if open, free := timersOf(t, c); open != 1 || free != 1 {
			t.Fatalf("after Sleep(%v): %d timerfds open, %d free; want the one timerfd back", d, open, free)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if open, free := timersOf(t, c); open != 0 || free != 0 {
		t.Fatalf("after Close: %d timerfds open, %d free", open, free)
	}
}

func TestRealClockSleepEndsWithItsContext(t *testing.T) {
	c := newRealClock()
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	slept := make(chan error, 1)
	go func() { slept <- c.Sleep(ctx, time.Hour) }()
	cancel()
	if err := <-slept; !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep = %v, want context.Canceled", err)
	}
	// The cancelled timer may carry a deadline: it must not be reused.
	if _, free := timersOf(t, c); free != 0 {
		t.Fatalf("%d timerfds free after a cancelled sleep", free)
	}
	if err := c.Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatalf("Sleep after a cancelled one: %v", err)
	}
}

func TestRealClockSleepsBeyondItsTimerfds(t *testing.T) {
	c := newRealClock()
	defer c.Close()
	c.timers.limit = 2
	taken := []*os.File{c.timers.get(), c.timers.get()}
	if taken[0] == nil || taken[1] == nil || c.timers.get() != nil {
		t.Fatalf("took %v and then a third timerfd beyond the limit of 2", taken)
	}
	// Every timerfd is taken: this sleep waits on a Go timer.
	start := time.Now()
	if err := c.Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < time.Millisecond {
		t.Fatalf("Sleep(1ms) returned after %v", took)
	}
	if open, free := timersOf(t, c); open != 2 || free != 0 {
		t.Fatalf("%d timerfds open, %d free; want the 2 taken", open, free)
	}
	for _, f := range taken {
		c.timers.put(f)
	}
}

// TestRealClockSleepAfterAnUnreadExpiry covers the timer a sleep leaves
// when its read's deadline came first: the kernel timer expired later and
// nobody read it. The next sleep on that timerfd must wait its own time.
func TestRealClockSleepAfterAnUnreadExpiry(t *testing.T) {
	c := newRealClock()
	defer c.Close()
	f := c.timers.get()
	raw, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	// An absolute time long past: it expires at once.
	if !setTimer(raw, &unix.ItimerSpec{Value: unix.Timespec{Nsec: 1}}) {
		t.Fatal("arming the timerfd failed")
	}
	c.timers.put(f)
	const d = 5 * time.Millisecond
	start := time.Now()
	if err := c.Sleep(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < d {
		t.Fatalf("Sleep(%v) returned after %v, on the earlier expiry", d, took)
	}
	if open, _ := timersOf(t, c); open != 1 {
		t.Fatalf("%d timerfds open, want the one reused", open)
	}
}
