package protocol

import (
	"strings"
	"testing"
)

func TestQuote(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"short", "risk", `"risk"`},
		{"escaped", "a\"b\n", `"a\"b\n"`},
		{"exactly the cap", strings.Repeat("q", MaxEchoBytes), `"` + strings.Repeat("q", MaxEchoBytes) + `"`},
		{"one over the cap", strings.Repeat("q", MaxEchoBytes+1), `"` + strings.Repeat("q", MaxEchoBytes) + `"... (cut to 128 of 129 bytes)`},
		// "é" is two bytes; cutting at 128 would split the one at 127..128.
		{"cut at a character boundary", strings.Repeat("q", MaxEchoBytes-1) + "é" + strings.Repeat("q", 10),
			`"` + strings.Repeat("q", MaxEchoBytes-1) + `"... (cut to 128 of 139 bytes)`},
		{"megabyte", strings.Repeat("z", 1<<20), `"` + strings.Repeat("z", MaxEchoBytes) + `"... (cut to 128 of 1048576 bytes)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Quote(tt.in); got != tt.want {
				t.Errorf("Quote = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestIsBlank(t *testing.T) {
	tests := []struct {
		line string
		want bool
	}{
		{"", true},
		{" ", true},
		{" \t \r", true},
		{"{}", false},
		{"  x", false},
		{"\xef\xbb\xbf", false},
	}
	for _, tt := range tests {
		if got := IsBlank([]byte(tt.line)); got != tt.want {
			t.Errorf("IsBlank(%q) = %v, want %v", tt.line, got, tt.want)
		}
	}
}
