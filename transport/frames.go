package transport

import (
	"bytes"
	"errors"
	"io"
	"os"
	"time"
)

const (
	// minReadBuffer is what an idle connection's read buffer holds: room
	// for the usual frames of a trading app, which are a few hundred bytes.
	minReadBuffer = 4 << 10
	// shrinkReadBuffer: a read buffer grown past this for a long frame is
	// given back once the frame is handled, so that a spike of large
	// frames does not leave every connection holding a megabyte.
	shrinkReadBuffer = 64 << 10
)

var (
	errFrameTooLarge = errors.New("frame too large")
	errFrameTimeout  = errors.New("frame not completed within the frame timeout")
)

// frameReader splits a connection's input into frames. Its buffer starts
// small, grows (reserving each step from the budget) while one frame is
// longer, and shrinks back after it. Read loop only.
type frameReader struct {
	c    *conn
	buf  []byte
	r, w int // buf[r:w] is read and not yet returned
	// started is when the unfinished frame's first byte arrived; zero
	// when none is buffered. A frame must be complete within FrameTimeout
	// of it; an idle connection between frames has no deadline.
	started  time.Time
	deadline time.Time // the read deadline set last
	err      error     // a read error held back until the buffered frames are returned
}

// release gives the buffer's bytes back to the budget.
func (fr *frameReader) release() {
	fr.c.s.budget.charge(fr.c, -int64(len(fr.buf)), 0)
	fr.buf = nil
	fr.r, fr.w = 0, 0
}

// next returns the next frame without its newline (and without a trailing
// CR). The slice is valid until the next call.
func (fr *frameReader) next() ([]byte, error) {
	c := fr.c
	limit := c.s.cfg.MaxFrameBytes
	fr.shrink()
	scanned := 0
	for {
		if i := bytes.IndexByte(fr.buf[fr.r+scanned:fr.w], '\n'); i >= 0 {
			end := fr.r + scanned + i
			line := fr.buf[fr.r:end]
			fr.r = end + 1
			fr.started = time.Time{}
			if fr.r < fr.w {
				// The next frame's bytes came with this one's.
				fr.started = time.Now()
			}
			if n := len(line); n > 0 && line[n-1] == '\r' {
				line = line[:n-1]
			}
			if len(line) > limit {
				return nil, errFrameTooLarge
			}
			return line, nil
		}
		scanned = fr.w - fr.r
		if scanned > limit+1 {
			return nil, errFrameTooLarge
		}
		if fr.err != nil {
			if errors.Is(fr.err, io.EOF) && fr.w > fr.r {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, fr.err
		}
		if fr.w == len(fr.buf) {
			if err := fr.makeRoom(limit); err != nil {
				return nil, err
			}
		}
		if err := fr.setDeadline(); err != nil {
			return nil, err
		}
		n, err := c.nc.Read(fr.buf[fr.w:])
		if n > 0 && fr.started.IsZero() {
			fr.started = time.Now()
		}
		fr.w += n
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && c.ctx.Err() == nil {
				err = errFrameTimeout
			}
			fr.err = err
		}
	}
}

// makeRoom moves the unfinished frame to the front of the buffer, or grows
// the buffer when the frame fills it.
func (fr *frameReader) makeRoom(limit int) error {
	if fr.r > 0 {
		fr.w = copy(fr.buf, fr.buf[fr.r:fr.w])
		fr.r = 0
		return nil
	}
	size := minReadBuffer
	if len(fr.buf) > 0 {
		// Room for the longest frame, its CR and newline, and no more.
		size = min(2*len(fr.buf), limit+2)
	}
	c := fr.c
	if err := c.s.budget.reserve(c.ctx, c, int64(size-len(fr.buf)), 0, c.s.cfg.BudgetTimeout, c.budgetWait); err != nil {
		return err
	}
	nb := make([]byte, size)
	fr.w = copy(nb, fr.buf[fr.r:fr.w])
	fr.r = 0
	fr.buf = nb
	return nil
}

// shrink gives back a buffer grown for a long frame once what is left in
// it fits the small one.
func (fr *frameReader) shrink() {
	if len(fr.buf) <= shrinkReadBuffer || fr.w-fr.r > minReadBuffer {
		return
	}
	nb := make([]byte, minReadBuffer)
	fr.w = copy(nb, fr.buf[fr.r:fr.w])
	fr.r = 0
	fr.c.s.budget.charge(fr.c, -int64(len(fr.buf)-minReadBuffer), 0)
	fr.buf = nb
}

// setDeadline applies the frame timeout while a frame is unfinished and
// clears it between frames.
func (fr *frameReader) setDeadline() error {
	c := fr.c
	var d time.Time
	if fr.w > fr.r {
		d = fr.started.Add(c.s.cfg.FrameTimeout)
	}
	if !d.Equal(fr.deadline) {
		fr.deadline = d
		c.nc.SetReadDeadline(d)
	}
	// kill expires the read deadline after cancelling ctx: a deadline set
	// here after that must not hide it.
	if c.ctx.Err() != nil {
		return os.ErrDeadlineExceeded
	}
	return nil
}
