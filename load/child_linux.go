package load

import (
	"os/exec"
	"syscall"
)

// dieWithParent has the kernel send the child SIGTERM when the load tool
// ends without stopping it (killed, or crashed), so that no ceiling
// server outlives its run. The signal follows the thread that started the
// child; the Go runtime does not end its threads.
func dieWithParent(c *exec.Cmd) {
	if c.SysProcAttr == nil {
		c.SysProcAttr = &syscall.SysProcAttr{}
	}
	c.SysProcAttr.Pdeathsig = syscall.SIGTERM
}
