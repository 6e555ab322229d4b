package testkit

import (
	"strings"
	"testing"
)

func TestParseMemory(t *testing.T) {
	tests := []struct {
		name    string
		status  string
		want    Memory
		wantErr string
	}{
		{
			name:   "running",
			status: "Name:\teventbus-sidec\nVmPeak:\t 1300000 kB\nVmHWM:\t   18440 kB\nVmRSS:\t   18436 kB\nRssAnon:\t    2520 kB\nRssFile:\t   15916 kB\nRssShmem:\t       0 kB\nThreads:\t8\n",
			want:   Memory{RSS: 18436 << 10, Anon: 2520 << 10, File: 15916 << 10},
		},
		{
			name:    "exited",
			status:  "Name:\teventbus-sidec\nState:\tZ (zombie)\nThreads:\t1\n",
			wantErr: "found 0 of",
		},
		{
			name:    "not a number",
			status:  "VmRSS:\t   lots kB\nRssAnon:\t1 kB\nRssFile:\t1 kB\n",
			wantErr: `VmRSS: "lots kB"`,
		},
		{
			name:    "another unit",
			status:  "VmRSS:\t   18 MB\nRssAnon:\t1 kB\nRssFile:\t1 kB\n",
			wantErr: `VmRSS: "18 MB"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMemory(strings.NewReader(tt.status))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseMemory = %+v, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseMemory = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}
