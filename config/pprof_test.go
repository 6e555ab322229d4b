package config

import (
	"os"
	"path/filepath"
	"testing"
)

func TestAdminPprofSources(t *testing.T) {
	file := filepath.Join(t.TempDir(), "eventbus.yaml")
	if err := os.WriteFile(file, []byte("admin_pprof: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	tests := []struct {
		name string
		src  Sources
		want bool
	}{
		{"off by default", Sources{}, false},
		{"file", Sources{File: file}, true},
		{"env", Sources{Env: env(map[string]string{"EVENTBUS_ADMIN_PPROF": "true"})}, true},
		{"flag", Sources{Flags: map[string]string{"admin-pprof": "true"}}, true},
		{"flag over file", Sources{File: file, Flags: map[string]string{"admin-pprof": "false"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(tt.src)
			if err != nil {
				t.Fatal(err)
			}
			if c.AdminPprof != tt.want {
				t.Errorf("AdminPprof = %v, want %v", c.AdminPprof, tt.want)
			}
		})
	}
	if _, err := Load(Sources{Flags: map[string]string{"admin-pprof": "maybe"}}); err == nil {
		t.Error(`admin-pprof "maybe" was accepted`)
	}
}
