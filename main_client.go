package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/client"
	"github.com/eventbus-sidecar/eventbus-sidecar/config"
)

// socketFlag is the client commands' way to find the sidecar.
func socketFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "socket",
		Usage:   "Unix socket of the sidecar",
		Value:   config.Default().Socket,
		EnvVars: []string{config.EnvPrefix + "SOCKET"},
	}
}

func timeoutFlag() cli.Flag {
	return &cli.DurationFlag{
		Name:  "timeout",
		Usage: "give up after this long (0 waits without limit)",
	}
}

// dial connects to the sidecar, bounding the whole command by --timeout.
func dial(c *cli.Context) (context.Context, *client.Client, func(), error) {
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
	cancel := func() {}
	if d := c.Duration("timeout"); d > 0 {
		ctx, cancel = context.WithTimeout(ctx, d)
	}
	cl, err := client.Dial(ctx, c.String("socket"))
	if err != nil {
		cancel()
		stop()
		return nil, nil, nil, fmt.Errorf("connect to the sidecar at %s (is `eventbus-sidecar serve` running?): %w", c.String("socket"), err)
	}
	return ctx, cl, func() {
		cl.Close()
		cancel()
		stop()
	}, nil
}

// publishLine is one event on publish's standard input: the wire protocol's
// publish request, where op and id may be left out (id is ignored: the
// client numbers its own requests).
type publishLine struct {
	Op          string          `json:"op"`
	ID          json.RawMessage `json:"id"`
	Queue       string          `json:"queue"`
	Type        string          `json:"type"`
	Payload     json.RawMessage `json:"payload"`
	Traceparent string          `json:"traceparent"`
	MsgID       string          `json:"msg_id"`
}

// publishResult is what publish prints for each event: the reply's status
// and error, with the event's position and routing for context.
type publishResult struct {
	N      int    `json:"n"`
	Type   string `json:"type"`
	Queue  string `json:"queue,omitempty"`
	Status string `json:"status"`
	// Duplicate marks an accepted publish whose msg_id the queue had
	// accepted before, as the protocol's reply does.
	Duplicate bool   `json:"duplicate,omitempty"`
	MsgID     string `json:"msg_id,omitempty"`
	// Code is the protocol's error code (storage_error, unknown_queue,
	// ...), so that a script can branch on it as a client would.
	Code  string `json:"code,omitempty"`
	Error string `json:"error,omitempty"`
}

func (p *program) publishCommand() *cli.Command {
	return &cli.Command{
		Name:      "publish",
		Usage:     "publish events: one from flags, or NDJSON lines from standard input",
		ArgsUsage: " ",
		Description: "With --type, publishes --count copies of one event. Without it, reads one JSON object\n" +
			"per line from standard input: {\"type\":\"ORDER_PLACED\",\"payload\":{...},\"queue\":\"order\"}\n" +
			"(queue, traceparent and msg_id optional). Prints one JSON reply per event. Without a queue the\n" +
			"sidecar routes by type. Exits 1 if any publish failed or timed out; drops are not failures.\n" +
			"A publish repeating a msg_id its queue accepted within its dedupe window is answered\n" +
			"\"status\":\"accepted\",\"duplicate\":true and not enqueued again.",
		Flags: []cli.Flag{
			socketFlag(),
			&cli.StringFlag{Name: "type", Usage: "event type, e.g. ORDER_PLACED (omit to read NDJSON from stdin)"},
			&cli.StringFlag{Name: "payload", Usage: "event payload as JSON", Value: "{}"},
			&cli.StringFlag{Name: "queue", Usage: "queue to publish to (default: routed by type)"},
			&cli.StringFlag{Name: "traceparent", Usage: "W3C traceparent to parent the publish span"},
			&cli.StringFlag{Name: "msg-id", Usage: "msg_id making the publish idempotent (with --count > 1, the copies after the first are duplicates)"},
			&cli.IntFlag{Name: "count", Usage: "how many copies of the event to publish", Value: 1},
			timeoutFlag(),
		},
		OnUsageError: onUsageError,
		Action:       p.publish,
	}
}

func (p *program) publish(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError{fmt.Errorf("publish takes no arguments, got %q; use --type and --payload, or NDJSON on stdin", c.Args().Slice())}
	}
	var next func() (publishLine, bool, error)
	if c.IsSet("type") {
		line := publishLine{Queue: c.String("queue"), Type: c.String("type"), Payload: json.RawMessage(c.String("payload")), Traceparent: c.String("traceparent"), MsgID: c.String("msg-id")}
		if !json.Valid(line.Payload) {
			return usageError{fmt.Errorf("--payload %q is not valid JSON", c.String("payload"))}
		}
		if c.Int("count") < 1 {
			return usageError{fmt.Errorf("--count %d: must be at least 1", c.Int("count"))}
		}
		left := c.Int("count")
		next = func() (publishLine, bool, error) {
			if left == 0 {
				return publishLine{}, false, nil
			}
			left--
			return line, true, nil
		}
	} else {
		sc := bufio.NewScanner(p.stdin)
		sc.Buffer(make([]byte, 64<<10), config.MaxFrameBytesLimit)
		lineNo := 0
		next = func() (publishLine, bool, error) {
			for sc.Scan() {
				lineNo++
				raw := strings.TrimSpace(sc.Text())
				if raw == "" {
					continue
				}
				var l publishLine
				dec := json.NewDecoder(strings.NewReader(raw))
				dec.DisallowUnknownFields()
				if err := dec.Decode(&l); err != nil {
					return l, true, fmt.Errorf("stdin line %d: %w (want {\"type\":...,\"payload\":...,\"queue\":...})", lineNo, err)
				}
				if l.Op != "" && l.Op != "publish" {
					return l, true, fmt.Errorf("stdin line %d: op %q: publish sends only publish requests", lineNo, l.Op)
				}
				if c.IsSet("queue") && l.Queue == "" {
					l.Queue = c.String("queue")
				}
				return l, true, nil
			}
			return publishLine{}, false, sc.Err()
		}
	}

	ctx, cl, closeClient, err := dial(c)
	if err != nil {
		return err
	}
	defer closeClient()
	enc := json.NewEncoder(p.stdout)
	failed := 0
	for n := 1; ; n++ {
		l, ok, err := next()
		if err != nil {
			failed++
			if eerr := enc.Encode(publishResult{N: n, Type: l.Type, Queue: l.Queue, Status: string(bus.Failed), Error: err.Error()}); eerr != nil {
				return eerr
			}
			continue
		}
		if !ok {
			break
		}
		res := publishResult{N: n, Type: l.Type, Queue: l.Queue, MsgID: l.MsgID}
		ev := bus.Event{Type: l.Type, Payload: l.Payload, MsgID: l.MsgID}
		pctx := ctx
		if l.Traceparent != "" {
			pctx = withTraceparent(ctx, l.Traceparent)
		}
		outcome, perr := cl.Publish(pctx, ev, l.Queue)
		res.Status = string(outcome)
		if outcome == bus.Duplicate {
			res.Status, res.Duplicate = string(bus.Accepted), true
		}
		if perr != nil {
			res.Error = perr.Error()
			if ce := (*client.Error)(nil); errors.As(perr, &ce) {
				res.Code = string(ce.Code)
			}
			if res.Status == "" {
				res.Status = string(bus.Failed)
			}
		}
		if outcome != bus.Accepted && outcome != bus.Duplicate && outcome != bus.Dropped {
			failed++
		}
		if err := enc.Encode(res); err != nil {
			return err
		}
		if ctx.Err() != nil {
			break
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d publish(es) not accepted", failed)
	}
	return nil
}

// withTraceparent puts a W3C traceparent into ctx, where the client's
// propagator picks it up. An invalid one leaves ctx without a parent, as
// the sidecar itself would ignore it.
func withTraceparent(ctx context.Context, tp string) context.Context {
	return propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": tp})
}

// deliveryLine is what consume prints per delivery: the wire protocol's
// deliver frame.
type deliveryLine struct {
	Op          string          `json:"op"`
	Queue       string          `json:"queue"`
	Seq         uint64          `json:"seq"`
	Type        string          `json:"type"`
	Payload     json.RawMessage `json:"payload"`
	Traceparent string          `json:"traceparent,omitempty"`
	EnqueuedAt  string          `json:"enqueued_at"`
	Redelivered bool            `json:"redelivered"`
	DeadLetter  *deadLetterLine `json:"dead_letter,omitempty"`
}

// deadLetterLine is the deliver frame's dead_letter object.
type deadLetterLine struct {
	Queue      string `json:"queue"`
	Seq        uint64 `json:"seq"`
	Deliveries int    `json:"deliveries"`
	Reason     string `json:"reason"`
}

func (p *program) consumeCommand() *cli.Command {
	return &cli.Command{
		Name:  "consume",
		Usage: "subscribe to a queue, print each delivery as a JSON line and ack it",
		Description: "Runs until --count deliveries were handled, --timeout passes or SIGINT/SIGTERM.\n" +
			"With --nack, deliveries are returned to the queue instead (they are redelivered).",
		Flags: []cli.Flag{
			socketFlag(),
			&cli.StringFlag{Name: "queue", Usage: "queue to consume", Value: "data"},
			&cli.IntFlag{Name: "prefetch", Usage: "deliveries in flight at once", Value: 32},
			&cli.IntFlag{Name: "count", Usage: "stop after this many deliveries (0: no limit)"},
			&cli.BoolFlag{Name: "nack", Usage: "nack instead of ack (for testing redelivery)"},
			timeoutFlag(),
		},
		OnUsageError: onUsageError,
		Action:       p.consume,
	}
}

func (p *program) consume(c *cli.Context) error {
	if c.Int("prefetch") < 1 {
		return usageError{fmt.Errorf("--prefetch %d: must be at least 1", c.Int("prefetch"))}
	}
	ctx, cl, closeClient, err := dial(c)
	if err != nil {
		return err
	}
	defer closeClient()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	limit, seen := c.Int("count"), 0
	enc := json.NewEncoder(p.stdout)
	errNack := errors.New("nacked by --nack")
	handler := func(_ context.Context, d bus.Delivery) error {
		if limit > 0 && seen >= limit {
			return errNack // past the limit: hand it back for someone else
		}
		seen++
		line := deliveryLine{
			Op: "deliver", Queue: d.Queue, Seq: d.Seq, Type: d.Event.Type, Payload: d.Event.Payload,
			EnqueuedAt: d.EnqueuedAt.UTC().Format(time.RFC3339Nano), Redelivered: d.Redeliveries > 0,
		}
		if d.SpanContext.IsValid() {
			line.Traceparent = traceparentOf(d.SpanContext)
		}
		if dl := d.DeadLetter; dl != nil {
			line.DeadLetter = &deadLetterLine{Queue: dl.Queue, Seq: dl.Seq, Deliveries: dl.Deliveries, Reason: dl.Reason}
		}
		if err := enc.Encode(line); err != nil {
			cancel()
			return err
		}
		if limit > 0 && seen >= limit {
			cancel()
		}
		if c.Bool("nack") {
			return errNack
		}
		return nil
	}
	prefetch := c.Int("prefetch")
	if limit > 0 {
		prefetch = min(prefetch, limit) // do not hold events we will only hand back
	}
	err = cl.Subscribe(ctx, c.String("queue"), prefetch, handler)
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("consume %s: %w", c.String("queue"), err)
	}
	if limit > 0 && seen < limit && !errors.Is(context.Cause(ctx), context.Canceled) {
		return fmt.Errorf("stopped after %d of %d deliveries: %w", seen, limit, ctx.Err())
	}
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func traceparentOf(sc trace.SpanContext) string {
	return fmt.Sprintf("00-%s-%s-%s", sc.TraceID(), sc.SpanID(), sc.TraceFlags())
}

func (p *program) statsCommand() *cli.Command {
	return &cli.Command{
		Name:  "stats",
		Usage: "print the queues' statistics (a table, or --json)",
		Flags: []cli.Flag{
			socketFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print the stats reply's JSON instead of a table"},
			timeoutFlag(),
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			ctx, cl, closeClient, err := dial(c)
			if err != nil {
				return err
			}
			defer closeClient()
			st, err := cl.Stats(ctx)
			if err != nil {
				return fmt.Errorf("stats: %w", err)
			}
			if c.Bool("json") {
				enc := json.NewEncoder(p.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			return writeStatsTable(p.stdout, st)
		},
	}
}

// writeStatsTable prints one row per queue, in the sidecar's queue order
// where known (the seed's three first), else by name.
func writeStatsTable(w io.Writer, st bus.Stats) error {
	names := make([]string, 0, len(st))
	for n := range st {
		names = append(names, n)
	}
	rank := func(n string) int {
		if i := slices.Index(config.Default().QueueNames(), n); i >= 0 {
			return i
		}
		return len(st)
	}
	slices.SortFunc(names, func(a, b string) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra - rb
		}
		return strings.Compare(a, b)
	})
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE\tPOLICY\tDURABLE\tSIZE\tMAXSIZE\tIN_FLIGHT\tCONSUMERS\tWAITING\tACCEPTED\tDUPLICATES\tDROPS\tTIMEOUTS\tDELIVERED\tACKED\tREDELIVERED\tDEAD_LETTERED\t")
	for _, n := range names {
		q := st[n]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n",
			n, q.Policy, yesNo(q.Durable), q.Size, q.MaxSize, q.InFlight, q.Consumers, q.Waiting,
			q.Published[bus.Accepted], q.Published[bus.Duplicate], q.Drops, q.Timeouts, q.Delivered, q.Acked, q.Redelivered, q.DeadLettered)
	}
	return tw.Flush()
}
