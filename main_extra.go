package main

import "github.com/urfave/cli/v2"

// extraCommands are the commands other parts of the project contribute
// from their own files: load (main_load.go, the load tool) and demo
// (main_demo.go, the simulated trading app).
func (p *program) extraCommands() []*cli.Command {
	return []*cli.Command{loadCommand(), demoCommand()}
}
