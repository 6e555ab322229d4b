#!/usr/bin/env bash
# make stack-test: checks the whole local pipeline with real components.
#  1. otel-collector.yaml validates in the collector we build.
#  2. With the stack up, one span and one counter sent as OTLP/HTTP JSON to
#     the collector come out in Jaeger's API (same trace id, same span) and
#     in Prometheus (value, and job/instance kept from the resource, which
#     proves honor_labels and the exporter's label mapping).
#  3. Prometheus loaded the alert rules when deploy/prometheus/alerts.yml
#     exists.
#  4. down.sh never signals a process it did not start.
# Uses a running stack if there is one (and leaves it running), otherwise
# starts one and stops it at the end.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

passed=0
fail() { log "FAIL: $*"; echo "stack-test: ${passed} passed, 1 failed"; exit 1; }
ok() { log "ok: $*"; passed=$((passed + 1)); }

"${COLLECTOR_BIN}" validate --config "file:${ROOT}/otel-collector.yaml" ||
	fail "otel-collector.yaml does not validate"
ok "otel-collector.yaml validates"

# stack-down stops only what stack-up started: a pid file whose process is
# not running the recorded binary (pid reused, or someone else's process)
# is dropped without a signal. Checked in a scratch state folder with a
# process of our own standing in for "someone else's".
scratch="$(mktemp -d)"
sleep 300 &
other=$!
echo "${other} ${COLLECTOR_BIN}" >"${scratch}/collector.pid"
STACK_STATE="${scratch}" "${ROOT}/deploy/stack/down.sh" 2>/dev/null
if ! running "${other}"; then
	rm -rf "${scratch}"
	fail "down.sh killed pid ${other}, which was not a process stack-up started"
fi
kill "${other}"
wait "${other}" 2>/dev/null || true
[[ ! -e "${scratch}/collector.pid" ]] || fail "down.sh left the stale pid file"
rm -rf "${scratch}"
ok "down.sh leaves a process it did not start alone and drops the stale pid file"

started=0
if ! pid_alive collector >/dev/null || ! pid_alive jaeger >/dev/null || ! pid_alive prometheus >/dev/null; then
	"${ROOT}/deploy/stack/up.sh"
	started=1
fi
cleanup() { if ((started)); then "${ROOT}/deploy/stack/down.sh"; fi; }
trap cleanup EXIT

# poll SECONDS CMD...: runs CMD until it succeeds or SECONDS pass.
poll() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		((SECONDS < deadline)) || return 1
		sleep 0.5
	done
}

run="$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
trace_id="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
span_id="${run}"
now_ns="$(date +%s%N)"
instance="stack-test-${run}"

resource='{"attributes":[
  {"key":"service.name","value":{"stringValue":"stack-test"}},
  {"key":"service.instance.id","value":{"stringValue":"'"${instance}"'"}}]}'

curl -fsS -o /dev/null -H 'Content-Type: application/json' \
	http://127.0.0.1:4318/v1/traces --data @- <<JSON || fail "collector refused the OTLP/HTTP trace"
{"resourceSpans":[{"resource":${resource},
 "scopeSpans":[{"scope":{"name":"stack-test"},"spans":[{
  "traceId":"${trace_id}","spanId":"${span_id}","name":"publish order","kind":4,
  "startTimeUnixNano":"$((now_ns - 5000000))","endTimeUnixNano":"${now_ns}",
  "attributes":[{"key":"messaging.system","value":{"stringValue":"eventbus"}}]}]}]}]}
JSON

curl -fsS -o /dev/null -H 'Content-Type: application/json' \
	http://127.0.0.1:4318/v1/metrics --data @- <<JSON || fail "collector refused the OTLP/HTTP metric"
{"resourceMetrics":[{"resource":${resource},
 "scopeMetrics":[{"scope":{"name":"stack-test"},"metrics":[{
  "name":"stack.test.events","unit":"1",
  "sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":[{
   "asInt":"7","startTimeUnixNano":"$((now_ns - 5000000))","timeUnixNano":"${now_ns}",
   "attributes":[{"key":"run","value":{"stringValue":"${run}"}}]}]}}]}]}]}
JSON

jaeger_has_span() {
	curl -fsS --max-time 2 "http://127.0.0.1:16686/api/traces/${trace_id}" 2>/dev/null |
		jq -e --arg s "${span_id}" '.data[0].spans[] | select(.spanID == $s and .operationName == "publish order")' >/dev/null
}
poll 30 jaeger_has_span || fail "trace ${trace_id} not in Jaeger's API after 30s"
ok "trace ${trace_id} reached Jaeger (curl http://127.0.0.1:16686/api/traces/${trace_id})"

prom_has_series() {
	curl -fsS --max-time 2 http://127.0.0.1:9090/api/v1/query \
		--data-urlencode "query=stack_test_events_total{run=\"${run}\"}" 2>/dev/null |
		jq -e --arg i "${instance}" '.data.result[0] | select(.value[1] == "7" and .metric.job == "stack-test" and .metric.instance == $i)' >/dev/null
}
poll 30 prom_has_series || fail "stack_test_events_total{run=\"${run}\"} = 7 with job=stack-test, instance=${instance} not in Prometheus after 30s"
ok "counter reached Prometheus as stack_test_events_total with job and instance from the resource"

if [[ -f "${ROOT}/deploy/prometheus/alerts.yml" ]]; then
	groups="$(curl -fsS http://127.0.0.1:9090/api/v1/rules | jq '.data.groups | length')"
	((groups > 0)) || fail "Prometheus loaded no rule group from deploy/prometheus/alerts.yml"
	ok "Prometheus loaded ${groups} rule group(s) from deploy/prometheus/alerts.yml"
fi
echo "stack-test: ${passed} passed, 0 failed"
