#!/usr/bin/env bash
# make demo: with the stack up (make stack-up), runs the sidecar with its
# telemetry going to the local collector, then the simulated trading app
# (`eventbus-sidecar demo`) for DURATION (default 60s), and prints where to
# look: the Prometheus queries and the Jaeger API calls that show an
# executed order's trace. The sidecar is stopped at the end; the stack
# keeps running for exploring (make stack-down stops it).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
duration="${1:-60s}"
BIN="${ROOT}/bin/eventbus-sidecar"
SOCK="${STATE}/eventbus.sock"
ADMIN="${DEMO_ADMIN_ADDR:-127.0.0.1:9464}"
[[ -x "${BIN}" ]] || die "no ${BIN}: run make build"
pid_alive collector >/dev/null || die "the stack is not running: run make stack-up"

if pid="$(pid_alive sidecar)"; then
	die "a demo sidecar is still running (pid ${pid}); make stack-down stops it"
fi
port_busy "${ADMIN}" && die "${ADMIN} is in use; set DEMO_ADMIN_ADDR to a free 127.0.0.1 port"
rm -f "${SOCK}"

# The sidecar's telemetry settings are the standard OTEL_* variables.
OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 \
OTEL_SERVICE_NAME=eventbus-sidecar \
OTEL_METRIC_EXPORT_INTERVAL=1000 \
	setsid "${BIN}" serve --socket "${SOCK}" --admin-addr "${ADMIN}" \
	>"${STATE}/sidecar.log" 2>&1 </dev/null &
echo "$! ${BIN}" >"${STATE}/sidecar.pid"
log "sidecar started (pid $!, log ${STATE}/sidecar.log)"
stop_sidecar() {
	local pid
	if pid="$(pid_alive sidecar)"; then
		kill -TERM "${pid}" 2>/dev/null || true
		for ((i = 0; i < 150; i++)); do running "${pid}" || break; sleep 0.1; done
		running "${pid}" && kill -KILL "${pid}" 2>/dev/null
	fi
	rm -f "${STATE}/sidecar.pid"
}
trap stop_sidecar EXIT
wait_http sidecar "http://${ADMIN}/readyz" 30

log "trading for ${duration} (log ${STATE}/demo.log)"
"${BIN}" demo --socket "${SOCK}" --duration "${duration}" 2>&1 | tee "${STATE}/demo.log"

# Give the last spans and metrics one export interval to land.
sleep 2
trace_id="$(grep -o 'trace_id=[0-9a-f]\{32\}' "${STATE}/demo.log" | head -n 1 | cut -d= -f2 || true)"
cat <<MSG

=== Where to look ===
Prometheus (graph UI): http://127.0.0.1:9090/graph
  drops per second:      rate(eventbus_events_dropped_total[1m])
  order depth/capacity:  eventbus_queue_depth{queue="order"} / eventbus_queue_capacity{queue="order"}
  publishers waiting:    eventbus_publishers_waiting
  API: curl -s 'http://127.0.0.1:9090/api/v1/query' --data-urlencode 'query=eventbus_events_dropped_total' | jq '.data.result[] | {queue: .metric.queue, reason: .metric.reason, value: .value[1]}'

Jaeger (HTTP API; this Jaeger, built from Go modules, has no web UI: use
the compose stack for the UI):
  services:       curl -s http://127.0.0.1:16686/api/services | jq
  order traces:   curl -s 'http://127.0.0.1:16686/api/traces?service=eventbus-sidecar&operation=publish%20order&limit=5' | jq '.data[].traceID'
MSG
if [[ -n "${trace_id}" ]]; then
	cat <<MSG
  one executed order, candle to execution (publish -> wait -> deliver):
    curl -s http://127.0.0.1:16686/api/traces/${trace_id} | jq '.data[0].spans | sort_by(.startTime)[] | {operationName, duration_us: .duration}'
MSG
	echo
	echo "That trace now:"
	curl -fsS "http://127.0.0.1:16686/api/traces/${trace_id}" |
		jq -c '.data[0].spans | sort_by(.startTime)[] | {operationName, duration_us: .duration}' || true
fi
echo
echo "Stop the stack with: make stack-down"
