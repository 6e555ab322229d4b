package transport

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSoftMemoryLimit(t *testing.T) {
	const budget = 128 << 20
	tests := []struct {
		name    string
		content *string // nil: no file
		want    int64
		wantErr string
	}{
		{name: "no cgroup file", want: budget + RuntimeOverhead},
		{name: "no cgroup limit", content: ptr("max\n"), want: budget + RuntimeOverhead},
		{name: "256 MiB container", content: ptr("268435456\n"), want: 268435456 / 10 * 9},
		{name: "garbage", content: ptr("lots\n"), want: budget + RuntimeOverhead, wantErr: `"lots" is not a number of bytes`},
		{name: "zero", content: ptr("0"), want: budget + RuntimeOverhead, wantErr: `"0" is not a number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "memory.max")
			if tt.content != nil {
				if err := os.WriteFile(path, []byte(*tt.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := SoftMemoryLimit(budget, path)
			if got != tt.want {
				t.Errorf("SoftMemoryLimit = %d, want %d", got, tt.want)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected error %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func ptr(s string) *string { return &s }
