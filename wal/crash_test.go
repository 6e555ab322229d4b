package wal

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	crashWriterEnv = "WAL_CRASH_WRITER_DIR"
	crashModeEnv   = "WAL_CRASH_WRITER_FSYNC"
)

func crashOpts(mode FsyncMode) Options {
	return Options{Fsync: mode, FsyncInterval: 5 * time.Millisecond, SegmentSize: 64 << 10, MaxRecord: 4096, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}
}

// runCrashWriter appends and acks from 8 goroutines until it is killed,
// printing "A seq" after each Append returned success and "K seq" before
// each Ack (an ack may land just before the kill, its line not yet out).
// Each line is one write(2), so an "A" line the parent reads was printed
// after the call returned.
func runCrashWriter(dir string) {
	l, rec, err := Open(context.Background(), dir, crashOpts(FsyncMode(os.Getenv(crashModeEnv))))
	if err != nil {
		fmt.Fprintln(os.Stderr, "writer: open:", err)
		os.Exit(2)
	}
	var outMu sync.Mutex
	say := func(kind byte, seq uint64) {
		outMu.Lock()
		defer outMu.Unlock()
		os.Stdout.Write(strconv.AppendUint([]byte{kind, ' '}, seq, 10))
		os.Stdout.Write([]byte{'\n'})
	}
	for i, r := range rec.Records {
		if i%2 == 0 {
			say('K', r.Seq)
			l.Ack(r.Seq)
		}
	}
	for w := range 8 {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			data := bytes.Repeat([]byte{'e'}, 600)
			for {
				a, err := l.Append(context.Background(), data[:rng.IntN(len(data))], "", time.Now())
				if err != nil {
					fmt.Fprintln(os.Stderr, "writer: append:", err)
					continue
				}
				say('A', a.Seq)
				if rng.IntN(10) < 7 {
					say('K', a.Seq)
					l.Ack(a.Seq)
				}
			}
		}()
	}
	select {} // until SIGKILL
}

// TestCrashKill9 runs the writer in a child process, kills it with SIGKILL
// at a random point, and checks that every append that returned success
// and was not acked is recovered, and that no seq is ever handed out twice.
// Odd rounds use fsync interval: killing the process (not the machine)
// must lose nothing there either, since written records are in the
// kernel's page cache.
func TestCrashKill9(t *testing.T) {
	dir := t.TempDir()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	seen := map[uint64]bool{}
	acked := map[uint64]bool{}
	var maxSeq uint64
	for round := range 20 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		mode := FsyncAlways
		if round%2 == 1 {
			mode = FsyncInterval
		}
		cmd.Env = append(os.Environ(), crashWriterEnv+"="+dir, crashModeEnv+"="+string(mode))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		kill := func() { cmd.Process.Signal(syscall.SIGKILL) }
		bound := time.AfterFunc(time.Second, kill) // keeps a round short even if the writer is slow
		killAfter := rng.IntN(3000) + 1
		r := bufio.NewReader(out)
		lines := 0
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				break // EOF after the kill; a partial line is not a report
			}
			lines++
			if lines == killAfter {
				kill()
			}
			kind, num, _ := strings.Cut(strings.TrimSpace(line), " ")
			seq, perr := strconv.ParseUint(num, 10, 64)
			if perr != nil {
				t.Fatalf("round %d: bad writer line %q", round, line)
			}
			switch kind {
			case "A":
				if seen[seq] {
					t.Fatalf("round %d: seq %d handed out twice", round, seq)
				}
				seen[seq] = true
				maxSeq = max(maxSeq, seq)
			case "K":
				acked[seq] = true
			}
		}
		bound.Stop()
		kill()
		cmd.Wait()
		if strings.Contains(stderr.String(), "writer: open") {
			t.Fatalf("round %d: writer could not open the log:\n%s", round, stderr.String())
		}

		l, rec, err := Open(context.Background(), dir, crashOpts(FsyncAlways))
		if err != nil {
			t.Fatalf("round %d: open after kill -9 at line %d: %v", round, killAfter, err)
		}
		got := map[uint64]bool{}
		for _, r := range rec.Records {
			got[r.Seq] = true
		}
		lost := 0
		for s := range seen {
			if !acked[s] && !got[s] {
				lost++
				t.Errorf("round %d: seq %d was appended, never acked, and is lost", round, s)
			}
		}
		if rec.NextSeq <= maxSeq {
			t.Errorf("round %d: NextSeq %d, but seq %d was handed out", round, rec.NextSeq, maxSeq)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d (fsync %s): %d lines read, %d appended so far, %d unacked recovered, %d torn bytes cut", round, mode, lines, len(seen), len(rec.Records), rec.TornBytes)
		if lost > 0 {
			t.FailNow()
		}
	}
}
