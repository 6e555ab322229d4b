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
