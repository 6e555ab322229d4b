package testkit

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fatalRecorder is a testing.TB whose Fatalf records the message and ends
// the goroutine, as the real one does, so that Eventually's failure can be
// checked.
type fatalRecorder struct {
	testing.TB
	mu  sync.Mutex
	msg string
}

func (r *fatalRecorder) Helper() {}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.msg = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}

// failure runs Eventually in a goroutine of its own and returns what it
// passed to Fatalf ("" when it returned).
func failure(t *testing.T, f func(tb testing.TB)) string {
	r := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.msg
}

func TestEventuallyReturnsOnceTheConditionHolds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		polls := 0
		msg := failure(t, func(tb testing.TB) {
			Eventually(tb, "the third poll", func() bool { polls++; return polls == 3 })
		})
		if msg != "" || polls != 3 {
			t.Errorf("bool condition: failure %q after %d polls, want none after 3", msg, polls)
		}
		calls := 0
		msg = failure(t, func(tb testing.TB) {
			Eventually(tb, "no error", func() error {
				calls++
				if calls < 2 {
					return errors.New("not yet")
				}
				return nil
			})
		})
		if msg != "" || calls != 2 {
			t.Errorf("error condition: failure %q after %d calls, want none after 2", msg, calls)
		}
	})
}

// The timeouts run in a synctest bubble: its clock moves only when every
// goroutine waits, so a 20 s patience costs no real time and the elapsed
// time is exact.
func TestEventuallyFailsNamingWhatItWaitedFor(t *testing.T) {
	tests := []struct {
		name    string
		run     func(tb testing.TB)
		elapsed time.Duration
		want    []string
	}{
		{
			name:    "bool, default patience",
			run:     func(tb testing.TB) { Eventually(tb, "the queue to empty", func() bool { return false }) },
			elapsed: DefaultPatience,
			want:    []string{"timed out after 20s waiting for the queue to empty"},
		},
		{
			name: "error, Within",
			run: func(tb testing.TB) {
				n := 0
				Eventually(tb, "three acks", func() error { n++; return fmt.Errorf("acked %d", n%3) }, Within(3*time.Second))
			},
			elapsed: 3 * time.Second,
			want:    []string{"timed out after 3s waiting for three acks; last: acked"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				start := time.Now()
				msg := failure(t, tt.run)
				if got := time.Since(start); got != tt.elapsed {
					t.Errorf("failed after %v, want %v", got, tt.elapsed)
				}
				for _, w := range tt.want {
					if !strings.Contains(msg, w) {
						t.Errorf("failure %q does not contain %q", msg, w)
					}
				}
			})
		})
	}
}

// TestEventuallyBacksOff: a long wait polls a bounded number of times.
func TestEventuallyBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		polls := 0
		failure(t, func(tb testing.TB) {
			Eventually(tb, "never", func() bool { polls++; return false }, Within(10*time.Second))
		})
		// 1+2+...+64 ms take 8 polls, then one per 100 ms for the rest.
		if polls < 90 || polls > 120 {
			t.Errorf("%d polls in 10s, want about 100 (backing off to one per %v)", polls, maxPoll)
		}
	})
}
