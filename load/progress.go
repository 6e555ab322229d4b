package load

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// ProgressInterval is how often a run with Config.Progress rewrites its
// status line.
const ProgressInterval = 500 * time.Millisecond

// progress is what the status line shows, read while the run goes on.
type progress struct {
	elapsed               time.Duration
	rate                  float64 // events sent per second since the last line
	sent, accepted, acked int64
	pubP99, e2eP99        time.Duration
}

// clearLine returns the cursor to the start of the line and erases it.
const clearLine = "\r\x1b[K"

// line formats p as one status line, without a newline.
func (p progress) line(label string) string {
	var b strings.Builder
	b.WriteString(clearLine)
	if label != "" {
		fmt.Fprintf(&b, "%s ", label)
	}
	fmt.Fprintf(&b, "%5.1fs  %.0f events/s  sent %d  accepted %d  acked %d  p99 publish %v",
		p.elapsed.Seconds(), p.rate, p.sent, p.accepted, p.acked, p.pubP99.Round(time.Microsecond))
	if p.e2eP99 > 0 {
		fmt.Fprintf(&b, "  end-to-end %v", p.e2eP99.Round(time.Microsecond))
	}
	return b.String()
}

// counters are the live figures of a run that the status line reads.
type counters struct {
	sent, accepted, acked interface{ Load() int64 }
	pub, e2e              *latencies
}

// startProgress writes a status line to cfg.Progress every
// ProgressInterval until stop, which waits for the writer and clears the
// line. Without cfg.Progress it does nothing.
func startProgress(cfg Config, clock Clock, start time.Time, c counters) (stop func()) {
	if cfg.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(ProgressInterval)
		defer t.Stop()
		last, lastAt := int64(0), start
		for {
			select {
			case <-done:
				_, _ = io.WriteString(cfg.Progress, clearLine)
				return
			case <-t.C:
			}
			now := clock.Now()
			p := progress{elapsed: now.Sub(start), sent: c.sent.Load(), accepted: c.accepted.Load(), acked: c.acked.Load(),
				pubP99: c.pub.percentiles().P99, e2eP99: c.e2e.percentiles().P99}
			if dt := now.Sub(lastAt).Seconds(); dt > 0 {
				p.rate = float64(p.sent-last) / dt
			}
			last, lastAt = p.sent, now
			// A terminal that fails a write has nobody to tell.
			_, _ = io.WriteString(cfg.Progress, p.line(cfg.Label))
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}
