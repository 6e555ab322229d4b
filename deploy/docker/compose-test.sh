#!/usr/bin/env bash
# make compose-test: the full docker-compose.yml stack with locally built
# images (FROM scratch, our binaries), checked for real, then removed.
#  1. the trading app's events flow through the sidecar (Prometheus holds
#     accepted publishes and deliveries for the order queue, the app logs
#     executed orders), and a user outside the socket's group is refused;
#  2. an executed order's trace reaches Jaeger's API, with its publish and
#     deliver spans;
#  3. Prometheus loaded the alert rules and holds
#     eventbus_events_dropped_total;
#  4. `down` leaves no container, network or volume of the project.
# Skipped, saying why, when no Docker daemon answers.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${ROOT}"

if ! out="$(docker info --format '{{.ServerVersion}}' 2>&1)"; then
	echo "compose-test: SKIPPED: no Docker daemon answers here (docker info: ${out//$'\n'/ })"
	exit 0
fi
command -v docker-compose >/dev/null || { echo "compose-test: FAILED: docker-compose not installed" >&2; exit 1; }

log() { printf 'compose-test: %s\n' "$*" >&2; }
passed=0
ok() { log "ok: $*"; passed=$((passed + 1)); }

# Image tags are global to the Docker daemon: another checkout running
# its own tests could retag eventbus-local/*:local under us. This run
# builds and uses tags of its own (ct-<pid>) and removes them at the end.
# COMPOSE_TEST_PREBUILT=1 uses the images already built with IMAGE_TAG
# (default local) instead (make images, or deploy/docker/images.sh).
own_images=0
if [[ "${COMPOSE_TEST_PREBUILT:-0}" != 1 ]]; then
	export IMAGE_TAG="ct-$$"
	own_images=1
	"${MAKE:-make}" --no-print-directory images
fi

TAG="${IMAGE_TAG:-local}"
export EVENTBUS_SIDECAR_IMAGE="eventbus-local/sidecar:${TAG}"
export EVENTBUS_DEMO_IMAGE="eventbus-local/demo:${TAG}"
export EVENTBUS_COLLECTOR_IMAGE="eventbus-local/otelcol:${TAG}"
export EVENTBUS_JAEGER_IMAGE="eventbus-local/jaeger:${TAG}"
export EVENTBUS_PROMETHEUS_IMAGE="eventbus-local/prometheus:${TAG}"
# Host ports apart from the local stack's, so both can run at once.
export EVENTBUS_ADMIN_PORT="${COMPOSE_TEST_ADMIN_PORT:-29464}"
export EVENTBUS_JAEGER_PORT="${COMPOSE_TEST_JAEGER_PORT:-26686}"
export EVENTBUS_PROMETHEUS_PORT="${COMPOSE_TEST_PROMETHEUS_PORT:-29090}"
export EVENTBUS_DEMO_DURATION="${COMPOSE_TEST_DEMO_DURATION:-3m}"
project="eventbus-compose-test-$$"
compose=(docker-compose -p "${project}" -f docker-compose.yml)
jaeger="http://127.0.0.1:${EVENTBUS_JAEGER_PORT}"
prom="http://127.0.0.1:${EVENTBUS_PROMETHEUS_PORT}"

teardown() {
	local rc=$?
	if ((rc != 0)); then
		log "failed; last logs:"
		"${compose[@]}" logs --no-color --tail=40 >&2 || true
	fi
	"${compose[@]}" down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true
	if ((own_images)); then
		docker image rm "${EVENTBUS_SIDECAR_IMAGE}" "${EVENTBUS_DEMO_IMAGE}" "${EVENTBUS_COLLECTOR_IMAGE}" \
			"${EVENTBUS_JAEGER_IMAGE}" "${EVENTBUS_PROMETHEUS_IMAGE}" >/dev/null 2>&1 || true
		rm -rf "${ROOT}/.state/docker/${TAG}"
	fi
	local left
	left="$(docker ps -aq --filter "label=com.docker.compose.project=${project}")$(docker network ls -q --filter "label=com.docker.compose.project=${project}")$(docker volume ls -q --filter "label=com.docker.compose.project=${project}")"
	if [[ -n "${left}" ]]; then
		log "FAIL: containers, networks or volumes of ${project} left behind"
		rc=1
	elif ((rc == 0)); then
		ok "down removed every container, network and volume of ${project}"
	fi
	echo "compose-test: ${passed} passed, $((rc == 0 ? 0 : 1)) failed"
	exit "${rc}"
}
trap teardown EXIT

fail() { log "FAIL: $*"; exit 1; }

# poll SECONDS CMD...: runs CMD until it succeeds or SECONDS pass.
poll() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		((SECONDS < deadline)) || return 1
		sleep 1
	done
}

# The grafana profile cannot run here (no Grafana image can be pulled or
# built), but its definition must stay valid.
"${compose[@]}" --profile grafana config -q || fail "docker-compose.yml with the grafana profile is invalid"
ok "docker-compose.yml is valid, grafana profile included"

start=${SECONDS}
"${compose[@]}" up -d --no-build
log "stack up in $((SECONDS - start))s"

# 1. events flow through the sidecar.
prom_value() {
	curl -fsS --max-time 2 "${prom}/api/v1/query" --data-urlencode "query=$1" 2>/dev/null |
		jq -r '[.data.result[].value[1] | tonumber] | add // 0'
}
flowing() {
	local accepted delivered
	accepted="$(prom_value 'sum(eventbus_events_published_total{queue="order",outcome="accepted"})')" || return 1
	delivered="$(prom_value 'sum(eventbus_events_delivered_total{queue="order"})')" || return 1
	[[ "${accepted%.*}" -gt 0 && "${delivered%.*}" -gt 0 ]]
}
poll 120 flowing || fail "no accepted and delivered orders in Prometheus after 120s"
ok "orders published by the trading app were accepted and delivered by the sidecar (Prometheus)"

executed_trace() {
	"${compose[@]}" logs --no-color trading 2>/dev/null | grep -o 'trace_id=[0-9a-f]\{32\}' | head -n 1 | cut -d= -f2
}
poll 60 test -n "$(executed_trace)" || fail "the trading app logged no executed order"
trace_id="$(executed_trace)"
ok "the trading app executed orders (first trace ${trace_id})"

# The socket is for the shared group only: a user outside group 10000 is
# refused, while the trading app (10002:10000) got through above.
if out="$("${compose[@]}" run --rm --no-deps -T -u 10005:10005 trading --duration 1s --connect-timeout 2s 2>&1)"; then
	fail "user 10005:10005 (not in group 10000) could use the sidecar's socket"
fi
grep -qi 'permission denied' <<<"${out}" || fail "user 10005:10005 failed for another reason than permission: ${out}"
ok "a user outside the socket's group is refused (permission denied); the group member is served"

# Inside the group but not the trading app's user: the file mode lets it
# connect, the sidecar's allowlist (EVENTBUS_ALLOWED_UIDS) refuses it.
if out="$("${compose[@]}" run --rm --no-deps -T -u 10006:10000 trading --duration 1s --connect-timeout 2s 2>&1)"; then
	fail "user 10006:10000 (in the group, not allowed) could use the sidecar's socket"
fi
grep -q 'permission denied: uid 10006' <<<"${out}" || fail "user 10006:10000 failed for another reason than permission_denied: ${out}"
ok "a group member that is not the trading app's user is refused (permission_denied, uid 10006)"

# 2. that order's trace reaches Jaeger with publish and deliver spans.
trace_complete() {
	curl -fsS --max-time 2 "${jaeger}/api/traces/${trace_id}" 2>/dev/null |
		jq -e '[.data[0].spans[].operationName] | (index("publish order") != null) and (index("deliver order") != null)' >/dev/null
}
poll 60 trace_complete || fail "trace ${trace_id} with 'publish order' and 'deliver order' spans not in Jaeger after 60s"
ok "trace ${trace_id} reached Jaeger with its publish and deliver spans"

# 3. rules loaded, drop counter present.
rules="$(curl -fsS "${prom}/api/v1/rules" | jq '[.data.groups[].rules[]] | length')"
((rules > 0)) || fail "Prometheus loaded no alert rule"
ok "Prometheus loaded ${rules} rules from deploy/prometheus/alerts.yml"
has_drops_series() {
	curl -fsS --max-time 2 "${prom}/api/v1/query" --data-urlencode 'query=eventbus_events_dropped_total' 2>/dev/null |
		jq -e '.data.result | length > 0' >/dev/null
}
poll 30 has_drops_series || fail "eventbus_events_dropped_total not in Prometheus"
ok "Prometheus holds eventbus_events_dropped_total ($(prom_value 'sum(eventbus_events_dropped_total)') drops so far)"
