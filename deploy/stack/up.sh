#!/usr/bin/env bash
# Starts the local telemetry stack on 127.0.0.1: Jaeger (OTLP gRPC 14317,
# API 16686), the collector (OTLP 4317/4318, Prometheus exporter 8889, own
# metrics 8888) with otel-collector.yaml, and Prometheus (9090) with
# deploy/stack/prometheus.yml. Idempotent: a component this script already
# started and that still runs is left alone. Returns once every endpoint
# answers. Logs and pid files: .state/stack/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mkdir -p "${STATE}"

[[ -x "${COLLECTOR_BIN}" ]] || die "no collector at ${COLLECTOR_BIN}: run make stack-build"
[[ -x "${JAEGER_BIN}" ]] || die "no jaeger at ${JAEGER_BIN}: run make stack-build"
[[ -x "${PROMETHEUS_BIN}" ]] || die "no prometheus at ${PROMETHEUS_BIN}: run make stack-build"

# start NAME BINARY PORTS ARGS...: PORTS is a comma-separated list that
# must be free, so we never report someone else's server as ours.
start() {
	local name="$1" bin="$2" ports="$3" pid p
	shift 3
	if pid="$(pid_alive "${name}")"; then
		log "${name} already running (pid ${pid})"
		return 0
	fi
	for p in ${ports//,/ }; do
		port_busy "${p}" && die "${p} is in use by a process this stack did not start (needed by ${name})"
	done
	# setsid: the component outlives this script and a Ctrl-C in the
	# calling terminal; down.sh stops it by pid.
	setsid "${bin}" "$@" >"${STATE}/${name}.log" 2>&1 </dev/null &
	echo "$! ${bin}" >"${STATE}/${name}.pid"
	log "${name} started (pid $!, log ${STATE}/${name}.log)"
}

start jaeger "${JAEGER_BIN}" 127.0.0.1:14317,127.0.0.1:16686,127.0.0.1:16685 \
	--config "file:${ROOT}/deploy/jaeger/config.yaml"
start collector "${COLLECTOR_BIN}" 127.0.0.1:4317,127.0.0.1:4318,127.0.0.1:8889,127.0.0.1:8888 \
	--config "file:${ROOT}/otel-collector.yaml"
mkdir -p "${STATE}/prometheus-data"
start prometheus "${PROMETHEUS_BIN}" 127.0.0.1:9090 \
	--config.file="${ROOT}/deploy/stack/prometheus.yml" \
	--storage.tsdb.path="${STATE}/prometheus-data" \
	--storage.tsdb.retention.time=1d \
	--web.listen-address=127.0.0.1:9090 \
	--web.enable-lifecycle

wait_http jaeger http://127.0.0.1:16686/api/services 60
wait_http collector http://127.0.0.1:8888/metrics 60
wait_http prometheus http://127.0.0.1:9090/-/ready 60

cat <<MSG
stack: up
  collector OTLP   127.0.0.1:4317 (gRPC), 127.0.0.1:4318 (HTTP)
  Jaeger API       http://127.0.0.1:16686/api/services
  Prometheus       http://127.0.0.1:9090
  logs, pids       ${STATE}
MSG
