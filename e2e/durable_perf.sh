#!/usr/bin/env bash
# Durable against memory-only, end to end (docs/performance.md, "Durable
# against memory queues"): one real sidecar with a data dir serves two
# queues of the same policy, `order` (durable, fsync always) and
# `order_mem` (the same but in memory), and the project's load tool
# (`eventbus-sidecar load`, one publishing connection and one acking
# consumer) runs against each in turn, round by round, alternating which
# goes first so that a noisy neighbour hits both alike:
#
#   closed loop, 64 and 256 publishes in flight: events/s;
#   open loop at 1,000 events/s for 10 s: publish latency p50/p99 (from
#   each event's intended send time, so a stall counts).
#
# Each round also measures the disk's own fdatasync p50/p99
# (BenchmarkFdatasync in wal/, a 256-byte write and fdatasync of a growing
# file, as a segment does), the floor under a durable publish's latency.
# It prints a line per run, then the medians over the rounds and the
# durable/memory ratios against the issue's targets: durable throughput at
# least 40 % of memory-only, durable p99 at 1,000 events/s at most 2 ms.
#
#   e2e/durable_perf.sh
#
# Environment: PERF_ROUNDS (3), PERF_EVENTS per closed-loop run (100000),
# PERF_RATE (1000), PERF_OPEN_SECONDS (10), SIDECAR_BIN (built from this
# tree into a temporary directory when unset). To compare builds in one
# run, SIDECAR_BIN may name several as NAME=PATH, space-separated
# ("before=/tmp/old after=/tmp/new"): each round runs each of them in turn
# (in reverse order every other round), and the summary is per build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${PERF_ROUNDS:-3}"
EVENTS="${PERF_EVENTS:-100000}"
RATE="${PERF_RATE:-1000}"
OPEN_SECONDS="${PERF_OPEN_SECONDS:-10}"

# shellcheck source=e2e/perf_lib.sh
source "${ROOT}/e2e/perf_lib.sh"
perf_init durable-perf

perf_workdir durperf

BINS="$(sidecar_bins "${ROOT}" "${WORK}")"
read -r -a BUILDS <<<"${BINS}"
for b in "${BUILDS[@]}"; do [[ -x "${b#*=}" ]] || die "no sidecar binary at ${b#*=}"; done
(cd "${ROOT}" && go test -c -o "${WORK}/wal.test" ./wal)

cat >"${WORK}/config.yaml" <<'EOF'
queues:
  - {name: order, capacity: 1024, policy: block, durable: true, fsync: always}
  - {name: order_mem, capacity: 1024, policy: block, durable: false}
EOF


start_sidecar() {
	local sock="$1" data="$2"
	"${BIN}" serve --socket "${sock}" --data-dir "${data}" --config "${WORK}/config.yaml" \
		--admin-addr off --telemetry-disabled --log-level warn >>"${WORK}/sidecar.log" 2>&1 &
	PID=$!
	wait_for_socket "${sock}" "${WORK}/sidecar.log"
}

# run ROUND QUEUE MODE LOAD_ARGS...: one load run; appends a JSON line to
# results.jsonl with the load tool's result and the sidecar's CPU per event.
run() {
	local round="$1" queue="$2" mode="$3" before after out
	shift 3
	before="$(cpu_ticks "${PID}")"
	out="$("${BIN}" load --socket "${SOCK}" --queue "${queue}" --json "$@")"
	after="$(cpu_ticks "${PID}")"
	jq -c --arg build "${BUILD}" --arg round "${round}" --arg queue "${queue}" --arg mode "${mode}" \
		--argjson ticks "$((after - before))" --argjson hz "${TICK}" \
		'{build: $build, round: ($round|tonumber), queue: $queue, mode: $mode,
		  eps: .events_per_second, acked: .acked, sent: .sent,
		  p50_ms: (.publish_latency.p50_ns / 1e6), p99_ms: (.publish_latency.p99_ns / 1e6),
		  p999_ms: (.publish_latency.p999_ns / 1e6), max_ms: (.publish_latency.max_ns / 1e6),
		  lag_p50_ms: ((.send_lag.p50_ns // 0) / 1e6), lag_p99_ms: ((.send_lag.p99_ns // 0) / 1e6),
		  from_send_p99_ms: ((.publish_latency_from_send.p99_ns // 0) / 1e6),
		  e2e_p99_ms: (.end_to_end_latency.p99_ns / 1e6),
		  cpu_us_per_event: (if .acked > 0 then $ticks / $hz * 1e6 / .acked else 0 end)}' \
		<<<"${out}" | tee -a "${WORK}/results.jsonl"
}

perf_start
for ((r = 1; r <= ROUNDS; r++)); do
	# Every other round in reverse, so that no build always runs after
	# another on a disk still busy with its writes.
	build_order "${r}"
	for b in "${ORDER[@]}"; do
		use_build "${b}"
		SOCK="${WORK}/s${r}-${BUILD}.sock"
		start_sidecar "${SOCK}" "${WORK}/data${r}-${BUILD}"
		queues=(order_mem order)
		((r % 2 == 0)) && queues=(order order_mem)
		for q in "${queues[@]}"; do
			run "${r}" "${q}" closed64 --events "${EVENTS}" --concurrency 64 --duration 60s
			run "${r}" "${q}" closed256 --events "${EVENTS}" --concurrency 256 --duration 60s
			run "${r}" "${q}" "rate${RATE}" --rate "${RATE}" --events "$((RATE * OPEN_SECONDS))" --concurrency 256 --duration "$((OPEN_SECONDS + 20))s"
		done
		stop_sidecar
	done
	"${WORK}/wal.test" -test.run '^$' -test.bench 'Fdatasync$' -test.benchtime 2000x |
		awk -v r="${r}" '/^BenchmarkFdatasync/ {for (i = 1; i <= NF; i++) {if ($(i+1) == "sync-p50-ms") p50 = $i; if ($(i+1) == "sync-p99-ms") p99 = $i}
			printf "{\"round\":%d,\"mode\":\"fdatasync\",\"p50_ms\":%s,\"p99_ms\":%s}\n", r, p50, p99}' |
		tee -a "${WORK}/results.jsonl"
done
perf_done

jq -rs --arg rate "rate${RATE}" "${JQ_STATS}"'
def med(f): map(f) | median;
. as $all
| ($all | map(select(.mode == "fdatasync"))) as $fs
| "fdatasync: p50 per round \($fs | map(.p50_ms | r2)), p99 per round \($fs | map(.p99_ms | r2)); medians \($fs | med(.p50_ms) | r2) and \($fs | med(.p99_ms) | r2) ms",
  ($all | map(select(.build)) | map(.build) | unique[] as $b
   | ($all | map(select(.build == $b))) as $mine
   | "build \($b):",
     (["closed64", "closed256"][] as $m
      | ($mine | map(select(.mode == $m))) as $runs
      | [$runs[] | select(.queue == "order")] as $d
      | [$runs[] | select(.queue == "order_mem")] as $mem
      | [range(0; [$d, $mem] | map(length) | min) as $i | $d[$i].eps / $mem[$i].eps] as $ratios
      | "  \($m): durable \($d | med(.eps) | round) events/s (\($d | med(.cpu_us_per_event) | r2) us CPU/event), memory \($mem | med(.eps) | round) events/s (\($mem | med(.cpu_us_per_event) | r2) us); durable/memory per round \($ratios | map(r2)), median \($ratios | median | r2) (target >= 0.40)"),
     (($mine | map(select(.mode == $rate))) as $runs
      | [$runs[] | select(.queue == "order")] as $d
      | [$runs[] | select(.queue == "order_mem")] as $mem
      | "  \($rate): durable publish p50 \($d | med(.p50_ms) | r2) ms, p99 per round \($d | map(.p99_ms | r2)), median \($d | med(.p99_ms) | r2) ms (target <= 2); memory p50 \($mem | med(.p50_ms) | r2) ms, p99 per round \($mem | map(.p99_ms | r2))",
        "  \($rate): durable p99.9 per round \($d | map(.p999_ms | r2)), max \($d | map(.max_ms | r2)); memory p99.9 \($mem | map(.p999_ms | r2)), max \($mem | map(.max_ms | r2))",
        "  \($rate): send lag p50/p99 durable \($d | med(.lag_p50_ms) | r2)/\($d | med(.lag_p99_ms) | r2) ms, memory \($mem | med(.lag_p50_ms) | r2)/\($mem | med(.lag_p99_ms) | r2) ms; p99 from the actual send durable \($d | map(.from_send_p99_ms | r2)), memory \($mem | map(.from_send_p99_ms | r2)) (0: not reported by this build)"))
' "${WORK}/results.jsonl"
