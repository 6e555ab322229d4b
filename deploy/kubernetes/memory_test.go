package kubernetes

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestSidecarMemoryFitsItsLimit: whatever its clients do, the sidecar
// needs at most the memory bound of its configuration (README, Memory),
// which must fit under the soft memory limit it sets from the container's
// limit (90% of it), or the kernel may kill it, and every queued event
// with it, before the garbage collector can help.
func TestSidecarMemoryFitsItsLimit(t *testing.T) {
	m := loadManifests(t)
	cfg := m.sidecarConfig(t)
	d := m.deployment(t, tradingDeployment)
	c := findContainer(t, &d.Spec.Template.Spec, sidecarContainer)
	limit, ok := c.Resources.Limits[corev1.ResourceMemory]
	if !ok {
		t.Fatalf("container %s has no memory limit", c.Name)
	}
	soft := limit.Value() / 10 * 9
	bound := cfg.MemoryBound()
	t.Logf("memory bound %.1f MiB (max_connections %d, max_buffered_bytes %d, %d queues); soft limit %.1f MiB of %s",
		float64(bound)/(1<<20), cfg.MaxConnections, cfg.MaxBufferedBytes, len(cfg.Queues), float64(soft)/(1<<20), limit.String())
	if bound > soft {
		t.Errorf("the sidecar may need %.1f MiB (max_connections %d, max_buffered_bytes %d, %d queues), more than the %.1f MiB soft limit it sets from its %s limit: lower max_connections or max_buffered_bytes, or raise the limit",
			float64(bound)/(1<<20), cfg.MaxConnections, cfg.MaxBufferedBytes, len(cfg.Queues), float64(soft)/(1<<20), limit.String())
	}
}
