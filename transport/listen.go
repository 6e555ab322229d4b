package transport

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// DefaultSocketMode is the socket file's mode unless configured: owner and
// group may connect, others may not.
const DefaultSocketMode fs.FileMode = 0o660

// ErrSocketInUse: another live process serves the socket path.
var ErrSocketInUse = errors.New("socket is in use by a running process")

// Listen creates the Unix socket at path with exactly the given mode
// (0 means DefaultSocketMode) and listens on it.
//
// The socket is bound under a temporary name in the same directory, given
// its mode, and only then renamed onto path, so no client ever sees the
// socket with the process umask's looser or stricter mode. A stale socket
// file left by a crashed run (nobody accepts on it) is replaced; a live one
// is never stolen: Listen fails with ErrSocketInUse. A path that exists and
// is not a socket is left alone and reported. Closing the listener removes
// the socket file if it is still the one this call created.
func Listen(path string, mode fs.FileMode) (net.Listener, error) {
	if mode == 0 {
		mode = DefaultSocketMode
	}
	if mode&^fs.ModePerm != 0 {
		return nil, fmt.Errorf("socket mode %#o: only permission bits (0 to 0777) are allowed", uint32(mode))
	}
	if err := checkExisting(path); err != nil {
		return nil, err
	}
	tmp, err := tempSocketName(path)
	if err != nil {
		return nil, err
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// The file will live under path; the listener must not unlink tmp.
	ul.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ul.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail(fmt.Errorf("set mode %#o on socket %s: %w", uint32(mode), path, err))
	}
	// Re-check just before taking the path over: a concurrent start may have
	// bound it since the first check.
	if err := checkExisting(path); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("move socket into place at %s: %w", path, err))
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fail(fmt.Errorf("stat socket %s: %w", path, err))
	}
	return &socketListener{UnixListener: ul, path: path, file: fi}, nil
}

// checkExisting returns nil when path is free (absent, or a stale socket it
// removed) and an error naming what is in the way otherwise.
func checkExisting(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check socket path %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("socket path %s exists and is a %s, not a socket; remove it or choose another --socket path", path, describeType(fi.Mode()))
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%w: %s accepts connections (another sidecar?); stop it or choose another --socket path", ErrSocketInUse, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("socket %s exists and its state is unclear (%v); refusing to replace it", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

func describeType(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m.IsRegular():
		return "regular file"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	default:
		return "special file"
	}
}

// tempSocketName returns a unique sibling name of path, short enough for
// the kernel's 108-byte socket path limit when path itself fits with room.
func tempSocketName(path string) (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("temporary socket name: %w", err)
	}
	return filepath.Join(filepath.Dir(path), "."+hex.EncodeToString(b[:])+".sock.tmp"), nil
}

type socketListener struct {
	*net.UnixListener
	path string
	file fs.FileInfo
	once sync.Once
	err  error
}

// Close stops listening and removes the socket file, unless another process
// has since replaced it with its own.
func (l *socketListener) Close() error {
	l.once.Do(func() {
		l.err = l.UnixListener.Close()
		if fi, err := os.Stat(l.path); err == nil && os.SameFile(fi, l.file) {
			if err := os.Remove(l.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				l.err = errors.Join(l.err, fmt.Errorf("remove socket %s: %w", l.path, err))
			}
		}
	})
	return l.err
}
