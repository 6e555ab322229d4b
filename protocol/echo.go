package protocol

import (
	"bytes"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// MaxEchoBytes bounds how much of a client-supplied value an error message
// repeats: the value may be a megabyte of garbage, and the reply and any
// log line that carries it must stay small.
const MaxEchoBytes = 128

// Quote returns s quoted like %q, with only its first MaxEchoBytes bytes
// (cut at a character boundary) and a marker saying how long it was when
// it is longer.
func Quote(s string) string {
	if len(s) <= MaxEchoBytes {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:cutAt(s)]) + cutMarker(len(s))
}

// clip is Quote without the quotes, for raw values such as numbers.
func clip(v []byte) string {
	if len(v) <= MaxEchoBytes {
		return string(v)
	}
	return string(v[:cutAt(string(v))]) + cutMarker(len(v))
}

func cutAt(s string) int {
	cut := MaxEchoBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return cut
}

func cutMarker(n int) string {
	return fmt.Sprintf("... (cut to %d of %d bytes)", MaxEchoBytes, n)
}

// utf8BOM is the byte-order mark some editors and Windows tools put at the
// start of UTF-8 text. JSON forbids it, and it is invisible in most
// terminals, so it gets a message of its own.
var utf8BOM = []byte{0xef, 0xbb, 0xbf}

// IsBlank reports whether line holds only JSON whitespace. The server
// skips such lines instead of answering them, as docs/protocol.md says.
func IsBlank(line []byte) bool {
	return len(bytes.TrimLeft(line, " \t\r\n")) == 0
}
