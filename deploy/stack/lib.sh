# Shared by the deploy/stack scripts (sourced, not run).
# Everything the stack starts records "<pid> <binary>" in
# $STATE/<name>.pid, so down.sh stops exactly those processes and nothing
# another user started on the same ports.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${STACK_STATE:-${ROOT}/.state/stack}"
COLLECTOR_BIN="${ROOT}/deploy/collector/otelcol-eventbus"
JAEGER_BIN="${ROOT}/deploy/jaeger/jaeger"
PROMETHEUS_BIN="${PROMETHEUS_BIN:-$(command -v prometheus || echo /usr/bin/prometheus)}"

log() { printf 'stack: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# pid_alive NAME: prints the pid recorded for NAME when that process is
# still running the recorded binary; fails otherwise (stale file, pid
# reused by another program).
pid_alive() {
	local file="${STATE}/$1.pid" pid bin exe
	[[ -f "${file}" ]] || return 1
	read -r pid bin <"${file}" || return 1
	[[ -n "${pid}" ]] && running "${pid}" || return 1
	exe="$(readlink "/proc/${pid}/exe" 2>/dev/null || true)"
	# A binary rebuilt while running shows as "<path> (deleted)".
	[[ "${exe% (deleted)}" == "$(readlink -f "${bin}")" ]] || return 1
	echo "${pid}"
}

# running PID: succeeds while PID exists and is not a zombie (a zombie has
# exited; it only waits for its parent to reap it).
running() {
	local stat
	stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
	stat="${stat##*) }"
	[[ "${stat:0:1}" != Z ]]
}

# port_busy HOST:PORT: succeeds when something accepts connections there.
port_busy() {
	local host="${1%:*}" port="${1##*:}"
	(exec 3<>"/dev/tcp/${host}/${port}") 2>/dev/null
}

# wait_http NAME URL SECONDS: polls URL until it answers 2xx, failing with
# the tail of NAME's log when it does not within SECONDS or the process
# exits.
wait_http() {
	local name="$1" url="$2" limit="$3" deadline=$((SECONDS + $3))
	while ((SECONDS < deadline)); do
		if curl -fs -o /dev/null --max-time 2 "${url}" 2>/dev/null; then
			log "${name} ready (${url})"
			return 0
		fi
		if ! pid_alive "${name}" >/dev/null; then
			tail -n 30 "${STATE}/${name}.log" >&2 || true
			die "${name} exited before it was ready; log: ${STATE}/${name}.log"
		fi
		sleep 0.2
	done
	tail -n 30 "${STATE}/${name}.log" >&2 || true
	die "${name} not ready at ${url} after ${limit}s; log: ${STATE}/${name}.log"
}
