#!/usr/bin/env bash
# The cost of telemetry (docs/telemetry.md, Cost): socket publish throughput of a
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
# Besides throughput it reports the CPU time per event of the sidecar and,
# where the local stack's pid files are found, of the collector and Jaeger:
# on a machine this small they share the cores with the sidecar and the
# load tool, so their work lowers the spans mode's throughput too.
#
# Environment: COST_ROUNDS (5), COST_EVENTS per run (600000),
# COST_CONNECTIONS (1), COST_CONCURRENCY (64), SIDECAR_BIN (bin/eventbus-sidecar,
# built by `make build`), COLLECTOR (127.0.0.1:4317), COST_SPAN_EXPORT_CPU (1:
# no budget, every span is exported; a share below 1 lets the sidecar shed).
# Targets: metrics only >= 90% of off; 100% spans >= 50% of off.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${SIDECAR_BIN:-${ROOT}/bin/eventbus-sidecar}"
ROUNDS="${COST_ROUNDS:-5}"
EVENTS="${COST_EVENTS:-600000}"
CONNECTIONS="${COST_CONNECTIONS:-1}"
CONCURRENCY="${COST_CONCURRENCY:-64}"
COLLECTOR="${COLLECTOR:-127.0.0.1:4317}"
SPAN_EXPORT_CPU="${COST_SPAN_EXPORT_CPU:-1}"
STATE="${STACK_STATE:-${ROOT}/.state/stack}"
TICK="$(getconf CLK_TCK)"

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
	# No export CPU budget: the budget sheds spans under overload, and this
	# mode measures the cost of exporting every one of them.
	spans) echo "--otlp-endpoint http://${COLLECTOR} --data-sample-ratio 1 --span-export-cpu ${SPAN_EXPORT_CPU}" ;;
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

	local out rate col_pid jae_pid col0=0 jae0=0 side1 col1=0 jae1=0
	col_pid="$(stack_pid collector)"
	jae_pid="$(stack_pid jaeger)"
	[[ -n "${col_pid}" ]] && col0="$(cpu_ticks "${col_pid}")"
	[[ -n "${jae_pid}" ]] && jae0="$(cpu_ticks "${jae_pid}")"
	out="$("${BIN}" load --socket "${sock}" --queue data --events "${EVENTS}" \
		--connections "${CONNECTIONS}" --concurrency "${CONCURRENCY}" --consumers 1 --json)" ||
		die "load against the ${mode} sidecar failed: ${out}"
	rate="$(jq -r '.events_per_second | floor' <<<"${out}")"
	[[ "$(jq -r '.incomplete' <<<"${out}")" == false ]] || die "load run (${mode}) incomplete: ${out}"

	local metrics exported lost
	metrics="$(curl -fsS --max-time 5 "http://${admin}/metrics")"
	exported="$(awk '/^eventbus_telemetry_spans_exported_total/ {s += $NF} END {printf "%d", s}' <<<"${metrics}")"
	lost="$(awk '/^eventbus_telemetry_spans_dropped_total/ {s += $NF} END {printf "%d", s}' <<<"${metrics}")"

	# The sidecar's CPU includes its start-up; read it before the shutdown
	# flush. The collector and Jaeger get a second to take the last batches.
	side1="$(cpu_ticks "${pid}")"
	kill -TERM "${pid}"
	wait "${pid}" || true
	: >"${PIDFILE}"
	sleep 1
	[[ -n "${col_pid}" ]] && col1="$(cpu_ticks "${col_pid}")"
	[[ -n "${jae_pid}" ]] && jae1="$(cpu_ticks "${jae_pid}")"
	# CPU per event in microseconds: ticks * 1e6 / TICK / EVENTS.
	local us="1000000 / ${TICK} / ${EVENTS}"
	echo "${mode} ${rate} ${exported} ${lost}" \
		"$(awk "BEGIN {printf \"%.2f %.2f %.2f\", ${side1} * ${us}, (${col1} - ${col0}) * ${us}, (${jae1} - ${jae0}) * ${us}}")"
}

# cpu_ticks PID: user + system CPU of a process in clock ticks (0 if gone).
cpu_ticks() {
	local stat
	stat="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo 0; return; }
	# Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
	awk '{print $12 + $13}' <<<"${stat##*) }"
}

# stack_pid NAME: the pid the local stack recorded for NAME, if it still runs.
stack_pid() {
	local pid bin
	read -r pid bin <"${STATE}/$1.pid" 2>/dev/null || return 0
	[[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null && echo "${pid}"
	return 0
}

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }

echo "telemetry-cost: ${ROUNDS} rounds x (off, metrics, spans), ${EVENTS} events per run," \
	"${CONNECTIONS} publishing connection(s) x ${CONCURRENCY} in flight, 1 acking consumer, $(nproc) CPUs"
RESULTS="${WORK}/results"
: >"${RESULTS}"
for ((r = 1; r <= ROUNDS; r++)); do
	for mode in off metrics spans; do
		line="$(run_mode "${mode}" "${r}")"
		echo "round ${r}: ${line}" | awk '{printf "round %s %-8s %9d events/s   spans exported %d, lost %d   CPU µs/event: sidecar %s, collector %s, jaeger %s\n", $2, $3, $4, $5, $6, $7, $8, $9}'
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
cpu_median() { # MODE FIELD: median CPU µs per event of one process
	awk -v m="$1" -v f="$2" '$1 == m {print $f}' "${RESULTS}" | sort -n |
		awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
for mode in off metrics spans; do
	printf 'CPU per event, %-8s (median µs): sidecar %s, collector %s, jaeger %s\n' "${mode}" \
		"$(cpu_median "${mode}" 5)" "$(cpu_median "${mode}" 6)" "$(cpu_median "${mode}" 7)"
done
echo "spans mode: ${exp_sum} spans exported to the collector, ${lost_sum} lost (counted) over ${ROUNDS} runs"
status=0
((met_r >= 90)) || { echo "telemetry-cost: metrics only below 90% of off" >&2; status=1; }
((spn_r >= 50)) || { echo "telemetry-cost: 100% spans below 50% of off" >&2; status=1; }
exit "${status}"
