package main

import "github.com/urfave/cli/v2"

// extraCommands are the commands other parts of the project contribute
// from their own files (main_load.go, main_demo.go).
func (p *program) extraCommands() []*cli.Command {
	return nil
}
