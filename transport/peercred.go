package transport

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// peerCred is a connecting process' credentials as the kernel recorded
// them when it connected (SO_PEERCRED).
type peerCred struct {
	uid, gid uint32
	pid      int32
	known    bool
}

// readPeerCred reads nc's peer credentials; a connection that is not a
// Unix socket has none.
func readPeerCred(nc net.Conn) (peerCred, error) {
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return peerCred{}, nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return peerCred{}, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return peerCred{}, fmt.Errorf("peer credentials: %w", err)
	}
	if serr != nil {
		return peerCred{}, fmt.Errorf("peer credentials: %w", serr)
	}
	return peerCred{uid: cred.Uid, gid: cred.Gid, pid: cred.Pid, known: true}, nil
}

// allowList is the uids and gids that may connect; SetAllowedPeers swaps
// it whole, so that a check never sees half of a reload.
type allowList struct{ uids, gids []uint32 }

// SetAllowedPeers replaces the uids and gids that may connect, for
// connections accepted from now on (both empty: any process the socket
// file's mode admits). Connections already open stay.
func (s *Server) SetAllowedPeers(uids, gids []uint32) {
	s.allowed.Store(&allowList{uids: slices.Clone(uids), gids: slices.Clone(gids)})
}

// admits reports whether a peer may connect: any peer when no uid or gid
// is configured, otherwise one whose uid or gid is listed. A peer whose
// credentials could not be read is refused then.
func (s *Server) admits(p peerCred) bool {
	a := s.allowed.Load()
	if len(a.uids) == 0 && len(a.gids) == 0 {
		return true
	}
	return p.known && (slices.Contains(a.uids, p.uid) || slices.Contains(a.gids, p.gid))
}

// deniedFrame is the one frame a refused peer gets.
func (s *Server) deniedFrame(p peerCred, err error) []byte {
	a := s.allowed.Load()
	var msg string
	if p.known {
		msg = fmt.Sprintf("permission denied: uid %d (gid %d) may not connect; allowed uids: %s; allowed gids: %s",
			p.uid, p.gid, idList(a.uids), idList(a.gids))
	} else {
		msg = fmt.Sprintf("permission denied: the peer's credentials could not be read (%v); allowed uids: %s; allowed gids: %s",
			err, idList(a.uids), idList(a.gids))
	}
	return protocol.AppendErrorReply(nil, 0, false, protocol.CodePermissionDenied, msg)
}

func idList(ids []uint32) string {
	if len(ids) == 0 {
		return "none"
	}
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = strconv.FormatUint(uint64(id), 10)
	}
	return strings.Join(parts, ", ")
}

// peerAttrs are a peer's log attributes.
func peerAttrs(p peerCred, err error) []any {
	if !p.known {
		return []any{"peer_err", err}
	}
	return []any{"peer_uid", p.uid, "peer_gid", p.gid, "peer_pid", p.pid}
}
