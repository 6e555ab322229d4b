// Command eventbus-sidecar runs the event bus sidecar (serve) and talks to a
// running one from the shell (publish, consume, stats).
//
// main only wires packages together: config loads the settings, telemetry
// builds the OpenTelemetry providers, bus holds the queues, transport serves
// the Unix socket, admin serves /metrics and the probes, and client is what
// the shell commands use to speak the socket protocol.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/urfave/cli/v2"

	"github.com/eventbus-sidecar/eventbus-sidecar/config"
)

// version is stamped at link time (make build passes -X main.version=...);
// it is the one package-level variable, set by the linker and never written.
var version = "dev"

// Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

func main() {
	p := &program{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, env: os.LookupEnv,
		// The process is the sidecar's own: serve sets the Go runtime's
		// soft memory limit.
		setMemoryLimit: debug.SetMemoryLimit}
	os.Exit(p.run(context.Background(), os.Args))
}

// env reads an environment variable; tests inject their own.
type env func(string) (string, bool)

// program holds what the commands share: the standard streams and the
// environment, so that a test can run the whole program in-process.
type program struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	env            env
	// setMemoryLimit is debug.SetMemoryLimit when the program owns its
	// process; nil leaves the process-wide limit alone, for a serve that
	// runs inside a test binary beside other tests.
	setMemoryLimit func(int64) int64
	// cgroupMemoryMax is the container's memory limit file ("" means
	// transport.CgroupMemoryMax).
	cgroupMemoryMax string
}

// usageError marks errors that deserve exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// run executes the command line and returns the exit code, without
// owning the process: serve leaves the Go runtime's memory limit alone.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, lookup env) int {
	p := &program{stdin: stdin, stdout: stdout, stderr: stderr, env: lookup}
	return p.run(ctx, args)
}

func (p *program) run(ctx context.Context, args []string) int {
	err := p.app().RunContext(ctx, args)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(p.stderr, "eventbus-sidecar: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) || errors.Is(err, config.ErrInvalid) {
		return exitUsage
	}
	return exitFailed
}

// app builds the command tree. It never calls os.Exit: run maps errors to
// exit codes, so tests can drive every command in-process.
func (p *program) app() *cli.App {
	return &cli.App{
		Name:      "eventbus-sidecar",
		Usage:     "bounded event queues for a trading app, over a Unix socket, with OpenTelemetry",
		Version:   version,
		Reader:    p.stdin,
		Writer:    p.stdout,
		ErrWriter: p.stderr,
		// Each command is built in its own file: serve and config in
		// main_serve.go, publish, consume and stats in main_client.go, load
		// in main_load.go, demo in main_demo.go, wal in main_wal.go.
		Commands: []*cli.Command{
			p.serveCommand(),
			p.configCommand(),
			p.publishCommand(),
			p.consumeCommand(),
			p.statsCommand(),
			p.reloadCommand(),
			p.walCommand(),
			p.versionCommand(),
			loadCommand(),
			soakCommand(),
			demoCommand(),
		},
		// The default handler calls os.Exit; run owns the exit code instead.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		HideVersion:          true,
		EnableBashCompletion: false,
	}
}

func (p *program) versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version",
		Action: func(c *cli.Context) error {
			_, err := fmt.Fprintf(p.stdout, "eventbus-sidecar %s\n", version)
			return err
		},
	}
}
