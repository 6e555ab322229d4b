// Package testkit is the test support shared by the module's packages: one
// way to wait for a condition (Eventually), one fake clock for the bus
// (Clock), and one way to run a real sidecar on a temporary socket
// (StartSidecar). Keeping one copy of each means a fix to a flaky wait or to
// the sidecar's start-up reaches every test at once.
//
// It depends only on package bus (for bus.Clock and bus.Stats), so that the
// tests of every other package, including the socket server's own, can use
// it without an import cycle. Two kinds of test cannot: the
// package-internal tests of bus and of wal (which bus imports); they keep
// a small poll of their own. For the same reason an in-process server
// (bus and transport on a socket) is not here: transport's own tests
// import testkit, so testkit must not import transport.
package testkit
