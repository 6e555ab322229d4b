package load

import (
	"path/filepath"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// addFloor adds the floor server to the framing servers under test.
func addFloor(servers map[string]func(t *testing.T) string) {
	servers["floor"] = startTestFloor
}

func startTestFloor(t *testing.T) string {
	t.Helper()
	path := filepath.Join(testkit.ShortTempDir(t), "f.sock")
	f, err := startFloor(path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- f.serve() }()
	t.Cleanup(func() {
		f.stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return path
}
