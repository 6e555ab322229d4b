package transport

import (
	"fmt"
	"strings"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// publishOfLen returns a publish frame of exactly n bytes.
func publishOfLen(t *testing.T, id, n int) string {
	t.Helper()
	head := fmt.Sprintf(`{"op":"publish","id":%d,"type":"T","payload":"`, id)
	pad := n - len(head) - len(`"}`)
	if pad < 0 {
		t.Fatalf("a publish cannot be %d bytes", n)
	}
	return head + strings.Repeat("a", pad) + `"}`
}

// TestFrameBoundaries: frames split anywhere, pipelined, and longer than
// the small read buffer are read whole; the limit holds exactly, CR
// before LF not counted.
func TestFrameBoundaries(t *testing.T) {
	const limit = 20000
	ts := startServer(t, withConfig(func(c *Config) { c.MaxFrameBytes = limit }))
	c := dialRaw(t, ts.path)

	// Several frames in one write, the long ones growing the buffer.
	batch := publishOfLen(t, 1, 100) + "\n" + publishOfLen(t, 2, limit) + "\r\n\n  \n" + publishOfLen(t, 3, 9000) + "\n"
	if _, err := c.nc.Write([]byte(batch)); err != nil {
		t.Fatal(err)
	}
	for id := int64(1); id <= 3; id++ {
		c.expectReply(c.recv(), id, protocol.StatusAccepted)
	}
	// One byte at a time.
	for _, b := range []byte(publishOfLen(t, 4, 5000) + "\r\n") {
		if _, err := c.nc.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
	}
	c.expectReply(c.recv(), 4, protocol.StatusAccepted)

	// One byte over, even with the CR the frame before it could have.
	c.send("%s", publishOfLen(t, 5, limit+1))
	m := c.recv()
	if m.Code != protocol.CodeFrameTooLarge {
		t.Fatalf("a frame of %d bytes got %+v, want frame_too_large", limit+1, m)
	}
	c.expectEOF()
	testkit.Eventually(t, "the connection's bytes released", func() bool { return ts.gone() && ts.srv.Buffered() == ts.queuedBytes("data") })
}
