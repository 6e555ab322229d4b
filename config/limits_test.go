package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestBufferAndPeerSettings: max_buffered_bytes, frame_timeout and the
// allowed uid and gid lists come from the file (lists in YAML list or
// comma form), the environment and flags, in that rising precedence.
func TestBufferAndPeerSettings(t *testing.T) {
	file := writeFile(t, "max_buffered_bytes: 67108864\nframe_timeout: 3s\nallowed_uids: [1000, 1001]\nallowed_gids: \"50\"\n")
	c, err := Load(Sources{File: file})
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxBufferedBytes != 64<<20 || c.FrameTimeout != 3*time.Second ||
		!reflect.DeepEqual(c.AllowedUIDs, []uint32{1000, 1001}) || !reflect.DeepEqual(c.AllowedGIDs, []uint32{50}) {
		t.Fatalf("from the file: %d %s %v %v", c.MaxBufferedBytes, c.FrameTimeout, c.AllowedUIDs, c.AllowedGIDs)
	}
	c, err = Load(Sources{
		File:  file,
		Env:   envOf(map[string]string{"EVENTBUS_MAX_BUFFERED_BYTES": "33554432", "EVENTBUS_ALLOWED_UIDS": "7, 8,7", "EVENTBUS_FRAME_TIMEOUT": "1s"}),
		Flags: map[string]string{"allowed-gids": "", "frame-timeout": "2s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxBufferedBytes != 32<<20 || c.FrameTimeout != 2*time.Second ||
		!reflect.DeepEqual(c.AllowedUIDs, []uint32{7, 8}) || c.AllowedGIDs != nil {
		t.Fatalf("env and flags over the file: %d %s %v %v", c.MaxBufferedBytes, c.FrameTimeout, c.AllowedUIDs, c.AllowedGIDs)
	}

	custom := Default()
	custom.AllowedUIDs, custom.AllowedGIDs = []uint32{0, 1000}, []uint32{1000}
	custom.MaxBufferedBytes, custom.FrameTimeout = 16<<20, time.Minute
	data, err := custom.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "allowed_uids:\n  - 0\n  - 1000\n") {
		t.Errorf("allowed_uids is not rendered as a YAML list:\n%s", data)
	}
	back, err := Parse(data, "rendered")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, custom) {
		t.Errorf("round trip changed the config:\n got %+v\nwant %+v", back, custom)
	}
	clone := custom.Clone()
	clone.AllowedUIDs[0] = 5
	if custom.AllowedUIDs[0] != 0 {
		t.Error("Clone shares AllowedUIDs")
	}
}

func TestBufferAndPeerSettingsInvalid(t *testing.T) {
	tests := []invalidCase{
		{name: "budget not a number", flags: map[string]string{"max-buffered-bytes": "128MiB"}, want: []string{`max_buffered_bytes "128MiB"`, "flag --max-buffered-bytes", "whole number of bytes"}},
		{name: "budget below 8 frames", env: map[string]string{"EVENTBUS_MAX_BUFFERED_BYTES": "1048576"}, want: []string{`max_buffered_bytes "1048576"`, "env EVENTBUS_MAX_BUFFERED_BYTES", "allowed: 8388608 (8 × max_frame_bytes) to"}},
		{name: "budget too large", yaml: "max_buffered_bytes: 1099511627776\n", want: []string{`max_buffered_bytes "1099511627776"`, "line 1", "to 68719476736"}},
		{name: "frame timeout zero", flags: map[string]string{"frame-timeout": "0s"}, want: []string{`frame_timeout "0s"`, "must be > 0"}},
		{name: "frame timeout not a duration", env: map[string]string{"EVENTBUS_FRAME_TIMEOUT": "10"}, want: []string{`frame_timeout "10"`, "500ms, 1s"}},
		{name: "uid not a number", flags: map[string]string{"allowed-uids": "1000,root"}, want: []string{`allowed_uids "1000,root"`, `"root" is not a user id`, "0 to 4294967294"}},
		{name: "gid negative", env: map[string]string{"EVENTBUS_ALLOWED_GIDS": "-1"}, want: []string{`allowed_gids "-1"`, `"-1" is not a group id`}},
		{name: "uid list of lists", yaml: "allowed_uids: [[1]]\n", want: []string{"allowed_uids", "single value"}},
		{name: "uid mapping", yaml: "allowed_uids: {a: 1}\n", want: []string{"allowed_uids", "single value"}},
	}
	checkInvalid(t, tests)
}

// TestMemoryBound: the bound follows the budget, the connection cap and
// the number of queues a file sets.
func TestMemoryBound(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name string
		yaml string
		want int64
	}{
		{name: "defaults", want: 253 * mib},
		{name: "fewer connections", yaml: "max_connections: 256\n", want: 199 * mib},
		{name: "smaller budget", yaml: "max_buffered_bytes: 16777216\n", want: 141 * mib},
		{name: "a fourth queue", yaml: "queues:\n  - {name: risk, capacity: 10, policy: fail, timeout: 1s}\n", want: 264 * mib},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var src Sources
			if tt.yaml != "" {
				src.File = writeFile(t, tt.yaml)
			}
			c, err := Load(src)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.MemoryBound(); got != tt.want {
				t.Errorf("MemoryBound() = %d (%.1f MiB), want %d MiB", got, float64(got)/mib, tt.want/mib)
			}
		})
	}
}
