package protocol

import (
	"errors"
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// This file is a small, allocation-free JSON scanner for the protocol's
// frames. encoding/json reflects and allocates on every frame, which costs
// more than the bus itself at the target rate; the frames here are flat
// objects whose only nested value (payload) is passed through untouched, so
// validating the grammar and slicing out each top-level value is enough.

// maxDepth bounds nesting inside a frame, as encoding/json does.
const maxDepth = 10000

var errSyntaxEnd = errors.New("unexpected end of JSON")

type syntaxError struct {
	msg string
	off int
}

func (e *syntaxError) Error() string {
	return fmt.Sprintf("malformed JSON at byte %d: %s", e.off, e.msg)
}

func syntaxErr(off int, format string, args ...any) error {
	return &syntaxError{msg: fmt.Sprintf(format, args...), off: off}
}

// plainStringByte reports whether c needs no attention inside a string:
// the common case, checked first to keep the scan loop short.
func plainStringByte(c byte) bool { return c >= 0x20 && c != '"' && c != '\\' }

func isWS(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipWS(b []byte, i int) int {
	for i < len(b) && isWS(b[i]) {
		i++
	}
	return i
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

// scanString validates the string starting at b[i] (a '"') and returns the
// index just past its closing quote and whether it holds escapes.
func scanString(b []byte, i int) (int, bool, error) {
	start := i
	i++
	esc := false
	for i < len(b) {
		c := b[i]
		if plainStringByte(c) {
			i++
			continue
		}
		switch {
		case c == '"':
			return i + 1, esc, nil
		case c == '\\':
			esc = true
			if i+1 >= len(b) {
				return 0, false, syntaxErr(i, "unterminated string starting at byte %d", start)
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					return 0, false, syntaxErr(i, `invalid \u escape in string`)
				}
				i += 6
			default:
				return 0, false, syntaxErr(i, "invalid escape %q in string", b[i:i+2])
			}
		case c < 0x20:
			return 0, false, syntaxErr(i, "control character 0x%02x in string", c)
		default:
			i++
		}
	}
	return 0, false, syntaxErr(start, "unterminated string")
}

// scanNumber validates the number starting at b[i] and returns the index
// past it.
func scanNumber(b []byte, i int) (int, error) {
	start := i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	default:
		return 0, syntaxErr(start, "invalid number")
	}
	if i < len(b) && b[i] == '.' {
		i++
		d := i
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
		if i == d {
			return 0, syntaxErr(start, "invalid number: no digits after the decimal point")
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		d := i
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
		if i == d {
			return 0, syntaxErr(start, "invalid number: no digits in the exponent")
		}
	}
	return i, nil
}

func scanLiteral(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, syntaxErr(i, "invalid literal, expected %s", lit)
	}
	return i + len(lit), nil
}

// scanValue validates the JSON value starting at or after b[i] (leading
// whitespace allowed) and returns the index of its first byte and the index
// just past it. Nesting is tracked on a small explicit stack, so hostile
// input cannot grow the goroutine stack.
func scanValue(b []byte, i int) (start, end int, err error) {
	var stackArr [32]byte
	stack := stackArr[:0]
	i = skipWS(b, i)
	start = i
	for {
		// A value starts at b[i] (after whitespace).
		i = skipWS(b, i)
		if i >= len(b) {
			return 0, 0, syntaxErr(i, "%v", errSyntaxEnd)
		}
		switch c := b[i]; {
		case c == '{' || c == '[':
			if len(stack) >= maxDepth {
				return 0, 0, syntaxErr(i, "nested too deeply (more than %d levels)", maxDepth)
			}
			i = skipWS(b, i+1)
			if i >= len(b) {
				return 0, 0, syntaxErr(i, "%v", errSyntaxEnd)
			}
			if c == '{' {
				if b[i] == '}' {
					i++
					goto after
				}
				if i, err = scanKey(b, i); err != nil {
					return 0, 0, err
				}
			} else if b[i] == ']' {
				i++
				goto after
			}
			stack = append(stack, c)
			continue
		case c == '"':
			if i, _, err = scanString(b, i); err != nil {
				return 0, 0, err
			}
		case c == 't':
			if i, err = scanLiteral(b, i, "true"); err != nil {
				return 0, 0, err
			}
		case c == 'f':
			if i, err = scanLiteral(b, i, "false"); err != nil {
				return 0, 0, err
			}
		case c == 'n':
			if i, err = scanLiteral(b, i, "null"); err != nil {
				return 0, 0, err
			}
		case c == '-' || ('0' <= c && c <= '9'):
			if i, err = scanNumber(b, i); err != nil {
				return 0, 0, err
			}
		default:
			return 0, 0, syntaxErr(i, "invalid character %q looking for a value", c)
		}
	after:
		// A value ended just before b[i]; close containers as needed.
		for {
			if len(stack) == 0 {
				return start, i, nil
			}
			i = skipWS(b, i)
			if i >= len(b) {
				return 0, 0, syntaxErr(i, "%v", errSyntaxEnd)
			}
			top := stack[len(stack)-1]
			if b[i] == ',' {
				i = skipWS(b, i+1)
				if top == '{' {
					if i, err = scanKey(b, i); err != nil {
						return 0, 0, err
					}
				}
				break
			}
			if (top == '{' && b[i] == '}') || (top == '[' && b[i] == ']') {
				stack = stack[:len(stack)-1]
				i++
				continue
			}
			return 0, 0, syntaxErr(i, "invalid character %q after a value, expected ',' or a closing bracket", b[i])
		}
	}
}

// scanKey validates `"key" :` at b[i] and returns the index after the colon.
func scanKey(b []byte, i int) (int, error) {
	if i >= len(b) || b[i] != '"' {
		if i >= len(b) {
			return 0, syntaxErr(i, "%v", errSyntaxEnd)
		}
		return 0, syntaxErr(i, "invalid character %q looking for an object key", b[i])
	}
	i, _, err := scanString(b, i)
	if err != nil {
		return 0, err
	}
	i = skipWS(b, i)
	if i >= len(b) || b[i] != ':' {
		return 0, syntaxErr(i, "expected ':' after an object key")
	}
	return i + 1, nil
}

// fieldIter walks the members of a top-level JSON object, validating the
// whole frame as it goes.
type fieldIter struct {
	b      []byte
	i      int
	n      int
	key    []byte // raw key without quotes; may contain escapes
	keyEsc bool
	val    []byte // raw value
	valEsc bool   // val is a string with escapes
	err    error
	done   bool
}

func newFieldIter(b []byte) fieldIter {
	it := fieldIter{b: b}
	i := skipWS(b, 0)
	if i >= len(b) {
		it.err = errors.New("empty frame: expected a JSON object")
		return it
	}
	if b[i] != '{' {
		// Validate anyway so that the message is precise.
		if _, end, err := scanValue(b, i); err != nil {
			it.err = err
		} else if j := skipWS(b, end); j < len(b) {
			it.err = syntaxErr(j, "invalid character %q after the top-level value", b[j])
		} else {
			it.err = fmt.Errorf("frame must be a JSON object, got %s", kindName(b[i]))
		}
		return it
	}
	it.i = i + 1
	return it
}

// next advances to the next member; it returns false at the end of the
// object or on error (check it.err).
func (it *fieldIter) next() bool {
	if it.err != nil || it.done {
		return false
	}
	b := it.b
	i := skipWS(b, it.i)
	if i >= len(b) {
		it.err = syntaxErr(i, "%v", errSyntaxEnd)
		return false
	}
	if it.n == 0 && b[i] == '}' {
		return it.finish(i + 1)
	}
	if it.n > 0 {
		switch b[i] {
		case '}':
			return it.finish(i + 1)
		case ',':
			i = skipWS(b, i+1)
		default:
			it.err = syntaxErr(i, "invalid character %q after an object member, expected ',' or '}'", b[i])
			return false
		}
	}
	if i >= len(b) || b[i] != '"' {
		if i >= len(b) {
			it.err = syntaxErr(i, "%v", errSyntaxEnd)
		} else {
			it.err = syntaxErr(i, "invalid character %q looking for an object key", b[i])
		}
		return false
	}
	kEnd, esc, err := scanString(b, i)
	if err != nil {
		it.err = err
		return false
	}
	it.key, it.keyEsc = b[i+1:kEnd-1], esc
	i = skipWS(b, kEnd)
	if i >= len(b) || b[i] != ':' {
		it.err = syntaxErr(i, "expected ':' after object key")
		return false
	}
	i = skipWS(b, i+1)
	var vStart, vEnd int
	it.valEsc = false
	if i < len(b) && b[i] == '"' {
		// Strings are most values; scanning them here keeps the escape
		// flag, which spares decoding a second pass.
		vStart = i
		vEnd, it.valEsc, err = scanString(b, i)
	} else {
		vStart, vEnd, err = scanValue(b, i)
	}
	if err != nil {
		it.err = err
		return false
	}
	it.val = b[vStart:vEnd]
	it.i = vEnd
	it.n++
	return true
}

func (it *fieldIter) finish(i int) bool {
	it.done = true
	if j := skipWS(it.b, i); j < len(it.b) {
		it.err = syntaxErr(j, "invalid character %q after the top-level object", it.b[j])
	}
	return false
}

// keyIs compares the current key with name, decoding escapes if present.
func (it *fieldIter) keyIs(name string) bool {
	if !it.keyEsc {
		return string(it.key) == name
	}
	return unescape(it.key) == name
}

func kindName(c byte) string {
	switch {
	case c == '"':
		return "string"
	case c == '{':
		return "object"
	case c == '[':
		return "array"
	case c == 't' || c == 'f':
		return "boolean"
	case c == 'n':
		return "null"
	default:
		return "number"
	}
}

// unescape decodes the body of a JSON string (without quotes) that has
// already been validated by scanString.
func unescape(s []byte) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); {
		c := s[i]
		if c != '\\' {
			out = append(out, c)
			i++
			continue
		}
		switch s[i+1] {
		case '"', '\\', '/':
			out = append(out, s[i+1])
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r := hex4(s[i+2 : i+6])
			i += 6
			if utf16.IsSurrogate(r) {
				if i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
					if r2 := utf16.DecodeRune(r, hex4(s[i+2:i+6])); r2 != utf8.RuneError {
						out = utf8.AppendRune(out, r2)
						i += 6
						continue
					}
				}
				r = utf8.RuneError
			}
			out = utf8.AppendRune(out, r)
			continue
		}
		i += 2
	}
	return string(out)
}

func hex4(b []byte) rune {
	var r rune
	for _, c := range b {
		r <<= 4
		switch {
		case '0' <= c && c <= '9':
			r |= rune(c - '0')
		case 'a' <= c && c <= 'f':
			r |= rune(c - 'a' + 10)
		default:
			r |= rune(c - 'A' + 10)
		}
	}
	return r
}

// parseInt parses a raw JSON value that must be an integer fitting int64.
func parseInt(field string, v []byte) (int64, error) {
	if err := checkIntKind(field, v); err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("field %q: %s is out of range for a 64-bit signed integer", field, clip(v))
	}
	return n, nil
}

// parseUint parses a raw JSON value that must be a non-negative integer
// fitting uint64.
func parseUint(field string, v []byte) (uint64, error) {
	if err := checkIntKind(field, v); err != nil {
		return 0, err
	}
	if v[0] == '-' {
		return 0, fmt.Errorf("field %q must be a non-negative integer, got %s", field, clip(v))
	}
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("field %q: %s is out of range for a 64-bit unsigned integer", field, clip(v))
	}
	return n, nil
}

func checkIntKind(field string, v []byte) error {
	if k := kindName(v[0]); k != "number" {
		return fmt.Errorf("field %q must be an integer, got %s", field, k)
	}
	for _, c := range v {
		if c == '.' || c == 'e' || c == 'E' {
			return fmt.Errorf("field %q must be an integer, got %s", field, clip(v))
		}
	}
	return nil
}

// appendString appends s as a JSON string. Invalid UTF-8 is replaced by
// U+FFFD so that every frame the sidecar writes is valid UTF-8.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				const hexDigits = "0123456789abcdef"
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// str decodes the current value, which must be a string.
func (it *fieldIter) str(field string) (string, error) {
	v := it.val
	if v[0] != '"' {
		return "", fmt.Errorf("field %q must be a string, got %s", field, kindName(v[0]))
	}
	if it.valEsc {
		return unescape(v[1 : len(v)-1]), nil
	}
	return string(v[1 : len(v)-1]), nil
}

// strInterned is str through an interner for escape-free strings.
func (it *fieldIter) strInterned(field string, in interner) (string, error) {
	v := it.val
	if in == nil || v[0] != '"' || it.valEsc {
		return it.str(field)
	}
	return in.intern(v[1 : len(v)-1]), nil
}
