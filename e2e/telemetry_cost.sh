#!/usr/bin/env bash
# The cost of telemetry (issue 3 section 6): socket publish throughput of a
# real sidecar with telemetry off, metrics only, and metrics plus 100% of
# spans exported to the real local collector, measured with the project's
# load tool (`eventbus-sidecar load`, one publishing connection and one
# acking consumer on the data queue) in one run. The modes are interleaved
# round by round so that a noisy neighbour hits all of them alike; the
# report gives each mode's median, its ratio to telemetry off, and the median
# of the per-round ratios (the figure the targets are checked against).
#
#   make telemetry-cost                 (stack up, this script, stack down)
#   e2e/telemetry_cost.sh               (with the stack already up)
#
# Environment: COST_ROUNDS (5), COST_EVENTS per run (600000),
# COST_CONNECTIONS (1), COST_CONCURRENCY (64), SIDECAR_BIN (bin/eventbus-sidecar,
# built by `make build`), COLLECTOR (127.0.0.1:4317).
# Targets: metrics only >= 90% of off; 100% spans >= 50% of off.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${SIDECAR_BIN:-${ROOT}/bin/eventbus-sidecar}"
ROUNDS="${COST_ROUNDS:-5}"
EVENTS="${COST_EVENTS:-600000}"
CONNECTIONS="${COST_CONNECTIONS:-1}"
CONCURRENCY="${COST_CONCURRENCY:-64}"
COLLECTOR="${COLLECTOR:-127.0.0.1:4317}"

die() { echo "telemetry-cost: $*" >&2; exit 1; }
[[ -x "${BIN}" ]] || die "no sidecar at ${BIN}: run make build"
command -v jq >/dev/null || die "jq is required"
(exec 3<>"/dev/tcp/${COLLECTOR%:*}/${COLLECTOR##*:}") 2>/dev/null ||
	die "no collector at ${COLLECTOR}: run make stack-up (or make telemetry-cost)"

WORK="$(mktemp -d /tmp/telcost.XXXXXX)"
# run_mode runs in a command substitution (a subshell), so the sidecar's pid
# goes to a file that this shell's exit trap reads.
PIDFILE="${WORK}/sidecar.pid"
cleanup() {
	local pid
	pid="$(cat "${PIDFILE}" 2>/dev/null || true)"
	if [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null; then
		kill -TERM "${pid}" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.1; done
	fi
	rm -rf "${WORK}"
}
trap cleanup EXIT

# mode_flags MODE: the serve flags of each telemetry mode.
mode_flags() {
	case "$1" in
	off) echo "--telemetry-disabled" ;;
	metrics) echo "--traces-disabled --otlp-endpoint http://${COLLECTOR}" ;;
	spans) echo "--otlp-endpoint http://${COLLECTOR} --data-sample-ratio 1" ;;
	esac
}

# run_mode MODE ROUND: starts a sidecar in MODE, runs the load against it,
# stops it; prints "MODE events_per_second spans_exported spans_lost".
run_mode() {
	local mode="$1" round="$2" sock="${WORK}/s-$1-$2.sock" log="${WORK}/sidecar-$1-$2.log" admin="" i
	# shellcheck disable=SC2046 # the flags are words
	env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_SDK_DISABLED -u OTEL_TRACES_SAMPLER \
		OTEL_RESOURCE_ATTRIBUTES="service.instance.id=telemetry-cost-${mode}-${round}" \
		"${BIN}" serve --socket "${sock}" --admin-addr 127.0.0.1:0 --log-level info $(mode_flags "${mode}") \
		>"${log}" 2>&1 &
	local pid=$!
	echo "${pid}" >"${PIDFILE}"
	for ((i = 0; i < 100; i++)); do
		admin="$(grep -so 'admin_addr=[0-9.:]*' "${log}" | head -n1 | cut -d= -f2 || true)"
		[[ -S "${sock}" && -n "${admin}" ]] && break
		kill -0 "${pid}" 2>/dev/null || { cat "${log}" >&2; die "sidecar (${mode}) exited at start-up"; }
		sleep 0.1
	done
	[[ -n "${admin}" ]] || { cat "${log}" >&2; die "sidecar (${mode}) not ready after 10s"; }

	local out rate
	out="$("${BIN}" load --socket "${sock}" --queue data --events "${EVENTS}" \
		--connections "${CONNECTIONS}" --concurrency "${CONCURRENCY}" --consumers 1 --json)" ||
		die "load against the ${mode} sidecar failed: ${out}"
	rate="$(jq -r '.events_per_second | floor' <<<"${out}")"
	[[ "$(jq -r '.incomplete' <<<"${out}")" == false ]] || die "load run (${mode}) incomplete: ${out}"

	local metrics exported lost
	metrics="$(curl -fsS --max-time 5 "http://${admin}/metrics")"
	exported="$(awk '/^eventbus_telemetry_spans_exported_total/ {s += $NF} END {printf "%d", s}' <<<"${metrics}")"
	lost="$(awk '/^eventbus_telemetry_spans_dropped_total/ {s += $NF} END {printf "%d", s}' <<<"${metrics}")"

	kill -TERM "${pid}"
	wait "${pid}" || true
	: >"${PIDFILE}"
	echo "${mode} ${rate} ${exported} ${lost}"
}

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }

echo "telemetry-cost: ${ROUNDS} rounds x (off, metrics, spans), ${EVENTS} events per run," \
	"${CONNECTIONS} publishing connection(s) x ${CONCURRENCY} in flight, 1 acking consumer, $(nproc) CPUs"
RESULTS="${WORK}/results"
: >"${RESULTS}"
for ((r = 1; r <= ROUNDS; r++)); do
	for mode in off metrics spans; do
		line="$(run_mode "${mode}" "${r}")"
		echo "round ${r}: ${line}" | awk '{printf "round %s %-8s %9d events/s   spans exported %d, lost %d\n", $2, $3, $4, $5, $6}'
		echo "${line}" >>"${RESULTS}"
	done
done

# Ratios within each round (runs seconds apart) cancel slow drifts in the
# machine's load better than ratios of medians; both are printed.
ratios() { # MODE: per-round percentage of off
	awk -v m="$1" '$1 == "off" {off = $2} $1 == m {printf "%d\n", $2 * 100 / off}' "${RESULTS}"
}
met_r="$(ratios metrics | median)"
spn_r="$(ratios spans | median)"
off="$(awk '$1 == "off" {print $2}' "${RESULTS}" | median)"
met="$(awk '$1 == "metrics" {print $2}' "${RESULTS}" | median)"
spn="$(awk '$1 == "spans" {print $2}' "${RESULTS}" | median)"
exp_sum="$(awk '$1 == "spans" {s += $3} END {print s + 0}' "${RESULTS}")"
lost_sum="$(awk '$1 == "spans" {s += $4} END {print s + 0}' "${RESULTS}")"
echo
printf '%-28s %12s %8s %8s\n' "mode (median of ${ROUNDS})" "events/s" "of off" "target"
printf '%-28s %12d %7s%% %8s\n' "telemetry off" "${off}" 100 ""
printf '%-28s %12d %7d%% %8s\n' "metrics only" "${met}" $((met * 100 / off)) ">= 90%"
printf '%-28s %12d %7d%% %8s\n' "metrics + 100% spans" "${spn}" $((spn * 100 / off)) ">= 50%"
echo "median of the per-round ratios: metrics only ${met_r}% of off, 100% spans ${spn_r}% of off"
echo "spans mode: ${exp_sum} spans exported to the collector, ${lost_sum} lost (counted) over ${ROUNDS} runs"
status=0
((met_r >= 90)) || { echo "telemetry-cost: metrics only below 90% of off" >&2; status=1; }
((spn_r >= 50)) || { echo "telemetry-cost: 100% spans below 50% of off" >&2; status=1; }
exit "${status}"
