package bus

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrInvalidConfig: a queue configuration or a Subscribe argument is
// invalid. The wrapping message names the field, the bad value and the
// allowed values.
var ErrInvalidConfig = errors.New("invalid bus configuration")

// DefaultQueues returns the seed's three queues: data (1000, waits 1.0 s
// then drops), signal (100, waits 5.0 s then fails with a timeout) and
// order (50, waits without limit). Each call returns a fresh slice.
func DefaultQueues() []QueueConfig {
	return []QueueConfig{
		{Name: "data", Capacity: 1000, Policy: PolicyDrop, Timeout: time.Second},
		{Name: "signal", Capacity: 100, Policy: PolicyFail, Timeout: 5 * time.Second},
		{Name: "order", Capacity: 50, Policy: PolicyBlock},
	}
}

// Valid reports whether p is one of Policies.
func (p Policy) Valid() bool {
	for _, v := range Policies {
		if p == v {
			return true
		}
	}
	return false
}

func policyNames() string {
	names := make([]string, len(Policies))
	for i, p := range Policies {
		names[i] = string(p)
	}
	return strings.Join(names, ", ")
}

// Validate checks a queue list the way New does, so that a config loader can
// refuse a bad file before building anything. Errors wrap ErrInvalidConfig
// and name the field (queues[i].field), the bad value and what is allowed.
func Validate(queues []QueueConfig) error {
	if len(queues) == 0 {
		return fmt.Errorf("%w: queues: empty list: at least one queue is required", ErrInvalidConfig)
	}
	var errs []error
	seen := make(map[string]int, len(queues))
	for i, q := range queues {
		field := func(name string) string { return fmt.Sprintf("queues[%d].%s", i, name) }
		switch {
		case q.Name == "":
			errs = append(errs, fmt.Errorf("%w: %s: empty: a non-empty name without spaces is required", ErrInvalidConfig, field("name")))
		case strings.ContainsFunc(q.Name, func(r rune) bool { return r <= ' ' || r == 0x7f }):
			errs = append(errs, fmt.Errorf("%w: %s: %q contains spaces or control characters: a non-empty name without spaces is required", ErrInvalidConfig, field("name"), q.Name))
		default:
			if j, dup := seen[q.Name]; dup {
				errs = append(errs, fmt.Errorf("%w: %s: %q duplicates queues[%d].name: names must be unique", ErrInvalidConfig, field("name"), q.Name, j))
			} else {
				seen[q.Name] = i
			}
		}
		if q.Capacity <= 0 {
			errs = append(errs, fmt.Errorf("%w: %s (queue %q): %d: must be > 0", ErrInvalidConfig, field("capacity"), q.Name, q.Capacity))
		}
		if !q.Policy.Valid() {
			errs = append(errs, fmt.Errorf("%w: %s (queue %q): %q: allowed values are %s", ErrInvalidConfig, field("policy"), q.Name, string(q.Policy), policyNames()))
		}
		switch q.Policy {
		case PolicyDrop, PolicyFail:
			if q.Timeout <= 0 {
				errs = append(errs, fmt.Errorf("%w: %s (queue %q): %v: must be > 0 for policy %s", ErrInvalidConfig, field("timeout"), q.Name, q.Timeout, q.Policy))
			}
		case PolicyBlock, PolicyDropOldest:
			if q.Timeout < 0 {
				errs = append(errs, fmt.Errorf("%w: %s (queue %q): %v: must be >= 0 (it is ignored by policy %s)", ErrInvalidConfig, field("timeout"), q.Name, q.Timeout, q.Policy))
			}
		}
	}
	return errors.Join(errs...)
}
