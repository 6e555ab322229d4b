// Package prometheus holds the tests that keep the shipped alert rules
// (alerts.yml), their promtool tests, the runbook and the Grafana dashboard
// consistent with each other and with the metrics a running sidecar really
// exports. The artifacts themselves are YAML and JSON; this package has no
// code of its own beyond the tests.
package prometheus
