package load

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxSleepTimers bounds the timer descriptors one clock keeps open: one
// per concurrent sleeper. The pacer lets one publisher sleep at a time,
// but Clock.Sleep may be called from any number of goroutines; sleepers
// beyond the bound use Go timers.
const maxSleepTimers = 512

// sleepTimers hands out timerfds, each wrapped in an os.File so that a
// read waits in the runtime's network poller (the descriptor is
// non-blocking) rather than in a system call that would hold a P.
type sleepTimers struct {
	mu     sync.Mutex
	free   []*os.File
	open   int
	limit  int  // on open; maxSleepTimers but in tests
	failed bool // creating one failed: use Go timers from then on
}

func newSleepTimers() *sleepTimers { return &sleepTimers{limit: maxSleepTimers} }

func (s *sleepTimers) get() *os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.free); n > 0 {
		f := s.free[n-1]
		s.free = s.free[:n-1]
		return f
	}
	if s.failed || s.open >= s.limit {
		return nil
	}
	f, err := newTimerFile()
	if err != nil {
		s.failed = true
		return nil
	}
	s.open++
	return f
}

func (s *sleepTimers) put(f *os.File) {
	s.mu.Lock()
	s.free = append(s.free, f)
	s.mu.Unlock()
}

// discard closes a timer that may still have a deadline set on it.
func (s *sleepTimers) discard(f *os.File) {
	_ = f.Close() // a timer, nothing written to lose
	s.mu.Lock()
	s.open--
	s.mu.Unlock()
}

func newTimerFile() (*os.File, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "timerfd")
	// Deadlines work only on a descriptor the poller took: one it did not
	// would block a thread in read, which is what this is here to avoid.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("timerfd not pollable: %w", err)
	}
	return f, nil
}

// sleep waits d on a timerfd armed with the absolute CLOCK_MONOTONIC due
// time, and returns done false without waiting when no timerfd is to be
// had. The read also has a deadline at the due time: the kernel timer
// wakes an idle process on time, where a Go timer would wait for the
// runtime's millisecond poll, but while every thread is busy the runtime
// looks at the poller only now and then (up to 10 ms apart), and there its
// own timers, checked at every scheduling, are the ones on time. Whichever
// comes first ends the sleep.
func (s *sleepTimers) sleep(ctx context.Context, d time.Duration) (done bool, err error) {
	f := s.get()
	if f == nil {
		return false, nil
	}
	var now unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &now); err != nil {
		s.put(f)
		return false, nil
	}
	d = max(d, 1)
	due := time.Now().Add(d)
	raw, err := f.SyscallConn()
	if err != nil {
		s.discard(f)
		return false, nil
	}
	if !setTimer(raw, &unix.ItimerSpec{Value: unix.NsecToTimespec(now.Nano() + int64(d))}) || f.SetReadDeadline(due) != nil {
		s.discard(f)
		return false, nil
	}
	// An ended context cuts the read short through a deadline in the past.
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Unix(1, 0)) })
	var buf [8]byte
	_, rerr := f.Read(buf[:])
	if !stop() {
		// The deadline is set, or about to be: this timer is spent.
		s.discard(f)
		return true, ctx.Err()
	}
	if rerr != nil && !errors.Is(rerr, os.ErrDeadlineExceeded) {
		s.discard(f)
		return false, nil
	}
	// Ready for the next sleep once without a deadline. When the deadline
	// came first the kernel timer still fires; the next sleep's
	// timerfd_settime sets its count of expiries back to zero, so the next
	// read waits for its own.
	if f.SetReadDeadline(time.Time{}) != nil {
		s.discard(f)
		return true, nil
	}
	s.put(f)
	return true, nil
}

// setTimer arms the timerfd behind raw.
func setTimer(raw syscall.RawConn, spec *unix.ItimerSpec) bool {
	var err error
	if cerr := raw.Control(func(fd uintptr) {
		err = unix.TimerfdSettime(int(fd), unix.TFD_TIMER_ABSTIME, spec, nil)
	}); cerr != nil {
		return false
	}
	return err == nil
}

func (s *sleepTimers) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, f := range s.free {
		errs = append(errs, f.Close())
	}
	s.open -= len(s.free)
	s.free = nil
	return errors.Join(errs...)
}
