//go:build !linux

package load

import "os/exec"

// dieWithParent is Linux's parent-death signal; elsewhere a child ceiling
// server left behind by a killed load tool must be stopped by hand.
func dieWithParent(*exec.Cmd) {}
