package testkit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Memory is a process's resident memory as /proc/<pid>/status reports it,
// in bytes.
type Memory struct {
	// RSS (VmRSS) is every resident page the process maps: Anon + File
	// (+ shared memory, which the sidecar has none of).
	RSS int64
	// Anon (RssAnon) is what the process wrote: heap, stacks, the
	// binary's written data.
	Anon int64
	// File (RssFile) is the pages of mapped files it has touched, with the
	// kernel's read-around: mostly the binary's code and read-only data.
	File int64
}

func (m Memory) String() string {
	mib := func(n int64) float64 { return float64(n) / (1 << 20) }
	return fmt.Sprintf("VmRSS %.1f MiB (RssAnon %.1f MiB, RssFile %.1f MiB)", mib(m.RSS), mib(m.Anon), mib(m.File))
}

// Memory reads the resident memory of a sidecar running as a child process.
func (s *Sidecar) Memory() (Memory, error) {
	if s.proc == nil {
		return Memory{}, errors.New("testkit: memory: the sidecar runs in-process")
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", s.proc.Pid))
	if err != nil {
		return Memory{}, fmt.Errorf("testkit: memory: %w", err)
	}
	defer f.Close()
	return parseMemory(f)
}

// parseMemory reads VmRSS, RssAnon and RssFile from a /proc/<pid>/status
// file; a process that has exited has none of them.
func parseMemory(r io.Reader) (Memory, error) {
	var m Memory
	fields := map[string]*int64{"VmRSS": &m.RSS, "RssAnon": &m.Anon, "RssFile": &m.File}
	seen := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		dst := fields[key]
		if !ok || dst == nil {
			continue
		}
		num, unit, _ := strings.Cut(strings.TrimSpace(val), " ")
		kib, err := strconv.ParseInt(num, 10, 64)
		if err != nil || unit != "kB" {
			return Memory{}, fmt.Errorf("testkit: memory: %s: %q, want a number of kB", key, strings.TrimSpace(val))
		}
		*dst = kib << 10
		seen++
	}
	if err := sc.Err(); err != nil {
		return Memory{}, fmt.Errorf("testkit: memory: %w", err)
	}
	if seen != len(fields) {
		return Memory{}, fmt.Errorf("testkit: memory: found %d of VmRSS, RssAnon and RssFile in the status (a process that exited has none)", seen)
	}
	return m, nil
}
