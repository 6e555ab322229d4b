// Package kubernetes holds the tests of the Kubernetes manifests in this
// folder: every manifest decodes strictly (unknown fields are errors) into
// its official API type, the cross-references between them hold (volumes,
// ConfigMaps, ports, probe paths, Service selectors), the sidecar's
// ConfigMap loads through the sidecar's own config package, and the
// generated manifests (prometheusrule.yaml from deploy/prometheus/alerts.yml,
// collector-configmap.yaml from otel-collector.yaml) are current.
package kubernetes
