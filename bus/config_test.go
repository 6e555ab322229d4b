package bus_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

func TestNewValidatesConfig(t *testing.T) {
	ok := bus.QueueConfig{Name: "data", Capacity: 10, Policy: bus.PolicyDrop, Timeout: time.Second}
	with := func(f func(*bus.QueueConfig)) []bus.QueueConfig {
		q := ok
		f(&q)
		return []bus.QueueConfig{q}
	}
	tests := []struct {
		name   string
		queues []bus.QueueConfig
		want   []string // substrings of the message
	}{
		{"no queues", nil, []string{"queues", "at least one"}},
		{"empty name", with(func(q *bus.QueueConfig) { q.Name = "" }), []string{"queues[0].name", "empty"}},
		{"name with space", with(func(q *bus.QueueConfig) { q.Name = "my queue" }), []string{"queues[0].name", `"my queue"`}},
		{"duplicate", []bus.QueueConfig{ok, ok}, []string{"queues[1].name", `"data"`, "duplicates queues[0].name"}},
		{"zero capacity", with(func(q *bus.QueueConfig) { q.Capacity = 0 }), []string{"queues[0].capacity", `"data"`, "0", "> 0"}},
		{"negative capacity", with(func(q *bus.QueueConfig) { q.Capacity = -5 }), []string{"queues[0].capacity", "-5"}},
		{"bad policy", with(func(q *bus.QueueConfig) { q.Policy = "dorp" }), []string{"queues[0].policy", `"dorp"`, "drop, fail, block, drop_oldest"}},
		{"empty policy", with(func(q *bus.QueueConfig) { q.Policy = "" }), []string{"queues[0].policy", `""`, "drop, fail, block, drop_oldest"}},
		{"drop without timeout", with(func(q *bus.QueueConfig) { q.Timeout = 0 }), []string{"queues[0].timeout", "0s", "> 0", "policy drop"}},
		{"fail with negative timeout", with(func(q *bus.QueueConfig) { q.Policy, q.Timeout = bus.PolicyFail, -time.Second }), []string{"queues[0].timeout", "-1s", "policy fail"}},
		{"block with negative timeout", with(func(q *bus.QueueConfig) { q.Policy, q.Timeout = bus.PolicyBlock, -time.Second }), []string{"queues[0].timeout", ">= 0"}},
		{"bad fsync", with(func(q *bus.QueueConfig) { q.Fsync = "sometimes" }), []string{"queues[0].fsync", `"data"`, `"sometimes"`, "always, interval"}},
		{"negative fsync interval", with(func(q *bus.QueueConfig) { q.FsyncInterval = -time.Second }), []string{"queues[0].fsync_interval", "-1s", ">= 0"}},
		{"negative dedupe window", with(func(q *bus.QueueConfig) { q.DedupeWindow = -time.Second }), []string{"queues[0].dedupe_window", "-1s", ">= 0"}},
		{"negative max deliveries", with(func(q *bus.QueueConfig) { q.MaxDeliveries = -1 }), []string{"queues[0].max_deliveries", "-1", ">= 0"}},
		{"max deliveries without dead letter", with(func(q *bus.QueueConfig) { q.MaxDeliveries = 3 }), []string{"queues[0].max_deliveries", `"data"`, "3", "queues[0].dead_letter"}},
		{"dead letter to itself", with(func(q *bus.QueueConfig) { q.MaxDeliveries, q.DeadLetter = 3, "data" }), []string{"queues[0].dead_letter", `"data"`, "own dead-letter queue"}},
		{"dead letter to unknown queue", append(with(func(q *bus.QueueConfig) { q.MaxDeliveries, q.DeadLetter = 3, "dlq" }),
			bus.QueueConfig{Name: "other", Capacity: 1, Policy: bus.PolicyBlock}), []string{"queues[0].dead_letter", `"dlq"`, "no such queue", "valid: other"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := bus.New(tt.queues)
			if err == nil {
				t.Fatalf("New accepted %+v", tt.queues)
			}
			if b != nil || !errors.Is(err, bus.ErrInvalidConfig) {
				t.Fatalf("New = %v, %v; want nil, ErrInvalidConfig", b, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestValidateAcceptsGoodConfigs(t *testing.T) {
	tests := []struct {
		name   string
		queues []bus.QueueConfig
	}{
		{"defaults", bus.DefaultQueues()},
		{"extra queue", append(bus.DefaultQueues(), bus.QueueConfig{Name: "risk", Capacity: 5, Policy: bus.PolicyDropOldest})},
		{"block ignores timeout", []bus.QueueConfig{{Name: "o", Capacity: 1, Policy: bus.PolicyBlock, Timeout: time.Minute}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := bus.Validate(tt.queues); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

func TestDefaultQueuesMatchSeedTable(t *testing.T) {
	want := []bus.QueueConfig{
		{Name: "data", Capacity: 1000, Policy: bus.PolicyDrop, Timeout: time.Second},
		{Name: "signal", Capacity: 100, Policy: bus.PolicyFail, Timeout: 5 * time.Second},
		{Name: "order", Capacity: 50, Policy: bus.PolicyBlock},
	}
	got := bus.DefaultQueues()
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("queue %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	got[0].Capacity = 1
	if bus.DefaultQueues()[0].Capacity != 1000 {
		t.Error("DefaultQueues shares its slice between calls")
	}
}

func TestQueueRules(t *testing.T) {
	names := map[string]bool{
		"data": true, "risk.v2": true, "A_b-9": true,
		"": false, "my queue": false, "tab\tname": false, "a/b": false, "données": false, "q\n": false,
	}
	for name, ok := range names {
		if err := bus.CheckQueueName(name); (err == nil) != ok {
			t.Errorf("CheckQueueName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
	for _, p := range bus.Policies {
		if err := bus.CheckPolicy(p); err != nil {
			t.Errorf("CheckPolicy(%q) = %v", p, err)
		}
	}
	err := bus.CheckPolicy("never")
	if err == nil || !strings.Contains(err.Error(), "drop, fail, block, drop_oldest") {
		t.Errorf("CheckPolicy(never) = %v; want the list of policies", err)
	}
	for p, want := range map[bus.Policy]bool{bus.PolicyDrop: true, bus.PolicyFail: true, bus.PolicyBlock: false, bus.PolicyDropOldest: false} {
		if got := p.UsesTimeout(); got != want {
			t.Errorf("%s.UsesTimeout() = %v, want %v", p, got, want)
		}
	}
}
