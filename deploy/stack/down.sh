#!/usr/bin/env bash
# Stops what up.sh started, and only that: each pid file names a pid and
# the binary it must be running; anything else (a stale file, a reused pid)
# is left alone and the file removed. SIGTERM first, SIGKILL after 10 s.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stop() {
	local name="$1" pid i
	if ! pid="$(pid_alive "${name}")"; then
		[[ -f "${STATE}/${name}.pid" ]] && log "${name} not running (stale pid file removed)"
		rm -f "${STATE}/${name}.pid"
		return 0
	fi
	kill -TERM "${pid}" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		running "${pid}" || break
		sleep 0.1
	done
	if running "${pid}"; then
		log "${name} (pid ${pid}) ignored SIGTERM for 10s: SIGKILL"
		kill -KILL "${pid}" 2>/dev/null || true
	fi
	rm -f "${STATE}/${name}.pid"
	log "${name} stopped (pid ${pid})"
}

# A demo sidecar left running first, then reverse start order: Prometheus, then the collector (flushes to Jaeger
# on the way down), then Jaeger.
stop sidecar
stop prometheus
stop collector
stop jaeger
