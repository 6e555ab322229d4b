package transport

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

func TestListenSetsModeAndRemovesFileOnClose(t *testing.T) {
	for _, mode := range []fs.FileMode{0, 0o600, 0o666} {
		want := mode
		if want == 0 {
			want = DefaultSocketMode
		}
		t.Run(want.String(), func(t *testing.T) {
			old := syscall.Umask(0o077) // a strict umask must not change the mode
			defer syscall.Umask(old)
			path := filepath.Join(testkit.ShortTempDir(t), "s.sock")
			l, err := Listen(path, mode)
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != want {
				t.Fatalf("socket mode %v, want socket with %v", fi.Mode(), want)
			}
			entries, _ := os.ReadDir(filepath.Dir(path))
			if len(entries) != 1 {
				t.Fatalf("directory holds %d entries, want only the socket (temporary name left behind?)", len(entries))
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("socket file still there after Close: %v", err)
			}
		})
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(testkit.ShortTempDir(t), "s.sock")
	// A crashed run leaves its socket file: bound, never unlinked.
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	l, err := Listen(path, 0)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("new socket does not accept: %v", err)
	}
	c.Close()
}

func TestListenRefusesLiveSocketAndOtherFiles(t *testing.T) {
	dir := testkit.ShortTempDir(t)
	live := filepath.Join(dir, "live.sock")
	l, err := Listen(live, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, want string
		is               error
	}{
		{"live socket", live, "accepts connections", ErrSocketInUse},
		{"regular file", regular, "is a regular file, not a socket", nil},
		{"directory", dir, "is a directory, not a socket", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l2, err := Listen(tt.path, 0)
			if err == nil {
				l2.Close()
				t.Fatal("Listen succeeded, want refusal")
			}
			if !strings.Contains(err.Error(), tt.want) || (tt.is != nil && !errors.Is(err, tt.is)) {
				t.Fatalf("error %v, want %q (is %v)", err, tt.want, tt.is)
			}
		})
	}
	if b, err := os.ReadFile(regular); err != nil || string(b) != "keep me" {
		t.Fatalf("regular file touched: %q %v", b, err)
	}
	// The live socket still works after the refused attempt.
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", live)
	if err != nil {
		t.Fatalf("live socket broken by the refused Listen: %v", err)
	}
	c.Close()
	if _, err := Listen(filepath.Join(dir, "x.sock"), 0o1777); err == nil || !strings.Contains(err.Error(), "only permission bits") {
		t.Fatalf("sticky-bit mode accepted: %v", err)
	}
}
