//go:build !linux

package load

import (
	"context"
	"errors"
)

// ServeFloor needs epoll: the floor server is Linux only.
func ServeFloor(context.Context, string) error {
	return errors.New("floor server: needs Linux (epoll)")
}
