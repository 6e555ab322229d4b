# Shell functions the performance scripts in e2e/ share; sourced, not run.

# perf_init NAME: die's prefix, jq checked, TICK (clock ticks per second).
perf_init() {
	PERF_NAME="$1"
	TICK="$(getconf CLK_TCK)"
	command -v jq >/dev/null || die "jq is required"
}

die() {
	echo "${PERF_NAME:-perf}: $*" >&2
	exit 1
}

# build_sidecar ROOT OUT: the sidecar built from ROOT as `make build` does.
build_sidecar() { (cd "$1" && go build -tags urfave_cli_no_docs -o "$2" .); }

# sidecar_bins ROOT WORK: prints SIDECAR_BIN, or, when it is unset, the
# path of a sidecar it builds from ROOT into WORK.
sidecar_bins() {
	if [[ -n "${SIDECAR_BIN:-}" ]]; then
		printf '%s\n' "${SIDECAR_BIN}"
		return
	fi
	build_sidecar "$1" "$2/eventbus-sidecar"
	printf '%s\n' "$2/eventbus-sidecar"
}

# cpu_ticks PID: utime + stime of PID in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# perf_workdir PREFIX: WORK, a new temporary directory, and PID, the
# sidecar a script runs (none yet); on exit the sidecar is stopped if it
# still runs and WORK removed.
perf_workdir() {
	WORK="$(mktemp -d "/tmp/$1.XXXXXX")"
	PID=""
	trap perf_cleanup EXIT
}

perf_cleanup() {
	if [[ -n "${PID}" ]] && kill -0 "${PID}" 2>/dev/null; then
		kill -TERM "${PID}" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "${PID}" 2>/dev/null || break; sleep 0.1; done
	fi
	rm -rf "${WORK}"
}

# wait_for_socket SOCK LOG: waits up to 10 s for the sidecar in PID to
# open SOCK; dies with the end of its LOG if it exits first.
wait_for_socket() {
	local i
	for ((i = 0; i < 100; i++)); do
		[[ -S "$1" ]] && return 0
		kill -0 "${PID}" 2>/dev/null || die "the sidecar exited: $(tail -5 "$2")"
		sleep 0.1
	done
	die "the sidecar did not open $1"
}

# serve_sidecar DIR ARGS...: starts BIN's sidecar on DIR/s.sock with ARGS,
# its log appended to WORK/sidecar.log, its pid in PID, and waits until it
# serves.
serve_sidecar() {
	local dir="$1"
	shift
	"${BIN}" serve --socket "${dir}/s.sock" --log-level warn "$@" >>"${WORK}/sidecar.log" 2>&1 &
	PID=$!
	wait_for_socket "${dir}/s.sock" "${WORK}/sidecar.log"
}

# stop_sidecar: stops the sidecar in PID and waits for it to exit.
stop_sidecar() {
	kill -TERM "${PID}"
	wait "${PID}" || true
	PID=""
}

# JQ_STATS: jq definitions for a summary: median, r2 (two decimals), and
# spread(f), "median (min to max)" of f over an array.
JQ_STATS='def median: sort | if length == 0 then null elif length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end;
def r2: . * 100 | round / 100;
def spread(f): (map(f) | median | r2 | tostring) + " (" + (map(f) | min | tostring) + " to " + (map(f) | max | tostring) + ")";'

# perf_start [WHAT]: the line a run starts with: the time, the load
# average, the commit and WHAT. perf_done: the line it ends with.
perf_start() {
	echo "${PERF_NAME}: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg), commit $(cd "${ROOT}" && git rev-parse --short HEAD)${1:+, $1}"
}
perf_done() { echo "${PERF_NAME}: done $(date -u '+%H:%M:%S UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)${1:+, $1}"; }

# build_order ROUND: ORDER, the builds of BUILDS (NAME=PATH) in the order
# ROUND runs them: reversed every other round, so that no build always
# runs after another.
build_order() {
	local i
	ORDER=("${BUILDS[@]}")
	if (($1 % 2 == 0)); then
		ORDER=()
		for ((i = ${#BUILDS[@]} - 1; i >= 0; i--)); do ORDER+=("${BUILDS[i]}"); done
	fi
}

# perf_builds ARGS...: BUILDS, the builds given as NAME=PATH (or PATH)
# arguments; without any, SIDECAR_BIN, else a sidecar built from ROOT
# into WORK. Dies if one of them is not an executable.
perf_builds() {
	local b
	BUILDS=("$@")
	if ((${#BUILDS[@]} == 0)); then
		read -r -a BUILDS <<<"$(sidecar_bins "${ROOT}" "${WORK}")"
	fi
	for b in "${BUILDS[@]}"; do [[ -x "${b#*=}" ]] || die "no sidecar binary at ${b#*=}"; done
}

# perf_rounds FUNC: ROUNDS rounds; in each, for every build in the round's
# order (build_order), BIN and BUILD set (use_build), FUNC ROUND.
perf_rounds() {
	local r b
	for ((r = 1; r <= ROUNDS; r++)); do
		build_order "${r}"
		for b in "${ORDER[@]}"; do
			use_build "${b}"
			"$1" "${r}"
		done
	done
}

# use_build NAME=PATH: BIN, the binary, and BUILD, its name ("build" for
# a bare PATH).
use_build() {
	BIN="${1#*=}" BUILD="build"
	if [[ "$1" == *=* ]]; then BUILD="${1%%=*}"; fi
}
