package load

import (
	"strings"
	"testing"
	"time"
)

func TestProgressLine(t *testing.T) {
	p := progress{elapsed: 2500 * time.Millisecond, rate: 9999.6, sent: 25000, accepted: 24990, acked: 24900,
		pubP99: 1234567 * time.Nanosecond, e2eP99: 3 * time.Millisecond}
	got := p.line("ceiling")
	want := clearLine + "ceiling   2.5s  10000 events/s  sent 25000  accepted 24990  acked 24900  p99 publish 1.235ms  end-to-end 3ms"
	if got != want {
		t.Fatalf("line\n%q, want\n%q", got, want)
	}
	p.e2eP99 = 0
	if got := p.line(""); strings.Contains(got, "end-to-end") || !strings.HasPrefix(got, clearLine+"  2.5s") {
		t.Fatalf("publish-only line %q", got)
	}
}
