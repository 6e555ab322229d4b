package kubernetes

import (
	"path"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

const dataVolume = "eventbus-data"

// TestDataDirIsOnAPersistentVolume: the sidecar's data dir is on a
// PersistentVolumeClaim of the kustomization, mounted by the sidecar only,
// so that accepted orders survive the pod; one pod at a time uses it.
func TestDataDirIsOnAPersistentVolume(t *testing.T) {
	m := loadManifests(t)
	cfg := m.sidecarConfig(t)
	if cfg.DataDir == "" {
		t.Fatal("the sidecar config sets no data_dir: every queue would live in memory and a crash would lose accepted orders")
	}
	var durable []string
	for _, q := range cfg.Queues {
		if q.Durable {
			durable = append(durable, q.Name)
		}
	}
	if !slices.Contains(durable, "order") || !slices.Contains(durable, "signal") {
		t.Errorf("durable queues %v, want order and signal", durable)
	}
	d := m.deployment(t, tradingDeployment)
	spec := &d.Spec.Template.Spec
	var vol *corev1.Volume
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == dataVolume {
			vol = &spec.Volumes[i]
		}
	}
	if vol == nil || vol.PersistentVolumeClaim == nil {
		t.Fatalf("pod needs a volume %q backed by a PersistentVolumeClaim for the data dir", dataVolume)
	}
	pvc, ok := m.claims[vol.PersistentVolumeClaim.ClaimName]
	if !ok {
		t.Fatalf("volume %s claims %q, which the kustomization does not hold", dataVolume, vol.PersistentVolumeClaim.ClaimName)
	}
	if !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteOnce) {
		t.Errorf("claim %s access modes %v, want ReadWriteOnce", pvc.Name, pvc.Spec.AccessModes)
	}
	if _, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; !ok {
		t.Errorf("claim %s requests no storage", pvc.Name)
	}
	vm := mountFor(t, findContainer(t, spec, sidecarContainer), dataVolume)
	if vm.ReadOnly {
		t.Errorf("the sidecar mounts %s read-only", dataVolume)
	}
	if mount := path.Clean(vm.MountPath); cfg.DataDir != mount && !strings.HasPrefix(cfg.DataDir, mount+"/") {
		t.Errorf("data_dir %s is not on the %s volume mounted at %s", cfg.DataDir, dataVolume, vm.MountPath)
	}
	for _, c := range spec.Containers {
		for _, vm := range c.VolumeMounts {
			if vm.Name == dataVolume {
				t.Errorf("container %s mounts the sidecar's data volume; only the sidecar may", c.Name)
			}
		}
	}
	// A ReadWriteOnce volume and a locked data dir take one pod at a time.
	if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType || d.Spec.Replicas == nil || *d.Spec.Replicas != 1 {
		t.Errorf("Deployment %s: strategy %s, replicas %v; want Recreate and 1 so that one sidecar at a time holds the data dir", d.Name, d.Spec.Strategy.Type, d.Spec.Replicas)
	}
}
