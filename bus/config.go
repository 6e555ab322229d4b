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

// DefaultQueues returns the sidecar's default queues: data (1000, waits
// 1.0 s then drops), signal (100, waits 5.0 s then fails with a timeout)
// and order (50, waits without limit). Each call returns a fresh slice.
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

// UsesTimeout reports whether a queue with policy p waits for room only up
// to its timeout (PolicyDrop, PolicyFail); the other policies ignore it.
func (p Policy) UsesTimeout() bool { return p == PolicyDrop || p == PolicyFail }

// CheckPolicy returns nil for a valid policy, else an error listing the
// valid ones. Like CheckQueueName it leaves naming the field to the caller.
func CheckPolicy(p Policy) error {
	if p.Valid() {
		return nil
	}
	names := make([]string, len(Policies))
	for i, v := range Policies {
		names[i] = string(v)
	}
	return errors.New("allowed values: " + strings.Join(names, ", "))
}

// CheckQueueName returns nil if name can name a queue: letters, digits and
// _ . - only. A name is then one word in span names ("publish data", see
// ParseSpanName), metric labels and log lines, and needs no quoting in the
// socket protocol or a YAML file. The error says only what is wrong, so
// that callers can name the field, the value and its source their own way.
func CheckQueueName(name string) error {
	if name == "" {
		return errors.New("must not be empty")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-'
		if !ok {
			return errors.New("allowed characters: letters, digits, _ . -")
		}
	}
	return nil
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
		if err := CheckQueueName(q.Name); err != nil {
			errs = append(errs, fmt.Errorf("%w: %s %q: %v", ErrInvalidConfig, field("name"), q.Name, err))
		} else if j, dup := seen[q.Name]; dup {
			errs = append(errs, fmt.Errorf("%w: %s: %q duplicates queues[%d].name: names must be unique", ErrInvalidConfig, field("name"), q.Name, j))
		} else {
			seen[q.Name] = i
		}
		if q.Capacity <= 0 {
			errs = append(errs, fmt.Errorf("%w: %s (queue %q): %d: must be > 0", ErrInvalidConfig, field("capacity"), q.Name, q.Capacity))
		}
		if err := CheckPolicy(q.Policy); err != nil {
			errs = append(errs, fmt.Errorf("%w: %s (queue %q): %q: %v", ErrInvalidConfig, field("policy"), q.Name, string(q.Policy), err))
		}
		switch {
		case q.Policy.UsesTimeout() && q.Timeout <= 0:
			errs = append(errs, fmt.Errorf("%w: %s (queue %q): %v: must be > 0 for policy %s", ErrInvalidConfig, field("timeout"), q.Name, q.Timeout, q.Policy))
		case q.Policy.Valid() && q.Timeout < 0:
			errs = append(errs, fmt.Errorf("%w: %s (queue %q): %v: must be >= 0 (it is ignored by policy %s)", ErrInvalidConfig, field("timeout"), q.Name, q.Timeout, q.Policy))
		}
		errs = append(errs, validateDurability(q, field)...)
	}
	for i, q := range queues {
		if q.DeadLetter == "" {
			continue
		}
		field := fmt.Sprintf("queues[%d].dead_letter", i)
		if q.DeadLetter == q.Name {
			errs = append(errs, fmt.Errorf("%w: %s (queue %q): %q: a queue cannot be its own dead-letter queue; valid: another queue (%s)", ErrInvalidConfig, field, q.Name, q.DeadLetter, otherNames(queues, q.Name)))
		} else if _, ok := seen[q.DeadLetter]; !ok {
			errs = append(errs, fmt.Errorf("%w: %s (queue %q): %q: no such queue; valid: %s", ErrInvalidConfig, field, q.Name, q.DeadLetter, otherNames(queues, q.Name)))
		}
	}
	return errors.Join(errs...)
}

// validateDurability checks a queue's log, dedupe and dead-letter fields
// (the dead-letter queue's name is checked once every name is known).
func validateDurability(q QueueConfig, field func(string) string) []error {
	var errs []error
	switch q.Fsync {
	case "", FsyncAlways, FsyncInterval:
	default:
		errs = append(errs, fmt.Errorf("%w: %s (queue %q): %q: allowed values: %s, %s", ErrInvalidConfig, field("fsync"), q.Name, string(q.Fsync), FsyncAlways, FsyncInterval))
	}
	if q.FsyncInterval < 0 {
		errs = append(errs, fmt.Errorf("%w: %s (queue %q): %v: must be >= 0 (0: the default, 100ms)", ErrInvalidConfig, field("fsync_interval"), q.Name, q.FsyncInterval))
	}
	if q.DedupeWindow < 0 {
		errs = append(errs, fmt.Errorf("%w: %s (queue %q): %v: must be >= 0 (0: the default, %v)", ErrInvalidConfig, field("dedupe_window"), q.Name, q.DedupeWindow, DefaultDedupeWindow))
	}
	switch {
	case q.MaxDeliveries < 0:
		errs = append(errs, fmt.Errorf("%w: %s (queue %q): %d: must be >= 0 (0: redeliver without limit)", ErrInvalidConfig, field("max_deliveries"), q.Name, q.MaxDeliveries))
	case q.MaxDeliveries > 0 && q.DeadLetter == "":
		errs = append(errs, fmt.Errorf("%w: %s (queue %q): %d: needs %s naming the queue that takes events past it (or 0: redeliver without limit)", ErrInvalidConfig, field("max_deliveries"), q.Name, q.MaxDeliveries, field("dead_letter")))
	}
	return errs
}

// otherNames lists the queue names other than name, for error messages.
func otherNames(queues []QueueConfig, name string) string {
	var names []string
	for _, q := range queues {
		if q.Name != name && q.Name != "" {
			names = append(names, q.Name)
		}
	}
	if len(names) == 0 {
		return "none: add a queue to take the dead letters"
	}
	return strings.Join(names, ", ")
}
