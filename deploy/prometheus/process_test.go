package prometheus

import (
	"bytes"
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// process is a child process started for a test: its output is kept for
// failure messages, and it is stopped with SIGTERM when the test ends.
type process struct {
	name   string
	exited chan error

	mu  sync.Mutex // the process writes its output while tests read it
	out bytes.Buffer
}

func (p *process) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

// logs returns what the process printed so far.
func (p *process) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// earlyExit reports, without blocking, that the process has already exited.
func (p *process) earlyExit() error {
	select {
	case err := <-p.exited:
		p.exited <- err
		return fmt.Errorf("%s exited early (%v); logs:\n%s", p.name, err, p.logs())
	default:
		return nil
	}
}

// startProcess starts cmd, stops it at the end of the test (SIGTERM, then
// SIGKILL after 15 s, which fails the test) and logs its output when the
// test failed.
func startProcess(t *testing.T, name string, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{name: name, exited: make(chan error, 1)}
	cmd.Stdout = p
	cmd.Stderr = p
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-p.exited
			t.Errorf("%s did not stop within 15s of SIGTERM", name)
		}
		if t.Failed() {
			t.Logf("%s logs:\n%s", name, p.logs())
		}
	})
	return p
}
