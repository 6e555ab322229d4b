#!/usr/bin/env bash
# Idle memory from a cold start (docs/performance.md, "Where we stand": idle
# RSS <= 12 MiB). Before each start the binary is dropped from the page
# cache (dd iflag=nocache), so that the sidecar's own page faults bring it
# in, as for a binary not run since it was copied: how the file came into
# the page cache moves its resident pages by up to 1.6 MB. The sidecar
# starts on a socket in a new temporary directory with the admin listener
# on a port the kernel picks, and VmRSS, RssAnon and RssFile are read 2 s
# after the socket appeared, with no client.
#
#   e2e/idle_mem.sh                                   # built from this tree
#   e2e/idle_mem.sh before=/tmp/sidecar-a after=bin/eventbus-sidecar
#
# Per round, each build runs with the defaults and with --telemetry-disabled,
# in reverse build order every other round. It prints a JSON line per run,
# then per build and telemetry the median and range of each figure.
#
# Arguments: builds as NAME=PATH (a bare PATH is named "build"); without
# any, SIDECAR_BIN, else a sidecar built from this tree. Environment:
# PERF_ROUNDS (6).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${PERF_ROUNDS:-6}"

# shellcheck source=e2e/perf_lib.sh
source "${ROOT}/e2e/perf_lib.sh"
perf_init idle-mem

perf_workdir idlemem

perf_builds "$@"

# run ROUND TELEMETRY: one cold start; appends a JSON line to results.jsonl.
run() {
	local round="$1" telemetry="$2" flags=() dir
	[[ "${telemetry}" == disabled ]] && flags=(--telemetry-disabled)
	dd if="${BIN}" iflag=nocache count=0 status=none
	dir="$(mktemp -d "${WORK}/run.XXXXXX")"
	serve_sidecar "${dir}" --admin-addr 127.0.0.1:0 "${flags[@]}"
	sleep 2
	awk -v build="${BUILD}" -v round="${round}" -v telemetry="${telemetry}" '
		/^VmRSS:/ {v = $2} /^RssAnon:/ {a = $2} /^RssFile:/ {f = $2}
		END {printf "{\"build\":\"%s\",\"round\":%d,\"telemetry\":\"%s\",\"rss_mib\":%.2f,\"anon_mib\":%.2f,\"file_mib\":%.2f}\n",
			build, round, telemetry, v / 1024, a / 1024, f / 1024}' "/proc/${PID}/status" |
		tee -a "${WORK}/results.jsonl"
	stop_sidecar
	rm -rf "${dir}"
}

# every ROUND: the build with the defaults, then with --telemetry-disabled.
every() {
	run "$1" defaults
	run "$1" disabled
}

perf_start
perf_rounds every
perf_done

jq -rs "${JQ_STATS}"'
. as $all
| "Idle memory in MiB, median (range) of \($all | map(.round) | max) rounds (target: VmRSS 12):",
  ($all | map(.build) | unique[] as $b
   | ["defaults", "disabled"][] as $t
   | ($all | map(select(.build == $b and .telemetry == $t))) as $runs
   | "  \($b) telemetry \($t): VmRSS \($runs | spread(.rss_mib)), RssAnon \($runs | spread(.anon_mib)), RssFile \($runs | spread(.file_mib))")
' "${WORK}/results.jsonl"
