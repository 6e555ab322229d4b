package config

import (
	"fmt"
	"strconv"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// durableByDefault names the default queues that keep their events in a
// write-ahead log when a data directory is set: an order or a signal must
// survive a crash, while a data queue's latest candle is all that matters.
// The bus owns the queue defaults; this composes the durability ones on
// top until bus.DefaultQueues states them itself.
var durableByDefault = map[string]bool{"order": true, "signal": true}

// FsyncModes lists the valid per-queue fsync values, in the order error
// messages name them.
var FsyncModes = []bus.Fsync{bus.FsyncAlways, bus.FsyncInterval}

// durabilityKeys are the per-queue YAML keys of this file, for unknown-key
// errors.
const durabilityKeys = "durable, fsync, fsync_interval, dedupe_window, max_deliveries, dead_letter"

// defaultQueues is bus.DefaultQueues with the durability defaults spelled
// out, so that `eventbus-sidecar config` prints what applies.
func defaultQueues() []bus.QueueConfig {
	qs := bus.DefaultQueues()
	for i := range qs {
		withDurabilityDefaults(&qs[i])
		qs[i].Durable = qs[i].Durable || durableByDefault[qs[i].Name]
	}
	return qs
}

// newQueue is a queue a config file adds: not durable unless it says so.
func newQueue(name string) bus.QueueConfig {
	q := bus.QueueConfig{Name: name}
	withDurabilityDefaults(&q)
	return q
}

func withDurabilityDefaults(q *bus.QueueConfig) {
	if q.Fsync == "" {
		q.Fsync = bus.FsyncAlways
	}
	if q.DedupeWindow == 0 {
		q.DedupeWindow = bus.DefaultDedupeWindow
	}
}

// fileDurability is the durability part of a queue in the YAML form.
type fileDurability struct {
	Durable       yaml.Node `yaml:"durable"`
	Fsync         yaml.Node `yaml:"fsync"`
	FsyncInterval yaml.Node `yaml:"fsync_interval"`
	DedupeWindow  yaml.Node `yaml:"dedupe_window"`
	MaxDeliveries yaml.Node `yaml:"max_deliveries"`
	DeadLetter    yaml.Node `yaml:"dead_letter"`
}

// merge applies the fields the file gives to q; key names q in errors.
func (f *fileDurability) merge(q *bus.QueueConfig, key, source string, origin map[string]string) error {
	fields := []struct {
		name string
		node *yaml.Node
		set  func(v string) error
	}{
		{"durable", &f.Durable, func(v string) error {
			if err := parseBool(v, &q.Durable); err != nil {
				return fmt.Errorf("not a boolean (use true or false)")
			}
			return nil
		}},
		{"fsync", &f.Fsync, func(v string) error { q.Fsync = bus.Fsync(v); return nil }},
		{"fsync_interval", &f.FsyncInterval, func(v string) error { return durationField(v, &q.FsyncInterval) }},
		{"dedupe_window", &f.DedupeWindow, func(v string) error { return durationField(v, &q.DedupeWindow) }},
		{"max_deliveries", &f.MaxDeliveries, func(v string) error {
			if err := parseInt(v, &q.MaxDeliveries); err != nil {
				return fmt.Errorf("not a whole number; give the deliveries after which an unacked event is dead-lettered (0: no limit)")
			}
			return nil
		}},
		{"dead_letter", &f.DeadLetter, func(v string) error { q.DeadLetter = v; return nil }},
	}
	for _, fd := range fields {
		n := fd.node
		if n.Kind == 0 {
			continue
		}
		field := key + "." + fd.name
		v, err := scalar(n, field, source)
		if err != nil {
			return err
		}
		at := fmt.Sprintf("%s line %d", source, n.Line)
		if err := fd.set(v); err != nil {
			return &FieldError{Field: field, Value: v, Source: at, Problem: err.Error()}
		}
		origin[field] = at
	}
	return nil
}

func durationField(v string, dst *time.Duration) error {
	if err := parseDuration(v, dst); err != nil {
		return fmt.Errorf("not a duration (use a number with a unit: 100ms, 1s, 2m)")
	}
	return nil
}

// validateDurability checks the queues' durability, idempotence and
// dead-letter settings, reporting each problem through bad.
func validateDurability(c Config, bad func(field, value, problem string)) {
	names := map[string]bool{}
	durable := map[string]bool{}
	for _, q := range c.Queues {
		names[q.Name] = true
		durable[q.Name] = q.Durable
	}
	for i, q := range c.Queues {
		field := queueField(q.Name)
		if q.Name == "" {
			field = fmt.Sprintf("queues[#%d]", i+1)
		}
		// Zero values are the bus defaults (fsync always, the default dedupe
		// window), as for a queue list built in code.
		switch q.Fsync {
		case bus.FsyncAlways, "":
			if q.FsyncInterval != 0 {
				bad(field+".fsync_interval", q.FsyncInterval.String(), "has no effect with fsync always (every publish is synced before it is answered); remove it or set fsync: interval")
			}
		case bus.FsyncInterval:
			if q.FsyncInterval < 0 {
				bad(field+".fsync_interval", q.FsyncInterval.String(), "must be > 0, e.g. 100ms (the most a power loss can take), or left out for the default 100ms")
			}
		default:
			bad(field+".fsync", string(q.Fsync), fmt.Sprintf("allowed values: %s, %s", bus.FsyncAlways, bus.FsyncInterval))
		}
		if q.DedupeWindow < 0 {
			bad(field+".dedupe_window", q.DedupeWindow.String(), "must be > 0, e.g. 2m (how long a msg_id is remembered)")
		}
		switch {
		case q.MaxDeliveries < 0:
			bad(field+".max_deliveries", strconv.Itoa(q.MaxDeliveries), "must be >= 0 (0: redeliver without limit)")
		case q.MaxDeliveries > 0 && q.DeadLetter == "":
			bad(field+".dead_letter", q.DeadLetter, fmt.Sprintf("max_deliveries %d needs a dead_letter queue to move events to; allowed: %s", q.MaxDeliveries, otherQueues(c, q.Name)))
		case q.MaxDeliveries == 0 && q.DeadLetter != "":
			bad(field+".dead_letter", q.DeadLetter, "has no effect without max_deliveries > 0; set max_deliveries or remove it")
		case q.DeadLetter == q.Name:
			bad(field+".dead_letter", q.DeadLetter, "a queue cannot be its own dead-letter queue; allowed: "+otherQueues(c, q.Name))
		case q.DeadLetter != "" && !names[q.DeadLetter]:
			bad(field+".dead_letter", q.DeadLetter, "not a configured queue; allowed: "+otherQueues(c, q.Name))
		case q.Durable && q.DeadLetter != "" && !durable[q.DeadLetter]:
			// The move out of a durable queue acks the event there once
			// the dead letter is stored: in memory, a crash would lose it.
			bad(field+".dead_letter", q.DeadLetter, fmt.Sprintf("queue %q is durable but its dead-letter queue is not, so a crash would lose the dead letters; set durable: true on %q", q.Name, q.DeadLetter))
		}
	}
}

// otherQueues lists the configured queues other than name.
func otherQueues(c Config, name string) string {
	s := ""
	for _, q := range c.Queues {
		if q.Name == name {
			continue
		}
		if s != "" {
			s += ", "
		}
		s += q.Name
	}
	return s
}

// renderDurability is the durability part of a queue in the printed YAML.
type renderDurability struct {
	Durable       bool   `yaml:"durable"`
	Fsync         string `yaml:"fsync"`
	FsyncInterval string `yaml:"fsync_interval,omitempty"`
	DedupeWindow  string `yaml:"dedupe_window"`
	MaxDeliveries int    `yaml:"max_deliveries"`
	DeadLetter    string `yaml:"dead_letter"`
}

func durabilityOf(q bus.QueueConfig) renderDurability {
	withDurabilityDefaults(&q)
	r := renderDurability{Durable: q.Durable, Fsync: string(q.Fsync), DedupeWindow: q.DedupeWindow.String(), MaxDeliveries: q.MaxDeliveries, DeadLetter: q.DeadLetter}
	if q.FsyncInterval != 0 {
		r.FsyncInterval = q.FsyncInterval.String()
	}
	return r
}

// NotCrashSafe lists the durable queues whose events would survive a crash
// if a data directory were set, for the warning of a start without one.
func (c Config) NotCrashSafe() []string {
	if c.DataDir != "" {
		return nil
	}
	var names []string
	for _, q := range c.Queues {
		if q.Durable {
			names = append(names, q.Name)
		}
	}
	return names
}
