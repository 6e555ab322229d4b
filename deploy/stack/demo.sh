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
# SIDECAR_BIN: the sidecar binary (make build's output by default).
BIN="${SIDECAR_BIN:-${ROOT}/bin/eventbus-sidecar}"
SOCK="${STATE}/eventbus.sock"
ADMIN="${DEMO_ADMIN_ADDR:-127.0.0.1:9464}"
[[ -x "${BIN}" ]] || die "no ${BIN}: run make build"
pid_alive collector >/dev/null || die "the stack is not running: run make stack-up"

if pid="$(pid_alive sidecar)"; then
	die "a demo sidecar is still running (pid ${pid}); make stack-down stops it"
fi
port_busy "${ADMIN}" && die "${ADMIN} is in use; set DEMO_ADMIN_ADDR to a free 127.0.0.1 port"
rm -f "${SOCK}"

# Telemetry to the local collector (http:// = plaintext gRPC; a bare
# HOST:PORT means TLS, per the OTLP spec); metrics every second so Prometheus
# (1s scrapes) follows the demo closely.
setsid "${BIN}" serve --socket "${SOCK}" --admin-addr "${ADMIN}" \
	--otlp-endpoint http://127.0.0.1:4317 --service-name eventbus-sidecar --metric-interval 1s \
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
# An order whose publish had to wait for room shows the whole story
# (publish -> wait -> deliver); fall back to the first executed order.
waited="$(curl -fsS 'http://127.0.0.1:16686/api/traces?service=eventbus-sidecar&operation=wait%20order&limit=50' 2>/dev/null |
	jq -r '[.data[] | select([.spans[].operationName] | index("deliver order"))][0].traceID // empty' || true)"
trace_id="${waited:-$(grep -o 'trace_id=[0-9a-f]\{32\}' "${STATE}/demo.log" | head -n 1 | cut -d= -f2 || true)}"
# This sidecar's series only: the stack may have served others before.
instance="$(grep -o 'instance_id=[^ ]*' "${STATE}/sidecar.log" | head -n 1 | cut -d= -f2 || true)"
drops="$(curl -fsS http://127.0.0.1:9090/api/v1/query --data-urlencode "query=sum(eventbus_events_dropped_total{queue=\"data\",instance=\"${instance}\"})" 2>/dev/null |
	jq -r '.data.result[0].value[1] // "0"' || echo '?')"
cat <<MSG

=== Where to look ===
Prometheus: http://127.0.0.1:9090/graph  (this run's data drops: ${drops}; instance="${instance}")
  drops per second:      rate(eventbus_events_dropped_total[1m])
  order depth/capacity:  eventbus_queue_depth{queue="order"} / eventbus_queue_capacity{queue="order"}
  publishers waiting:    eventbus_publishers_waiting
  API: curl -s http://127.0.0.1:9090/api/v1/query --data-urlencode 'query=eventbus_events_dropped_total' | jq '.data.result[] | {queue: .metric.queue, reason: .metric.reason, value: .value[1]}'

Jaeger (HTTP API; this Jaeger, built from Go modules, has no web UI: the
compose stack's official image has it):
  services:          curl -s http://127.0.0.1:16686/api/services | jq
  orders that waited: curl -s 'http://127.0.0.1:16686/api/traces?service=eventbus-sidecar&operation=wait%20order&limit=5' | jq '.data[].traceID'
MSG
if [[ -n "${trace_id}" ]]; then
	cat <<MSG
  one order, from its candle to its execution:
    curl -s http://127.0.0.1:16686/api/traces/${trace_id} | jq '.data[0].spans | sort_by(.startTime)[] | {operationName, duration_us: .duration}'

That trace now:
MSG
	curl -fsS "http://127.0.0.1:16686/api/traces/${trace_id}" |
		jq -c '.data[0].spans | sort_by(.startTime)[] | {operationName, duration_us: .duration}' || true
fi
echo
echo "Stop the stack with: make stack-down"
