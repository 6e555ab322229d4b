package main

import (
	"cmp"
	"log/slog"

	"github.com/eventbus-sidecar/eventbus-sidecar/config"
	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

// memoryLimit keeps the Go runtime's soft memory limit at what the running
// configuration may need (config.MemoryBound), or at 90% of the
// container's limit where there is one, so that memory freed after a
// spike goes back to the kernel before the kernel comes for it. The limit
// is process-wide: only a program that owns its process sets it, and serve
// puts the previous one back when it returns. An explicit GOMEMLIMIT wins.
type memoryLimit struct {
	set        func(int64) int64 // nil: leave the limit alone
	cgroupFile string
	log        *slog.Logger
	prev       int64
	applied    bool
}

func (p *program) memoryLimit(log *slog.Logger) *memoryLimit {
	m := &memoryLimit{set: p.setMemoryLimit, cgroupFile: cmp.Or(p.cgroupMemoryMax, transport.CgroupMemoryMax), log: log}
	if _, explicit := p.env("GOMEMLIMIT"); explicit {
		m.set = nil
	}
	return m
}

// apply sets the limit for cfg: at start, and again on each reload, since
// the budget may change. Only serve's goroutine and its reload actor call
// it, one after the other.
func (m *memoryLimit) apply(cfg config.Config) {
	if m.set == nil {
		return
	}
	bound := cfg.MemoryBound()
	limit, err := transport.SoftMemoryLimit(bound, m.cgroupFile)
	if err != nil {
		m.log.Warn("memory limit: using the configuration's memory bound", "err", err)
	}
	if limit < bound {
		m.log.Warn("the container's memory limit is below what this configuration may need (README, Memory): lower max_connections or max_buffered_bytes, or raise the limit",
			"soft_limit_bytes", limit, "bound_bytes", bound,
			"max_connections", cfg.MaxConnections, "max_buffered_bytes", cfg.MaxBufferedBytes, "queues", len(cfg.Queues))
	}
	prev := m.set(limit)
	if !m.applied {
		m.prev, m.applied = prev, true
	}
	m.log.Debug("go runtime soft memory limit set", "bytes", limit, "bound", bound)
}

// restore puts back the limit the process had before apply.
func (m *memoryLimit) restore() {
	if m.applied {
		m.set(m.prev)
		m.applied = false
	}
}
