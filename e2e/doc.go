// Package e2e holds the end-to-end tests that run a real sidecar binary
// against the real local telemetry stack (collector, Jaeger, Prometheus on
// their loopback ports). They carry the build tag e2e and run with
// `make test-e2e`, which starts the stack first and stops it afterwards:
//
//	go test -tags e2e -count=1 -v ./e2e/
//
// Without the tag this package is empty, so `go test ./...` does not need
// the stack.
package e2e
