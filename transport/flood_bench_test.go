package transport

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/cputime"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// BenchmarkConnectionFlood measures the at-cap path: a server at
// MaxConnections (conns, all open: one client pinging, the others idle)
// while clients connect in a tight loop, each getting one
// too_many_connections frame and the end of its connection. An op is one
// rejected connection. cpu-ns/reject is the process's CPU per rejection,
// the flooding clients' dial, read and close included (they run in this
// process); ping-p50-µs and ping-p99-µs are the round trips of the
// pinging client meanwhile, one ping every pingEvery. "alone" runs the
// pinging client without the flood (an op is one ping there), for the
// latency and CPU to compare with.
func BenchmarkConnectionFlood(b *testing.B) {
	for _, conns := range []int{1, DefaultMaxConnections} {
		for _, flooders := range []int{0, 4} {
			name := "alone"
			if flooders > 0 {
				name = fmt.Sprintf("flooders=%d", flooders)
			}
			b.Run(fmt.Sprintf("conns=%d/%s", conns, name), func(b *testing.B) { benchConnectionFlood(b, conns, flooders) })
		}
	}
}

func benchConnectionFlood(b *testing.B, conns, flooders int) {
	b.ReportAllocs()
	ts := startServer(b, withConfig(func(c *Config) { c.MaxConnections = conns }))
	idle := dialN(b, ts.path, conns-1)
	defer func() {
		for _, nc := range idle {
			nc.Close()
		}
	}()
	served, err := net.Dial("unix", ts.path)
	if err != nil {
		b.Fatal(err)
	}
	defer served.Close()
	br := bufio.NewReader(served)
	ping := func() (time.Duration, error) {
		start := time.Now()
		if _, err := io.WriteString(served, `{"op":"ping","id":1}`+"\n"); err != nil {
			return 0, err
		}
		if _, err := br.ReadSlice('\n'); err != nil {
			return 0, err
		}
		return time.Since(start), nil
	}
	// The last place is taken once the first ping is answered.
	if _, err := ping(); err != nil {
		b.Fatal(err)
	}
	testkit.Eventually(b, "the server at its cap", func() bool { return ts.srv.Connections() == conns })

	var (
		stop    atomic.Bool
		rtts    []time.Duration
		pingErr error
		pinger  sync.WaitGroup
	)
	// The pinging client sends one ping every pingEvery, as an app with
	// steady traffic does: pinging flat out would put its own CPU into
	// cpu-ns/reject.
	pingUntil := func(more func() bool) {
		tick := time.NewTicker(pingEvery)
		defer tick.Stop()
		for more() {
			<-tick.C
			d, err := ping()
			if err != nil {
				pingErr = err
				return
			}
			rtts = append(rtts, d)
		}
	}
	cpu0 := cputime.Process(b)
	b.ResetTimer()
	if flooders == 0 {
		n := 0
		pingUntil(func() bool { n++; return n <= b.N })
	} else {
		pinger.Go(func() { pingUntil(func() bool { return !stop.Load() }) })
		var left atomic.Int64
		left.Store(int64(b.N))
		errs := make(chan error, flooders)
		var wg sync.WaitGroup
		for range flooders {
			wg.Go(func() {
				for left.Add(-1) >= 0 {
					if err := rejectedOnce(ts.path); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		stop.Store(true)
		pinger.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cpu := cputime.Process(b) - cpu0
	if pingErr != nil {
		b.Fatal(pingErr)
	}
	if flooders > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/reject")
	} else {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/ping")
	}
	if len(rtts) > 0 {
		slices.Sort(rtts)
		q := func(p float64) float64 { return float64(rtts[int(p*float64(len(rtts)-1))].Nanoseconds()) / 1e3 }
		b.ReportMetric(q(0.5), "ping-p50-µs")
		b.ReportMetric(q(0.99), "ping-p99-µs")
		b.ReportMetric(float64(len(rtts)), "pings")
	}
}

// pingEvery paces BenchmarkConnectionFlood's pinging client.
const pingEvery = 500 * time.Microsecond

var tooManyConnections = []byte(`"too_many_connections"`)

// rejectedOnce connects, expects the too_many_connections frame and the
// end of the connection, and closes it.
func rejectedOnce(path string) error {
	nc, err := net.Dial("unix", path)
	if err != nil {
		return err
	}
	defer nc.Close()
	nc.SetReadDeadline(time.Now().Add(testTimeout))
	got, err := io.ReadAll(nc)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		return err
	}
	if !bytes.Contains(got, tooManyConnections) {
		return fmt.Errorf("a connection over the cap got %q, want a too_many_connections frame", got)
	}
	return nil
}
