#!/usr/bin/env bash
# Installs what the local stack needs, each step only when missing or
# stale: Prometheus and promtool from Debian's packages, the collector
# (deploy/collector/build.sh) and Jaeger (deploy/jaeger/build.sh) from the
# Go module proxy. Safe to run again; CI runs it on a fresh machine.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
	log "installing prometheus and promtool (Debian package prometheus)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends prometheus >/dev/null
	# We run Prometheus ourselves with our config (up.sh); the package's
	# service would hold :9090 with /etc/prometheus/prometheus.yml.
	if command -v service >/dev/null; then
		service prometheus stop >/dev/null 2>&1 || true
	fi
fi
command -v promtool >/dev/null || die "promtool missing after installing the prometheus package"
log "prometheus: $(prometheus --version 2>&1 | head -n 1)"

# One build at a time: the machines have 2 cores.
"${ROOT}/deploy/collector/build.sh"
"${ROOT}/deploy/jaeger/build.sh"
