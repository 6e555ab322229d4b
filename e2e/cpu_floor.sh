#!/usr/bin/env bash
# CPU per event at a steady rate, against the floor (docs/performance.md,
# "The floor of CPU per event"): three servers of the sidecar's protocol,
# each a process of its own, measured in turn round by round with the order
# turning, so that a noisy neighbour hits all alike:
#
#   sidecar: `eventbus-sidecar serve --telemetry-disabled`;
#   ceiling: `load --ceiling-server`, answer and forward only, a reader and
#            a writer goroutine per connection (what `load --ceiling` uses);
#   floor:   `load --floor-server`, the same on one OS thread around a raw
#            epoll set: the least the socket traffic itself costs here.
#
# Per server and round: a warm-up of 5,000 events, then the load tool (one
# publisher, one acking consumer, `data` queue) at a fixed rate, and the
# server's utime + stime from /proc/PID/stat before and after, divided by
# the events acked. Context switches per event are the whole machine's
# (/proc/stat), the load tool's included. It prints a JSON line per run,
# then the medians and the ratios to the floor.
#
#   e2e/cpu_floor.sh
#
# Environment: FLOOR_ROUNDS (3), FLOOR_RATE (10000), FLOOR_EVENTS per run
# (100000), SIDECAR_BIN (built from this tree when unset). GOMAXPROCS, if
# set, applies to the three servers and the load tool alike.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${FLOOR_ROUNDS:-3}"
RATE="${FLOOR_RATE:-10000}"
EVENTS="${FLOOR_EVENTS:-100000}"

# shellcheck source=e2e/perf_lib.sh
source "${ROOT}/e2e/perf_lib.sh"
perf_init cpu-floor

WORK="$(mktemp -d /tmp/cpufloor.XXXXXX)"
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill -TERM "${p}" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "${WORK}"
}
trap cleanup EXIT

BIN="$(sidecar_bins "${ROOT}" "${WORK}")"
[[ -x "${BIN}" ]] || die "no sidecar binary at ${BIN}"

# start NAME ARGS...: runs a server on ${WORK}/NAME.sock, its pid in PID_NAME.
start() {
	local name="$1" i
	shift
	"${BIN}" "$@" --socket "${WORK}/${name}.sock" >"${WORK}/${name}.log" 2>&1 &
	PIDS+=("$!")
	printf -v "PID_${name}" '%s' "$!"
	for ((i = 0; i < 100; i++)); do
		[[ -S "${WORK}/${name}.sock" ]] && return 0
		sleep 0.1
	done
	die "${name} did not open its socket: $(tail -5 "${WORK}/${name}.log")"
}
start sidecar serve --admin-addr off --telemetry-disabled --log-level warn
start ceiling load --ceiling-server
start floor load --floor-server

ctxt() { awk '/^ctxt/ {print $2}' /proc/stat; }

perf_start "${RATE} events/s"
servers=(sidecar ceiling floor)
for ((r = 1; r <= ROUNDS; r++)); do
	for ((k = 0; k < ${#servers[@]}; k++)); do
		name="${servers[$(((r - 1 + k) % ${#servers[@]}))]}"
		pid_var="PID_${name}"
		pid="${!pid_var}"
		sock="${WORK}/${name}.sock"
		"${BIN}" load --socket "${sock}" --events 5000 --rate "${RATE}" --json >/dev/null
		before="$(cpu_ticks "${pid}")" ctx_before="$(ctxt)"
		out="$("${BIN}" load --socket "${sock}" --events "${EVENTS}" --rate "${RATE}" --duration "$((EVENTS / RATE + 20))s" --json)"
		after="$(cpu_ticks "${pid}")" ctx_after="$(ctxt)"
		jq -c --arg server "${name}" --argjson round "${r}" --argjson ticks "$((after - before))" --argjson hz "${TICK}" \
			--argjson ctxt "$((ctx_after - ctx_before))" \
			'{server: $server, round: $round, acked: .acked,
			  cpu_us_per_event: (if .acked > 0 then $ticks / $hz * 1e6 / .acked else null end),
			  ctxt_per_event: (if .acked > 0 then $ctxt / .acked else null end),
			  e2e_p50_ms: (.end_to_end_latency.p50_ns / 1e6), e2e_p99_ms: (.end_to_end_latency.p99_ns / 1e6)}' \
			<<<"${out}" | tee -a "${WORK}/results.jsonl"
	done
done
perf_done

jq -rs "${JQ_STATS}"'
def r1: . * 10 | round / 10;
(map(select(.server == "floor")) | map(.cpu_us_per_event) | median) as $floor
| ["sidecar", "ceiling", "floor"][] as $s
| map(select(.server == $s)) as $runs
| ($runs | map(.cpu_us_per_event) | median) as $cpu
| "\($s): CPU per event per round \($runs | map(.cpu_us_per_event | r1)) us, median \($cpu | r1) us, \($cpu / $floor | r2) x the floor; context switches per event \($runs | map(.ctxt_per_event) | median | r1); end-to-end p50/p99 \($runs | map(.e2e_p50_ms) | median | r2)/\($runs | map(.e2e_p99_ms) | median | r2) ms"
' "${WORK}/results.jsonl"
