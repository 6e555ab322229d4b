//go:build !linux

package load

import "testing"

// addFloor adds nothing: the floor server is Linux only.
func addFloor(map[string]func(t *testing.T) string) {}
