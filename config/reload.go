package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

// Change is one setting that differs between the running configuration
// and a newly loaded one.
type Change struct {
	// Field is the YAML key: "log_level", "queues[data].capacity",
	// "routes[CANDLE_UPDATE]", "queues[risk]" for a whole queue.
	Field string
	// Old and New are the values as a config file spells them; "" when
	// the setting is absent on that side (a route or queue added or
	// removed).
	Old, New string
	// Why says, for a change that needs a restart, why it cannot be
	// applied live; empty for a live change.
	Why string
}

// String reads like: log_level "info" -> "debug".
func (c Change) String() string {
	s := fmt.Sprintf("%s %q -> %q", c.Field, c.Old, c.New)
	if c.Why != "" {
		s += " (" + c.Why + ")"
	}
	return s
}

// Reload is what a newly loaded configuration changes in a running
// sidecar, split into what can be applied now and what waits for a
// restart.
type Reload struct {
	// Live lists the changes the sidecar applies now: log level, data
	// sampling ratio and trace rate, the allowed uids and gids, max_buffered_bytes,
	// routes and the default queue (when their queue is running), and
	// each running queue's capacity, policy and timeout.
	Live []Change
	// Restart lists the changes that take effect only at the next start
	// (socket, listeners, exporters, limits the transport fixes at start,
	// queues added or removed). The caller logs them rather than ignore
	// them silently.
	Restart []Change
	// Next is the configuration the sidecar runs with once Live is
	// applied: the loaded file's live settings over the running
	// configuration's restart-only ones. Apply it (bus.Reconfigure with
	// Next.Queues, the routes, the log level, ...) and compare the next
	// reload with it, so that changes still waiting for a restart are
	// reported again each time.
	Next Config
}

// Empty reports whether the loaded configuration changes nothing.
func (r Reload) Empty() bool { return len(r.Live) == 0 && len(r.Restart) == 0 }

// queueSetting is one per-queue field the file sets. copy is set for the
// fields bus.Reconfigure applies to a running queue; the others are
// restart-only.
type queueSetting struct {
	key  string
	get  func(bus.QueueConfig) string
	copy func(dst *bus.QueueConfig, src bus.QueueConfig)
}

// queueSettings are the per-queue fields PlanReload compares; a new one is
// a line here.
func queueSettings() []queueSetting {
	return []queueSetting{
		{"capacity", func(q bus.QueueConfig) string { return strconv.Itoa(q.Capacity) }, func(d *bus.QueueConfig, s bus.QueueConfig) { d.Capacity = s.Capacity }},
		{"policy", func(q bus.QueueConfig) string { return string(q.Policy) }, func(d *bus.QueueConfig, s bus.QueueConfig) { d.Policy = s.Policy }},
		{"timeout", func(q bus.QueueConfig) string { return q.Timeout.String() }, func(d *bus.QueueConfig, s bus.QueueConfig) { d.Timeout = s.Timeout }},
	}
}

// PlanReload compares the running configuration with a newly loaded one
// (from Load with the same Sources as at start, so with the same
// validation and error messages; both must be valid) and returns what
// changed, each change with its field, old and new value. A setting that
// names a queue (a route, default_queue) is live only when that queue is
// running: a queue added by the file exists only after a restart, and
// until then the old route stays.
func PlanReload(running, loaded Config) Reload {
	r := Reload{Next: running.Clone()}
	change := func(live bool, field, from, to, why string) {
		if live {
			r.Live = append(r.Live, Change{Field: field, Old: from, New: to})
		} else {
			r.Restart = append(r.Restart, Change{Field: field, Old: from, New: to, Why: why})
		}
	}
	isRunning := func(name string) bool {
		return slices.ContainsFunc(running.Queues, func(q bus.QueueConfig) bool { return q.Name == name })
	}
	notRunning := func(queue string) string {
		return fmt.Sprintf("queue %s is not running: adding a queue needs a restart", queue)
	}

	for _, s := range Settings() {
		from, to := s.Value(running), s.Value(loaded)
		if from == to {
			continue
		}
		live, why := s.Live, "applied at start only"
		if live && s.Key == "default_queue" && !isRunning(to) {
			live, why = false, notRunning(to)
		}
		if live {
			// Value renders in the form Set accepts (tested), so this
			// fails only if a setting breaks that promise.
			if err := s.Set(&r.Next, to); err != nil {
				live, why = false, "cannot be applied live: "+err.Error()
			}
		}
		if live && s.Key == "max_buffered_bytes" && r.Next.MaxBufferedBytes < transport.MinBufferedBytes(r.Next.MaxFrameBytes) {
			// The file's budget fits its own max_frame_bytes, which waits
			// for the restart, but not the running one's.
			r.Next.MaxBufferedBytes = running.MaxBufferedBytes
			live, why = false, fmt.Sprintf("below 8 × the running max_frame_bytes (%d); applied with it at the next start", running.MaxFrameBytes)
		}
		change(live, s.Key, from, to, why)
	}

	for i, q := range running.Queues {
		j := slices.IndexFunc(loaded.Queues, func(l bus.QueueConfig) bool { return l.Name == q.Name })
		if j < 0 {
			change(false, queueField(q.Name), describeQueue(q), "", "removing a queue needs a restart")
			continue
		}
		l := loaded.Queues[j]
		for _, s := range queueSettings() {
			if from, to := s.get(q), s.get(l); from != to {
				if s.copy != nil {
					s.copy(&r.Next.Queues[i], l)
				}
				change(s.copy != nil, queueField(q.Name)+"."+s.key, from, to, "applied at start only")
			}
		}
	}
	for _, l := range loaded.Queues {
		if !isRunning(l.Name) {
			change(false, queueField(l.Name), "", describeQueue(l), "adding a queue needs a restart")
		}
	}
	if from, to := commonOrder(running.Queues, loaded.Queues), commonOrder(loaded.Queues, running.Queues); !slices.Equal(from, to) {
		change(false, "queues", strings.Join(from, ", "), strings.Join(to, ", "), "the order of stats and metrics is fixed at start")
	}

	types := make([]string, 0, len(running.Routes)+len(loaded.Routes))
	for typ := range running.Routes {
		types = append(types, typ)
	}
	for typ := range loaded.Routes {
		if _, ok := running.Routes[typ]; !ok {
			types = append(types, typ)
		}
	}
	slices.Sort(types)
	for _, typ := range types {
		from, to := running.Routes[typ], loaded.Routes[typ]
		if from == to {
			continue
		}
		if to != "" && !isRunning(to) {
			change(false, routeField(typ), from, to, notRunning(to))
			continue
		}
		if to == "" {
			delete(r.Next.Routes, typ)
		} else {
			r.Next.Routes[typ] = to
		}
		change(true, routeField(typ), from, to, "")
	}
	return r
}

// describeQueue renders a whole queue for a change that adds or removes it.
func describeQueue(q bus.QueueConfig) string {
	s := fmt.Sprintf("capacity %d, policy %s", q.Capacity, q.Policy)
	if q.Policy.UsesTimeout() {
		s += ", timeout " + q.Timeout.String()
	}
	return s
}

// commonOrder lists the names of a's queues that b has too, in a's order.
func commonOrder(a, b []bus.QueueConfig) []string {
	var names []string
	for _, q := range a {
		if slices.ContainsFunc(b, func(o bus.QueueConfig) bool { return o.Name == q.Name }) {
			names = append(names, q.Name)
		}
	}
	return names
}
