# Alert rules, dashboard and Kubernetes manifests.
#   make test-rules    promtool check + unit tests of the alert rules, then the
#                      Go tests in deploy/prometheus (every alert has firing and
#                      silent cases and a runbook section; every metric name,
#                      label and matched value in the rules and the dashboard is
#                      exported by a live sidecar; a real Prometheus scraping it
#                      evaluates every rule and dashboard query)
#   make test-k8s      strict decoding and cross-reference tests of deploy/kubernetes
#   make k8s-generate  regenerate deploy/kubernetes/prometheusrule.yaml (from
#                      deploy/prometheus/alerts.yml) and collector-configmap.yaml
#                      (from otel-collector.yaml); test-k8s fails until you do
# test-k8s uses -mod=mod: the module imports the root module's config and admin
# packages, whose new dependencies must not break it before go.sum catches up.
# promtool comes from Debian's prometheus package: deploy/prometheus/install.sh
# (idempotent; test-rules runs it, so it only installs where promtool is missing).
# test-k8s needs kubectl (its built-in kustomize renders kustomization.yaml).
PROMTOOL ?= promtool

.PHONY: test-rules test-k8s k8s-generate

test-rules:
	bash deploy/prometheus/install.sh
	$(PROMTOOL) check rules deploy/prometheus/alerts.yml
	cd deploy/prometheus && $(PROMTOOL) test rules alerts_test.yml
	cd deploy/prometheus && $(GO) test -race -count=1 ./...

test-k8s:
	cd deploy/kubernetes && $(GO) test -mod=mod -race -count=1 ./...

k8s-generate:
	cd deploy/kubernetes && EVENTBUS_UPDATE_GENERATED=1 $(GO) test -mod=mod -count=1 -run TestGeneratedManifestsAreCurrent ./...

TEST_TARGETS += test-rules test-k8s
