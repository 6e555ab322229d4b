package config

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

func TestDurabilityDefaults(t *testing.T) {
	c := Default()
	if c.DataDir != "" {
		t.Errorf("data_dir = %q, want none by default", c.DataDir)
	}
	for _, q := range c.Queues {
		if want := q.Name != "data"; q.Durable != want {
			t.Errorf("queue %s durable = %v, want %v (order and signal are, data is not)", q.Name, q.Durable, want)
		}
		if q.Fsync != bus.FsyncAlways || q.DedupeWindow != bus.DefaultDedupeWindow || q.MaxDeliveries != 0 || q.DeadLetter != "" {
			t.Errorf("queue %s: %+v, want fsync always, dedupe window %v, no dead letters", q.Name, q, bus.DefaultDedupeWindow)
		}
	}
	if got := c.NotCrashSafe(); !slices.Equal(got, []string{"signal", "order"}) {
		t.Errorf("NotCrashSafe() = %v without a data dir, want signal and order", got)
	}
	c.DataDir = "/var/lib/eventbus"
	if got := c.NotCrashSafe(); got != nil {
		t.Errorf("NotCrashSafe() = %v with a data dir, want none", got)
	}
}

func TestDataDirSources(t *testing.T) {
	for _, tt := range []struct {
		name string
		src  Sources
		want string
	}{
		{"flag", Sources{Flags: map[string]string{"data-dir": "/flag"}, Env: envOf(map[string]string{"EVENTBUS_DATA_DIR": "/env"})}, "/flag"},
		{"env", Sources{Env: envOf(map[string]string{"EVENTBUS_DATA_DIR": "/env"})}, "/env"},
		{"file", Sources{File: writeFile(t, "data_dir: /file\n")}, "/file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(tt.src)
			if err != nil {
				t.Fatal(err)
			}
			if c.DataDir != tt.want {
				t.Fatalf("data_dir = %q, want %q", c.DataDir, tt.want)
			}
		})
	}
}

func TestFileDurability(t *testing.T) {
	c, err := Parse([]byte(`
data_dir: /var/lib/eventbus
queues:
  - name: data
    durable: true
    fsync: interval
    fsync_interval: 50ms
  - name: order
    max_deliveries: 5
    dead_letter: order_dead
    dedupe_window: 10m
  - name: order_dead
    capacity: 1000
    policy: block
    durable: true
`), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := []bus.QueueConfig{
		{Name: "data", Capacity: 1000, Policy: bus.PolicyDrop, Timeout: time.Second, Durable: true, Fsync: bus.FsyncInterval, FsyncInterval: 50 * time.Millisecond, DedupeWindow: bus.DefaultDedupeWindow},
		{Name: "signal", Capacity: 100, Policy: bus.PolicyFail, Timeout: 5 * time.Second, Durable: true, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow},
		{Name: "order", Capacity: 50, Policy: bus.PolicyBlock, Durable: true, Fsync: bus.FsyncAlways, DedupeWindow: 10 * time.Minute, MaxDeliveries: 5, DeadLetter: "order_dead"},
		{Name: "order_dead", Capacity: 1000, Policy: bus.PolicyBlock, Durable: true, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow},
	}
	if !reflect.DeepEqual(c.Queues, want) {
		t.Fatalf("queues = %+v\nwant %+v", c.Queues, want)
	}
	if c.DataDir != "/var/lib/eventbus" {
		t.Fatalf("data_dir = %q", c.DataDir)
	}
	// What config prints loads back to the same configuration.
	out, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(out, "rendered")
	if err != nil {
		t.Fatalf("rendered config does not load: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(back, c) {
		t.Fatalf("round trip changed the config:\n got %+v\nwant %+v", back, c)
	}
	for _, key := range []string{"data_dir: /var/lib/eventbus", "durable: true", "fsync: interval", "fsync_interval: 50ms", "dedupe_window: 10m0s", "max_deliveries: 5", "dead_letter: order_dead"} {
		if !strings.Contains(string(out), key) {
			t.Errorf("config output lacks %q:\n%s", key, out)
		}
	}
}

func TestInvalidDurability(t *testing.T) {
	tests := []invalidCase{
		{name: "fsync mode", yaml: "queues:\n  - {name: order, fsync: sometimes}\n", want: []string{`queues[order].fsync "sometimes"`, "allowed values: always, interval"}},
		{name: "durable not a bool", yaml: "queues:\n  - {name: order, durable: maybe}\n", want: []string{`queues[order].durable "maybe"`, "line 2", "true or false"}},
		{name: "interval with fsync always", yaml: "queues:\n  - {name: order, fsync_interval: 10ms}\n", want: []string{`queues[order].fsync_interval "10ms"`, "no effect with fsync always"}},
		{name: "negative interval", yaml: "queues:\n  - {name: order, fsync: interval, fsync_interval: -1s}\n", want: []string{`queues[order].fsync_interval "-1s"`, "must be > 0"}},
		{name: "interval not a duration", yaml: "queues:\n  - {name: order, fsync: interval, fsync_interval: 100}\n", want: []string{`queues[order].fsync_interval "100"`, "not a duration"}},
		{name: "negative dedupe window", yaml: "queues:\n  - {name: order, dedupe_window: -2m}\n", want: []string{`queues[order].dedupe_window "-2m0s"`, "must be > 0"}},
		{name: "negative max deliveries", yaml: "queues:\n  - {name: order, max_deliveries: -1}\n", want: []string{`queues[order].max_deliveries "-1"`, ">= 0"}},
		{name: "max deliveries not a number", yaml: "queues:\n  - {name: order, max_deliveries: five}\n", want: []string{`queues[order].max_deliveries "five"`, "whole number"}},
		{name: "max deliveries without dead letter", yaml: "queues:\n  - {name: order, max_deliveries: 5}\n", want: []string{`queues[order].dead_letter ""`, "max_deliveries 5 needs a dead_letter queue", "allowed: data, signal"}},
		{name: "dead letter without max deliveries", yaml: "queues:\n  - {name: order, dead_letter: data}\n", want: []string{`queues[order].dead_letter "data"`, "no effect without max_deliveries"}},
		{name: "dead letter to itself", yaml: "queues:\n  - {name: order, max_deliveries: 3, dead_letter: order}\n", want: []string{`queues[order].dead_letter "order"`, "its own dead-letter queue", "allowed: data, signal"}},
		{name: "durable queue, dead letters in memory", yaml: "queues:\n  - {name: order, max_deliveries: 3, dead_letter: order_dead}\n  - {name: order_dead, capacity: 10, policy: block}\n", want: []string{`queues[order].dead_letter "order_dead"`, `queue "order" is durable but its dead-letter queue is not`, `set durable: true on "order_dead"`}},
		{name: "dead letter to an unknown queue", yaml: "queues:\n  - {name: order, max_deliveries: 3, dead_letter: dlq}\n", want: []string{`queues[order].dead_letter "dlq"`, "not a configured queue; allowed: data, signal"}},
		{name: "unknown queue key names the new ones", yaml: "queues:\n  - {name: order, durability: on}\n", want: []string{`unknown key "durability"`, "durable, fsync, fsync_interval, dedupe_window, max_deliveries, dead_letter"}},
	}
	checkInvalid(t, tests)
}
