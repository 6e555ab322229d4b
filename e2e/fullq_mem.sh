#!/usr/bin/env bash
# Full queues against their payload, end to end (docs/performance.md, "Full
# queues in blocks"): how much a real sidecar's resident memory grows when
# its three default queues fill with 1 KiB events, as a multiple of the
# payload they hold (1150 events: data 1000, signal 100, order 50; the
# target is 1.1). Each run starts a sidecar on a socket in a new temporary
# directory with the admin listener on a port the kernel picks, waits 2 s (idle),
# optionally warms it up (20 events through each queue with one consumer,
# then 1 s), reads VmRSS and RssAnon, fills each queue to capacity with
# nobody consuming (`eventbus-sidecar load --consumers 0`, whose client
# gives every publish a msg id), waits 1 s and reads them again:
#
#   e2e/fullq_mem.sh before=/tmp/fq-before after=/tmp/fq-after
#
# Per round, each build runs warmed and fresh, with the defaults and with
# --telemetry-disabled, in reverse build order every other round so that a
# noisy neighbour hits them alike. It prints a line per run, then per build
# and kind of run the median and range of the growth (VmRSS and RssAnon)
# over the payload, and the idle VmRSS.
#
# Arguments: builds as NAME=PATH (a bare PATH is named "build"); without
# any, SIDECAR_BIN, else a sidecar built from this tree. Environment:
# PERF_ROUNDS (3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${PERF_ROUNDS:-3}"
# The default queues and their capacities, and the payload of each event.
FILL=(data:1000 signal:100 order:50)
PAYLOAD=1024

# shellcheck source=e2e/perf_lib.sh
source "${ROOT}/e2e/perf_lib.sh"
perf_init fullq-mem

perf_workdir fullqmem

perf_builds "$@"

events=0
for qn in "${FILL[@]}"; do events=$((events + ${qn#*:})); done
PAYLOAD_KIB=$((events * PAYLOAD / 1024))

# rss_kib PID: "VmRSS RssAnon" of PID in KiB.
rss_kib() { awk '/^VmRSS:/ {v = $2} /^RssAnon:/ {a = $2} END {print v, a}' "/proc/$1/status"; }

# load_quiet ARGS...: one run of the load tool against the sidecar; its
# report is kept in the log, not printed.
load_quiet() {
	"${BIN}" load --socket "${DIR}/s.sock" --payload-bytes "${PAYLOAD}" --json "$@" >>"${WORK}/load.log" ||
		die "load $*: $(tail -3 "${WORK}/load.log")"
}

# run ROUND START TELEMETRY: one sidecar, one fill; appends a JSON line to
# results.jsonl.
run() {
	local round="$1" start="$2" telemetry="$3" flags=() idle base full qn
	[[ "${telemetry}" == disabled ]] && flags=(--telemetry-disabled)
	DIR="$(mktemp -d "${WORK}/run.XXXXXX")"
	serve_sidecar "${DIR}" --admin-addr 127.0.0.1:0 "${flags[@]}"
	sleep 2
	idle="$(rss_kib "${PID}")"
	base="${idle}"
	if [[ "${start}" == warm ]]; then
		for qn in "${FILL[@]}"; do
			load_quiet --queue "${qn%:*}" --events 20 --concurrency 8 --consumers 1
		done
		sleep 1
		base="$(rss_kib "${PID}")"
	fi
	for qn in "${FILL[@]}"; do
		load_quiet --queue "${qn%:*}" --events "${qn#*:}" --consumers 0
	done
	sleep 1
	full="$(rss_kib "${PID}")"
	stop_sidecar
	rm -rf "${DIR}"
	read -r iv _ <<<"${idle}"
	read -r bv ba <<<"${base}"
	read -r fv fa <<<"${full}"
	jq -nc --arg build "${BUILD}" --argjson round "${round}" --arg start "${start}" --arg telemetry "${telemetry}" \
		--argjson idle "${iv}" --argjson base "${bv}" --argjson base_anon "${ba}" \
		--argjson full "${fv}" --argjson full_anon "${fa}" --argjson payload "${PAYLOAD_KIB}" \
		'{build: $build, round: $round, start: $start, telemetry: $telemetry,
		  idle_mib: ($idle / 1024 * 100 | round / 100), base_mib: ($base / 1024 * 100 | round / 100),
		  full_mib: ($full / 1024 * 100 | round / 100),
		  growth: (($full - $base) / $payload * 100 | round / 100),
		  growth_anon: (($full_anon - $base_anon) / $payload * 100 | round / 100)}' |
		tee -a "${WORK}/results.jsonl"
}

# every ROUND: each kind of run of one build.
every() {
	local start telemetry
	for start in warm fresh; do
		for telemetry in defaults disabled; do
			run "$1" "${start}" "${telemetry}"
		done
	done
}

perf_start "${events} events of ${PAYLOAD} B (${PAYLOAD_KIB} KiB)"
perf_rounds every
perf_done

jq -rs "${JQ_STATS}"'
. as $all
| "RSS growth over the payload, median (range) of \($all | map(.round) | max) rounds (target 1.1):",
  ($all | map(.build) | unique[] as $b
   | ["warm", "fresh"][] as $s | ["defaults", "disabled"][] as $t
   | ($all | map(select(.build == $b and .start == $s and .telemetry == $t))) as $runs
   | "  \($b) \($s) telemetry \($t): VmRSS \($runs | spread(.growth)), RssAnon \($runs | spread(.growth_anon)); idle VmRSS \($runs | spread(.idle_mib)) MiB, full \($runs | spread(.full_mib)) MiB")
' "${WORK}/results.jsonl"
