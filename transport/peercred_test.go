package transport

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

const peerClientEnv = "EVENTBUS_TEST_PEER_CLIENT"

// runPeerClient is the re-executed test binary's whole job: connect, ping,
// print the first frame the server sends.
func runPeerClient(path string) int {
	nc, err := net.Dial("unix", path)
	if err != nil {
		fmt.Println("dial:", err)
		return 2
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(testTimeout))
	if _, err := nc.Write([]byte(`{"op":"ping","id":1}` + "\n")); err != nil {
		fmt.Println("write:", err)
		return 2
	}
	line, err := bufio.NewReader(nc).ReadString('\n')
	if err != nil {
		fmt.Println("read:", err)
		return 2
	}
	fmt.Print(line)
	return 0
}

// asUser runs this test binary as uid/gid as a client of the socket at
// path and returns the frame it got.
func asUser(t *testing.T, path string, uid, gid uint32) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The build directory is private to root: the other user runs a copy.
	bin := filepath.Join(filepath.Dir(path), "client.test")
	if _, err := os.Stat(bin); err != nil {
		data, err := os.ReadFile(self)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{peerClientEnv + "=" + path}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("client as uid %d: %v; output %q", uid, err, out.String())
	}
	return strings.TrimSpace(out.String())
}

// TestPeerCredentials: a process whose uid and gid are not allowed gets one
// permission_denied frame naming its uid and is counted; an allowed one is
// served, and its uid and pid appear in the connection's log lines.
func TestPeerCredentials(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test connects as another user, which needs root")
	}
	const nobody = 65534
	logs := &testkit.SyncBuffer{}
	ts, reader := meteredServer(t, withConfig(func(c *Config) {
		c.AllowedUIDs = []uint32{0}
		c.AllowedGIDs = []uint32{4242}
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}))
	// Let the other user reach the socket: the file mode is not what is
	// tested here.
	if err := os.Chmod(filepath.Dir(ts.path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(ts.path, 0o666); err != nil {
		t.Fatal(err)
	}

	got := asUser(t, ts.path, nobody, nobody)
	m, err := protocol.DecodeMessage([]byte(got))
	if err != nil {
		t.Fatalf("the refused client got %q: %v", got, err)
	}
	if m.HasID || m.Status != protocol.StatusError || m.Code != protocol.CodePermissionDenied ||
		!strings.Contains(m.Error, "uid 65534") || !strings.Contains(m.Error, "allowed uids: 0") {
		t.Fatalf("the refused client got %q, want a permission_denied error naming uid 65534 and the allowed uids", got)
	}
	if ts.srv.Denied() != 1 || ts.srv.Rejected() != 0 {
		t.Fatalf("Denied() = %d, Rejected() = %d; want 1 and 0", ts.srv.Denied(), ts.srv.Rejected())
	}
	if v := rejectedByReason(t, reader); v[RejectPermissionDenied] != 1 || v[RejectTooManyConnections] != 0 {
		t.Fatalf("eventbus.connections.rejected by reason = %v, want permission_denied 1", v)
	}

	// Allowed by gid alone.
	if got := asUser(t, ts.path, nobody, 4242); !strings.Contains(got, `"status":"ok"`) {
		t.Fatalf("a client in an allowed group got %q, want its ping answered", got)
	}

	c := dialRaw(t, ts.path)
	c.expectReply(c.roundTrip(`{"op":"ping","id":1}`), 1, protocol.StatusOK)
	opened := logs.Lines("connection opened")
	want := fmt.Sprintf("peer_uid=0 peer_pid=%d", os.Getpid())
	if len(opened) == 0 || !strings.Contains(opened[len(opened)-1], want) {
		t.Fatalf("connection log lines %q; want the last with %q", opened, want)
	}
	ts.srv.LogRejections()
	if l := logs.Lines("uid and gid are not allowed"); len(l) != 1 || !strings.Contains(l[0], "refused=1") {
		t.Fatalf("refusal summary %q, want one line with refused=1", l)
	}

	// A reload that allows everyone applies to the next connection.
	ts.srv.SetAllowedPeers(nil, nil)
	if got := asUser(t, ts.path, nobody, nobody); !strings.Contains(got, `"status":"ok"`) {
		t.Fatalf("after SetAllowedPeers(nil, nil) uid 65534 got %q, want its ping answered", got)
	}
}

func TestAdmits(t *testing.T) {
	s := &Server{}
	s.SetAllowedPeers(nil, nil)
	root, nobody := peerCred{uid: 0, gid: 0, known: true}, peerCred{uid: 65534, gid: 65534, known: true}
	if !s.admits(nobody) || !s.admits(peerCred{}) {
		t.Fatal("with no lists every peer must be admitted")
	}
	s.SetAllowedPeers([]uint32{0}, nil)
	if !s.admits(root) || s.admits(nobody) || s.admits(peerCred{}) {
		t.Fatal("AllowedUIDs [0]: root only, and never a peer without credentials")
	}
	s.SetAllowedPeers([]uint32{0}, []uint32{65534})
	if !s.admits(nobody) {
		t.Fatal("AllowedGIDs [65534] admits gid 65534")
	}
	if got := idList(nil); got != "none" {
		t.Fatalf("idList(nil) = %q", got)
	}
}
