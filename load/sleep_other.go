//go:build !linux

package load

import (
	"context"
	"time"
)

// sleepTimers has no precise kernel timer to offer outside Linux: every
// Sleep uses a Go timer.
type sleepTimers struct{}

func newSleepTimers() *sleepTimers { return &sleepTimers{} }

func (*sleepTimers) sleep(context.Context, time.Duration) (bool, error) { return false, nil }

func (*sleepTimers) close() error { return nil }
