package wal

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fixedNow is the clock of tests that do not move time.
var fixedNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func testOpts() Options {
	return Options{Now: func() time.Time { return fixedNow }, Logger: slog.New(slog.DiscardHandler)}
}

// smallSegmentOpts is testOpts with segments small enough that a test
// rotates after a few dozen records.
func smallSegmentOpts() Options {
	opts := testOpts()
	opts.SegmentSize = 4096
	opts.MaxRecord = 1024
	return opts
}

// fillToRotation appends 200-byte events to l and acks each, until acking
// the last one (returned, not acked) crosses opts.SegmentSize of dead
// bytes and so starts a rotation. dead is what the segment holds dead
// already (at least its header). Each Append returns after the write of
// everything before it, the previous ack included.
func fillToRotation(t *testing.T, l *Log, opts Options, dead int64) (last uint64) {
	t.Helper()
	ackSize := int64(len(appendSettle(nil, settleRec{typ: recAck, seq: 1})))
	data := strings.Repeat("r", 200)
	recSize := int64(eventRecordSize("", []byte(data)))
	for {
		last = appendT(t, l, data)
		if dead+recSize+ackSize >= opts.SegmentSize {
			return last
		}
		mustOK(t, 0, "ack", l.Ack(last))
		dead += recSize + ackSize
	}
}

// openSmallFaulty opens a log with small segments (smallSegmentOpts) on
// a fault-injecting file system, in a new directory, closed at the end
// of the test. A test that needs other options sets them on the returned
// ones before it opens the log again.
func openSmallFaulty(t *testing.T) (l *Log, fsys *faultFS, opts Options, dir string) {
	t.Helper()
	fsys = newFaultFS()
	opts = smallSegmentOpts()
	opts.FS = fsys
	dir = t.TempDir()
	l, _ = openT(t, dir, opts)
	t.Cleanup(func() { l.Close() })
	return l, fsys, opts, dir
}

func openT(t *testing.T, dir string, opts Options) (*Log, *Recovered) {
	t.Helper()
	l, rec, err := Open(context.Background(), dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	return l, rec
}

func closeT(t *testing.T, l *Log) {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func appendT(t *testing.T, l *Log, data string) uint64 {
	t.Helper()
	a, err := l.Append(context.Background(), []byte(data), "", fixedNow)
	if err != nil {
		t.Fatalf("Append(%q): %v", data, err)
	}
	return a.Seq
}

// segFiles lists the segment files in dir.
func segFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.wal"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	for _, f := range segFiles(t, dir) {
		fi, err := os.Stat(f)
		if errors.Is(err, os.ErrNotExist) {
			continue // removed by a rotation since the listing
		}
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

// logBuffer is an io.Writer safe for the syncer goroutine and the test.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// faultFS wraps OSFS with faults a test switches on and off.
type faultFS struct {
	OSFS
	mu sync.Mutex
	// budget is how many more bytes writes may store before ENOSPC
	// (negative: unlimited). A write crossing it is stored in part.
	budget int64
	// short makes the next write store half its bytes and fail.
	short bool
	// syncErr fails every Sync while set.
	syncErr error
	// gate, when set, makes Sync wait until it is closed; with gateName,
	// only the Sync of that file (or of its temporary name, which a new
	// segment is written under), counted in gated.
	gate     chan struct{}
	gateName string
	gated    int
	syncs    int
	// truncErr fails every Truncate while set.
	truncErr error
	// noSync skips the real fdatasync, for tests of logic that do not
	// crash the machine and would otherwise wait on the disk.
	noSync bool
	// loseUnsynced makes a failed Sync do what Linux may do: drop the
	// dirty pages it could not write and mark them clean. The bytes
	// written to the file since its last successful Sync read back as
	// zeros (what was on disk), and a later Sync succeeds without them.
	loseUnsynced bool
	// removeErr fails every Remove of a segment while set.
	removeErr error
	// syncDirErr fails every SyncDir while set; syncDirs counts the
	// SyncDirs that reached the disk.
	syncDirErr error
	syncDirs   int
	// onRemove, when set, is called at each Remove of a segment.
	onRemove func()
	// crashAtRemove, when positive, counts down the Removes of segments;
	// the one that brings it to zero is where the process dies: neither
	// it nor any later change (write, truncate, creation, rename,
	// removal) reaches the disk, and syncs do nothing and succeed.
	crashAtRemove int
	crashed       bool
	// onWrite, when set, is called at each WriteAt with the name the
	// file was opened under and the offset, before the write.
	onWrite func(name string, off int64)
}

func newFaultFS() *faultFS { return &faultFS{budget: -1} }

func (f *faultFS) set(fn func(f *faultFS)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *faultFS) syncCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.syncs
}

func (f *faultFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	if flag&os.O_CREATE != 0 && f.dead() {
		return lostFile{}, nil
	}
	file, err := f.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: file, fs: f, name: name, dirtyFrom: clean}, nil
}

// dead says the process has "crashed" (crashAtRemove): nothing reaches
// the disk any more.
func (f *faultFS) dead() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.crashed
}

func (f *faultFS) Remove(name string) error {
	f.mu.Lock()
	isSeg := strings.HasSuffix(name, ".wal")
	if isSeg && f.crashAtRemove > 0 {
		f.crashAtRemove--
		f.crashed = f.crashAtRemove == 0
	}
	crashed, rerr, hook := f.crashed, f.removeErr, f.onRemove
	f.mu.Unlock()
	if isSeg && hook != nil {
		hook()
	}
	switch {
	case crashed:
		return nil
	case isSeg && rerr != nil:
		return &os.PathError{Op: "remove", Path: name, Err: rerr}
	}
	return f.OSFS.Remove(name)
}

func (f *faultFS) Rename(from, to string) error {
	if f.dead() {
		return nil
	}
	return f.OSFS.Rename(from, to)
}

// holdSyncs makes the Syncs of segment file name wait until the returned
// release is called (at the latest when the test ends, so that a failure
// does not leave Close waiting on the gate), and counts them from zero.
func (f *faultFS) holdSyncs(t *testing.T, name string) (release func()) {
	t.Helper()
	gate := make(chan struct{})
	f.set(func(f *faultFS) { f.gate, f.gateName, f.gated = gate, name, 0 })
	release = sync.OnceFunc(func() {
		f.set(func(f *faultFS) { f.gate, f.gateName = nil, "" })
		close(gate)
	})
	t.Cleanup(release)
	return release
}

// gatedCount counts the Syncs that reached the gate of gateName.
func (f *faultFS) gatedCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gated
}

func (f *faultFS) SyncDir(dir string) error {
	f.mu.Lock()
	noSync, err := f.noSync, f.syncDirErr
	f.mu.Unlock()
	if err != nil {
		return &os.PathError{Op: "fsync", Path: dir, Err: err}
	}
	if noSync || f.dead() {
		return nil
	}
	if err := f.OSFS.SyncDir(dir); err != nil {
		return err
	}
	f.set(func(f *faultFS) { f.syncDirs++ })
	return nil
}

func (f *faultFS) syncDirCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.syncDirs
}

// clean is a faultFile's dirtyFrom when nothing was written since its
// last successful Sync.
const clean = math.MaxInt64

type faultFile struct {
	File
	fs   *faultFS
	name string
	// size is the file's size, and dirtyFrom the lowest offset written
	// since the last successful Sync (both under fs.mu).
	size, dirtyFrom int64
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	hook := f.fs.onWrite
	f.fs.mu.Unlock()
	if hook != nil {
		hook(f.name, off)
	}
	f.fs.mu.Lock()
	if f.fs.crashed {
		f.fs.mu.Unlock()
		return len(p), nil
	}
	limit := int64(len(p))
	var ferr error
	switch {
	case f.fs.short:
		f.fs.short = false
		limit, ferr = limit/2, io.ErrShortWrite
	case f.fs.budget >= 0 && limit > f.fs.budget:
		limit, ferr = f.fs.budget, syscall.ENOSPC
	}
	if f.fs.budget >= 0 {
		f.fs.budget -= limit
	}
	f.dirtyFrom = min(f.dirtyFrom, off)
	f.size = max(f.size, off+limit)
	f.fs.mu.Unlock()
	n, err := f.File.WriteAt(p[:limit], off)
	if err == nil {
		err = ferr
	}
	return n, err
}

func (f *faultFile) Truncate(size int64) error {
	f.fs.mu.Lock()
	err, crashed := f.fs.truncErr, f.fs.crashed
	if err == nil && !crashed {
		f.size = size
	}
	f.fs.mu.Unlock()
	if err != nil || crashed {
		return err
	}
	return f.File.Truncate(size)
}

func (f *faultFile) Sync() error {
	f.fs.mu.Lock()
	gate, serr, noSync := f.fs.gate, f.fs.syncErr, f.fs.noSync
	switch {
	case f.fs.gateName == "":
	case f.fs.gateName == f.name, f.fs.gateName+".tmp" == f.name: // a new segment is synced before its rename
		f.fs.gated++
	default:
		gate = nil
	}
	f.fs.syncs++
	crashed := f.fs.crashed
	f.fs.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if crashed {
		return nil
	}
	if serr != nil {
		if err := f.loseUnsynced(); err != nil {
			return errors.Join(serr, err)
		}
		return serr
	}
	f.fs.mu.Lock()
	f.dirtyFrom = clean
	f.fs.mu.Unlock()
	if noSync {
		return nil
	}
	return f.File.Sync()
}

// loseUnsynced, after a failed Sync with loseUnsynced set, puts zeros
// where the file was written since its last successful Sync, and counts
// those bytes as clean.
func (f *faultFile) loseUnsynced() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if !f.fs.loseUnsynced || f.dirtyFrom >= f.size {
		return nil
	}
	zeros := make([]byte, f.size-f.dirtyFrom)
	_, err := f.File.WriteAt(zeros, f.dirtyFrom)
	f.dirtyFrom = clean
	return err
}

// lostFile is a file created after the crash: it never reaches the disk.
type lostFile struct{}

func (lostFile) ReadAt([]byte, int64) (int, error)      { return 0, io.EOF }
func (lostFile) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }
func (lostFile) Truncate(int64) error                   { return nil }
func (lostFile) Sync() error                            { return nil }
func (lostFile) Close() error                           { return nil }

// waitFor polls cond until it holds, failing the test after a generous
// bound (a hang, not a timing assertion). It is testkit.Eventually's job,
// but these package-internal tests cannot import testkit: testkit imports
// bus, which imports wal.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
