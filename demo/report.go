package demo

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// WriteText prints the report for a person: per queue, the publishes by
// outcome and the deliveries handled, then the trace ids of the executed
// orders to look up in Jaeger (none when the sidecar exports no traces).
func (r Report) WriteText(w io.Writer) error {
	var b strings.Builder
	queues := make([]string, 0, len(r.Published))
	for q := range r.Published {
		queues = append(queues, q)
	}
	slices.Sort(queues)
	fmt.Fprintln(&b, "demo: publishes by queue and outcome, deliveries handled")
	for _, q := range queues {
		fmt.Fprintf(&b, "  %-7s", q)
		for _, o := range bus.Outcomes {
			fmt.Fprintf(&b, " %s=%d", o, r.Published[q][o])
		}
		fmt.Fprintf(&b, " handled=%d\n", r.Consumed[q])
	}
	for _, o := range r.Executed {
		if o.TraceID.IsValid() {
			fmt.Fprintf(&b, "demo: executed %s trace_id=%s\n", o.ID, o.TraceID)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
