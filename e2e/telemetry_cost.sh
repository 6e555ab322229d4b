#!/usr/bin/env bash
# The cost of telemetry (docs/telemetry.md, Cost): real sidecars in four
# modes, exporting to the real local collector (which forwards spans to
# Jaeger):
#
#   off      --telemetry-disabled
#   metrics  --traces-disabled, metrics pushed to the collector
#   default  what `serve` does with an OTLP endpoint and no sampling flags
#            (data publishes traced up to 1,000 a second, export CPU budget
#            25 %: sheds under load)
#   spans    every span recorded and exported: --data-sample-ratio 1, no
#            trace rate limit (--data-trace-rate unlimited) and no export
#            CPU budget (--span-export-cpu 1)
#
# and two loads from the project's load tool (one publishing connection, one
# acking consumer, the data queue):
#
#   closed   COST_EVENTS events per mode with COST_CONCURRENCY in flight:
#            throughput, reported as each mode's ratio to telemetry off
#   open     COST_OPEN_EVENTS events per mode at a fixed COST_RATE events/s,
#            after the closed runs have warmed the processes up: the
#            sidecar's own CPU per event (utime + stime from /proc/PID/stat),
#            and per span
#
# Each round starts one sidecar per mode, then runs each load against the
# modes in the order off, metrics, default, spans and back again, half of
# the events each time, so that a drift in the machine's load within the
# round falls alike on every mode; a mode's figure for the round is the sum
# of its two halves. The report gives medians over the rounds and the
# medians of the per-round ratios and differences (the figures the targets
# are checked against), with the times and load averages of the run.
#
# Spans are counted on both sides of the wire for each load: offered, shed
# (eventbus_telemetry_spans_dropped_total{reason="queue_full"}, which covers
# spans not built because the export queue was full), failed and exported by
# the sidecar's own counters; accepted and refused by the collector's OTLP
# receiver and sent to (or failed at) Jaeger by its exporter, from the
# collector's metrics on 127.0.0.1:8888. After each load of a mode with spans
# the script waits for the sidecar's export queue and last partial batch and
# for the collector to pass on what it took, so each load's spans (and their
# export CPU) are counted with that load. The collector and Jaeger share the
# 2 cores with the sidecars and the load tool; their CPU per event is
# reported too where the local stack's pid files are found.
#
#   make telemetry-cost                 (stack up, this script, stack down)
#   e2e/telemetry_cost.sh               (with the stack already up)
#
# Environment: COST_ROUNDS (5), COST_EVENTS per mode and round (300000),
# COST_OPEN_EVENTS per mode and round (100000), COST_RATE (10000),
# COST_CONNECTIONS (1), COST_CONCURRENCY (64), SIDECAR_BIN
# (bin/eventbus-sidecar, built by `make build`), COLLECTOR (127.0.0.1:4317),
# COLLECTOR_METRICS (http://127.0.0.1:8888/metrics), COST_SPAN_EXPORT_CPU
# (the spans mode's budget, 1: none). The sidecars get no OTEL_* or
# EVENTBUS_* variable from the caller. With the defaults a run takes about
# 7 minutes.
# Targets: metrics only >= 95 % and default >= 80 % of off (closed loop);
# at COST_RATE, telemetry off <= 25 µs of sidecar CPU per event and every
# span adds <= 10 µs. The closed-loop throughput with every span is reported,
# not judged. The exit status is 1 when a target is not met.
set -euo pipefail
shopt -s inherit_errexit # a failure inside $(...) stops the run too

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${SIDECAR_BIN:-${ROOT}/bin/eventbus-sidecar}"
ROUNDS="${COST_ROUNDS:-5}"
EVENTS="${COST_EVENTS:-300000}"
OPEN_EVENTS="${COST_OPEN_EVENTS:-100000}"
RATE="${COST_RATE:-10000}"
CONNECTIONS="${COST_CONNECTIONS:-1}"
CONCURRENCY="${COST_CONCURRENCY:-64}"
COLLECTOR="${COLLECTOR:-127.0.0.1:4317}"
COLLECTOR_METRICS="${COLLECTOR_METRICS:-http://127.0.0.1:8888/metrics}"
SPAN_EXPORT_CPU="${COST_SPAN_EXPORT_CPU:-1}"
STATE="${STACK_STATE:-${ROOT}/.state/stack}"
TICK="$(getconf CLK_TCK)"
MODES=(off metrics default spans)

die() { echo "telemetry-cost: $*" >&2; exit 1; }
[[ -x "${BIN}" ]] || die "no sidecar at ${BIN}: run make build"
command -v jq >/dev/null || die "jq is required"
(exec 3<>"/dev/tcp/${COLLECTOR%:*}/${COLLECTOR##*:}") 2>/dev/null ||
	die "no collector at ${COLLECTOR}: run make stack-up (or make telemetry-cost)"
curl -fsS --max-time 5 -o /dev/null "${COLLECTOR_METRICS}" ||
	die "no collector metrics at ${COLLECTOR_METRICS}: the span counts need them"

WORK="$(mktemp -d /tmp/telcost.XXXXXX)"
declare -A PID ADMIN SOCK
cleanup() {
	local pid
	for pid in "${PID[@]}"; do
		kill -0 "${pid}" 2>/dev/null && kill -TERM "${pid}" 2>/dev/null || true
	done
	for pid in "${PID[@]}"; do
		for _ in $(seq 100); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.1; done
	done
	rm -rf "${WORK}"
}
trap cleanup EXIT

# mode_flags MODE: the serve flags of each telemetry mode.
mode_flags() {
	case "$1" in
	off) echo "--telemetry-disabled" ;;
	metrics) echo "--traces-disabled --otlp-endpoint http://${COLLECTOR}" ;;
	# Nothing but the endpoint: the sampling and export budget are the
	# defaults a user gets.
	default) echo "--otlp-endpoint http://${COLLECTOR}" ;;
	# No export CPU budget: the budget sheds spans under overload, and this
	# mode measures the cost of exporting every one of them.
	spans) echo "--otlp-endpoint http://${COLLECTOR} --data-sample-ratio 1 --data-trace-rate unlimited --span-export-cpu ${SPAN_EXPORT_CPU}" ;;
	esac
}

# traced MODE: whether MODE records spans.
traced() { [[ "$1" == default || "$1" == spans ]]; }

# cpu_ticks PID: user + system CPU of a process in clock ticks (0 if gone).
cpu_ticks() {
	local stat
	[[ -n "$1" ]] || { echo 0; return; }
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

# sidecar_spans ADMIN: the sidecar's span counters, "exported queue_full
# export_failed shutdown sampled_out queued" (zeros with telemetry off,
# whose /metrics is empty).
sidecar_spans() {
	local m
	m="$(curl -fsS --max-time 5 "http://$1/metrics")" || die "no /metrics at ${1}"
	awk '
		/^eventbus_telemetry_spans_exported_total/ {e += $NF}
		/^eventbus_telemetry_spans_dropped_total.*reason="queue_full"/ {q += $NF}
		/^eventbus_telemetry_spans_dropped_total.*reason="export_failed"/ {f += $NF}
		/^eventbus_telemetry_spans_dropped_total.*reason="shutdown"/ {s += $NF}
		/^eventbus_telemetry_spans_sampled_out_total/ {o += $NF}
		/^eventbus_telemetry_span_queue_size/ {z += $NF}
		END {printf "%d %d %d %d %d %d\n", e, q, f, s, o, z}' <<<"${m}"
}

# collector_spans: the collector's span counters, "accepted refused sent
# send_failed": what its OTLP receiver took and refused, and what its
# exporter passed to Jaeger or failed to.
collector_spans() {
	local m
	m="$(curl -fsS --max-time 5 "${COLLECTOR_METRICS}")" || die "no collector metrics at ${COLLECTOR_METRICS}"
	awk '
		/^otelcol_receiver_accepted_spans/ {a += $NF}
		/^otelcol_receiver_refused_spans/ {r += $NF}
		/^otelcol_exporter_sent_spans/ {s += $NF}
		/^otelcol_exporter_send_failed_spans/ {f += $NF}
		END {printf "%d %d %d %d\n", a, r, s, f}' <<<"${m}"
}

# settle MODE: for a mode with spans, waits until the spans of the load just
# finished have left the sidecar and the collector: the sidecar's export
# queue is empty, its last partial batch has had its batch delay (1 s) and a
# margin, and the collector has passed on (or failed) every span its
# receiver took. Bounded at about 20 s.
settle() {
	local i queued acc ref sent failed
	traced "$1" || return 0
	for ((i = 0; i < 100; i++)); do
		queued="$(sidecar_spans "${ADMIN[$1]}" | cut -d' ' -f6)"
		((queued == 0)) && break
		sleep 0.1
	done
	sleep 1.5
	for ((i = 0; i < 100; i++)); do
		read -r acc ref sent failed <<<"$(collector_spans)"
		((sent + failed >= acc)) && break
		sleep 0.1
	done
}

# snapshot MODE: "sidecar_ticks collector_ticks jaeger_ticks" followed by
# the sidecar's first five and the collector's four span counters.
snapshot() {
	local side col
	side="$(sidecar_spans "${ADMIN[$1]}" | cut -d' ' -f1-5)"
	col="$(collector_spans)"
	echo "$(cpu_ticks "${PID[$1]}") $(cpu_ticks "$(stack_pid collector)") $(cpu_ticks "$(stack_pid jaeger)") ${side} ${col}"
}

# start_sidecar MODE ROUND: starts MODE's sidecar and waits until it serves.
start_sidecar() {
	local mode="$1" round="$2" log="${WORK}/sidecar-$1-$2.log" admin="" pid i unset=()
	SOCK[${mode}]="${WORK}/s-${mode}-${round}.sock"
	for i in $(compgen -e | grep -E '^(OTEL|EVENTBUS)_' || true); do unset+=(-u "${i}"); done
	# shellcheck disable=SC2046 # the flags are words
	env "${unset[@]}" OTEL_RESOURCE_ATTRIBUTES="service.instance.id=telemetry-cost-${mode}-${round}" \
		"${BIN}" serve --socket "${SOCK[${mode}]}" --admin-addr 127.0.0.1:0 --log-level info $(mode_flags "${mode}") \
		>"${log}" 2>&1 &
	pid=$!
	PID[${mode}]="${pid}"
	for ((i = 0; i < 100; i++)); do
		admin="$(grep -so 'admin_addr=[0-9.:]*' "${log}" | head -n1 | cut -d= -f2 || true)"
		[[ -S "${SOCK[${mode}]}" && -n "${admin}" ]] && break
		kill -0 "${pid}" 2>/dev/null || { cat "${log}" >&2; die "sidecar (${mode}) exited at start-up"; }
		sleep 0.1
	done
	[[ -n "${admin}" ]] || { cat "${log}" >&2; die "sidecar (${mode}) not ready after 10s"; }
	ADMIN[${mode}]="${admin}"
	if ((round == 1)); then
		# What the mode resolved to, from the sidecar's own start-up line.
		grep -o 'msg="telemetry [a-z]*".*' "${log}" | head -n1 |
			sed "s/^/telemetry-cost: ${mode}: /; s/ service_name=[^ ]* instance_id=[^ ]*//" >&2 || true
	fi
}

stop_sidecars() {
	local mode
	for mode in "${MODES[@]}"; do kill -TERM "${PID[${mode}]}"; done
	for mode in "${MODES[@]}"; do wait "${PID[${mode}]}" || true; done
	PID=()
}

# slice MODE PHASE EVENTS: one load of EVENTS against MODE's sidecar, then
# its differences of the counters:
#   events elapsed_seconds unsent sidecar_ticks collector_ticks jaeger_ticks
#   exported shed(queue_full) export_failed shutdown sampled_out
#   collector_accepted collector_refused sent_to_jaeger failed_to_jaeger
slice() {
	local mode="$1" phase="$2" n="$3" before after out args
	args=(--socket "${SOCK[${mode}]}" --queue data --events "${n}" --connections "${CONNECTIONS}"
		--concurrency "${CONCURRENCY}" --consumers 1 --json)
	# The open runs' deadline leaves room for a sidecar that falls behind;
	# events still unsent then are reported, and CPU is per event sent.
	[[ "${phase}" == open ]] && args+=(--rate "${RATE}" --duration "$((n / RATE + 20))s") || args+=(--duration 2m)
	before="$(snapshot "${mode}")"
	out="$("${BIN}" load "${args[@]}")" || die "${phase} load against the ${mode} sidecar failed: ${out}"
	[[ "${phase}" == open || "$(jq -r '.incomplete' <<<"${out}")" == false ]] ||
		die "closed load (${mode}) incomplete: ${out}"
	settle "${mode}"
	after="$(snapshot "${mode}")"
	echo "$(jq -r '"\(.sent) \(.elapsed_ns / 1e9) \(.unsent)"' <<<"${out}")" \
		"$(paste -d' ' <(tr ' ' '\n' <<<"${after}") <(tr ' ' '\n' <<<"${before}") | awk '{printf "%d ", $1 - $2}')"
}

# run_round ROUND: one sidecar per mode, both loads against each mode there
# and back, then one results line per mode and load, the two halves summed:
#   1 mode  2 phase  3 round  4 events  5 elapsed seconds  6 unsent
#   7 sidecar ticks  8 collector ticks  9 jaeger ticks
#   10 exported  11 shed (queue_full)  12 export_failed  13 shutdown  14 sampled_out
#   15 collector accepted  16 refused  17 sent to Jaeger  18 failed to Jaeger
run_round() {
	local round="$1" mode phase n line
	for mode in "${MODES[@]}"; do start_sidecar "${mode}" "${round}"; done
	: >"${WORK}/slices"
	for phase in closed open; do
		n="${EVENTS}"
		[[ "${phase}" == open ]] && n="${OPEN_EVENTS}"
		for mode in "${MODES[@]}" "${MODES[3]}" "${MODES[2]}" "${MODES[1]}" "${MODES[0]}"; do
			line="$(slice "${mode}" "${phase}" "$((n / 2))")"
			echo "${mode} ${phase} ${line}" >>"${WORK}/slices"
		done
	done
	stop_sidecars
	awk -v r="${round}" '
		{k = $1 " " $2; if (!(k in seen)) {seen[k] = 1; order[++n] = k}; for (i = 3; i <= NF; i++) sum[k, i] += $i; nf[k] = NF}
		END {
			for (j = 1; j <= n; j++) {
				k = order[j]; line = k " " r " " sum[k, 3] " " sum[k, 4]
				for (i = 5; i <= nf[k]; i++) line = line " " sum[k, i]
				print line
			}
		}' "${WORK}/slices"
}

median() { sort -n | awk '{a[NR] = $1} END {if (NR == 0) print "n/a"; else print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# per_round PHASE MODE EXPR: EXPR evaluated for MODE in every round, one
# value a line; in EXPR, "$" fields are MODE's line and o[f] is field f of
# telemetry off's line of the same round; us(f) and ous(f) turn a ticks
# field into µs per event, rate() and orate() are events per second.
per_round() {
	awk -v p="$1" -v m="$2" -v tick="${TICK}" '
		function us(f) { return $f * 1e6 / tick / $4 }
		function ous(f) { return o[f] * 1e6 / tick / o[4] }
		function rate() { return $4 / $5 }
		function orate() { return o[4] / o[5] }
		$2 != p {next}
		$1 == "off" {for (i = 1; i <= NF; i++) off[$3, i] = $i}
		{line[NR] = $0}
		END {
			for (n in line) {
				split(line[n], f, " ")
				if (f[1] != m) continue
				$0 = line[n]
				for (i = 1; i <= NF; i++) o[i] = off[$3, i]
				printf "%s %.2f\n", $3, ('"$3"')
			}
		}' "${RESULTS}" | sort -n | cut -d' ' -f2
}
med() { per_round "$@" | median; }
list() { per_round "$@" | paste -sd' '; }
total() { # PHASE MODE FIELD: the sum over the rounds
	awk -v p="$1" -v m="$2" -v f="$3" '$2 == p && $1 == m {s += $f} END {printf "%d", s}' "${RESULTS}"
}
SPAN_US='(us(7) - ous(7)) / ($10 / $4)' # sidecar CPU over off, per span exported

started="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "telemetry-cost: ${ROUNDS} rounds x (${MODES[*]}); per mode and round ${EVENTS} events closed loop" \
	"(${CONNECTIONS} publishing connection(s) x ${CONCURRENCY} in flight) and ${OPEN_EVENTS} at ${RATE}/s," \
	"each in two halves; 1 acking consumer; $(nproc) CPUs; ${started}, load average ${load_start}"
RESULTS="${WORK}/results"
: >"${RESULTS}"
for ((r = 1; r <= ROUNDS; r++)); do
	run_round "${r}" >"${WORK}/lines"
	cat "${WORK}/lines" >>"${RESULTS}"
	awk -v tick="${TICK}" '{
		printf "round %s %-7s %-6s %7d events/s  CPU µs/event: sidecar %6.2f, collector %6.2f, jaeger %6.2f" \
			"   spans offered %d: exported %d, shed %d, failed %d, sampled out %d; collector took %d, refused %d, to jaeger %d (failed %d)%s\n",
			$3, $1, $2, $4 / $5, $7 * 1e6 / tick / $4, $8 * 1e6 / tick / $4, $9 * 1e6 / tick / $4,
			$10 + $11 + $12 + $13 + $14, $10, $11, $12 + $13, $14, $15, $16, $17, $18,
			($6 > 0) ? sprintf("   UNSENT %d", $6) : ""}' "${WORK}/lines"
done
ended="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

# Ratios and differences within each round (runs seconds apart) cancel slow
# drifts in the machine's load better than those of medians; both are printed.
echo
echo "telemetry-cost: ${started} (load average ${load_start}) to ${ended} (load average ${load_end})"
echo
echo "closed loop, ${EVENTS} events per mode and round: throughput"
printf '%-9s %10s %8s %12s   %s\n' "mode" "events/s" "of off" "per-round" "per-round ratios to off (%)"
for mode in "${MODES[@]}"; do
	printf '%-9s %10.0f %7.0f%% %11.0f%%   %s\n' "${mode}" "$(med closed "${mode}" 'rate()')" \
		"$(awk -v a="$(med closed "${mode}" 'rate()')" -v b="$(med closed off 'rate()')" 'BEGIN {print a * 100 / b}')" \
		"$(med closed "${mode}" 'rate() * 100 / orate()')" "$(list closed "${mode}" 'rate() * 100 / orate()')"
done
echo
echo "open loop at ${RATE} events/s, ${OPEN_EVENTS} events per mode and round: CPU per event (µs, medians of ${ROUNDS})"
printf '%-9s %8s %10s %10s %9s %9s %10s %12s %10s %8s\n' "mode" "sidecar" "+ over off" "+ over met" \
	"spans/ev" "exp./ev" "µs/span" "µs/span-met" "collector" "jaeger"
for mode in "${MODES[@]}"; do
	over_met=- span=- span_met=-
	if traced "${mode}"; then
		over_met="$(paste -d' ' <(per_round open "${mode}" 'us(7)') <(per_round open metrics 'us(7)') |
			awk '{printf "%.2f\n", $1 - $2}' | median)"
		span="$(med open "${mode}" "${SPAN_US}")"
		span_met="$(paste -d' ' <(per_round open "${mode}" 'us(7)') <(per_round open metrics 'us(7)') \
			<(per_round open "${mode}" '$10 / $4') | awk '{printf "%.2f\n", ($1 - $2) / $3}' | median)"
	fi
	printf '%-9s %8.2f %10.2f %10s %9.3f %9.3f %10s %12s %10.2f %8.2f\n' "${mode}" \
		"$(med open "${mode}" 'us(7)')" "$(med open "${mode}" 'us(7) - ous(7)')" "${over_met}" \
		"$(med open "${mode}" '($10 + $11 + $12 + $13 + $14) / $4')" "$(med open "${mode}" '$10 / $4')" \
		"${span}" "${span_met}" "$(med open "${mode}" 'us(8)')" "$(med open "${mode}" 'us(9)')"
done
echo "  (spans/ev: spans offered per event, shed ones included; exp./ev: exported per event; µs/span: the"
echo "   sidecar's CPU per event over telemetry off, per span exported; µs/span-met: the same over metrics only)"
for mode in "${MODES[@]}"; do
	printf '  per-round sidecar µs/event, %-7s: %s\n' "${mode}" "$(list open "${mode}" 'us(7)')"
done
for mode in default spans; do
	printf '  per-round µs/span over off, %-7s: %s\n' "${mode}" "$(list open "${mode}" "${SPAN_US}")"
done
unsent_sum=0
for mode in "${MODES[@]}"; do unsent_sum=$((unsent_sum + $(total open "${mode}" 6))); done
((unsent_sum == 0)) || echo "  ${unsent_sum} events of the open runs were due but never sent (BEHIND)"
echo
echo "spans over ${ROUNDS} rounds (sidecar's counters; collector's receiver and exporter):"
for mode in default spans; do
	for phase in closed open; do
		printf '  %-7s %-6s offered %9d  exported %9d  shed %9d  failed %6d  sampled out %6d | collector took %9d  refused %6d  to jaeger %9d  failed %6d\n' \
			"${mode}" "${phase}" \
			"$(($(total "${phase}" "${mode}" 10) + $(total "${phase}" "${mode}" 11) + $(total "${phase}" "${mode}" 12) + $(total "${phase}" "${mode}" 13) + $(total "${phase}" "${mode}" 14)))" \
			"$(total "${phase}" "${mode}" 10)" "$(total "${phase}" "${mode}" 11)" \
			"$(($(total "${phase}" "${mode}" 12) + $(total "${phase}" "${mode}" 13)))" "$(total "${phase}" "${mode}" 14)" \
			"$(total "${phase}" "${mode}" 15)" "$(total "${phase}" "${mode}" 16)" \
			"$(total "${phase}" "${mode}" 17)" "$(total "${phase}" "${mode}" 18)"
	done
done

# The targets, each from the medians above.
status=0
target() { # NAME VALUE OP BOUND UNIT
	local ok
	ok="$(awk -v v="$2" -v b="$4" -v op="$3" 'BEGIN {print (op == ">=" ? v >= b : v <= b) ? "met" : "NOT met"}')"
	printf '  %-62s %8.1f %s %s %-3s %s\n' "$1" "$2" "$3" "$4" "$5" "${ok}"
	[[ "${ok}" == met ]] || status=1
}
echo
printf '  %-62s %8.1f %%\n' "every span, closed loop, per-round % of off (reported)" "$(med closed spans 'rate() * 100 / orate()')"
echo "targets:"
target "metrics only, closed loop, per-round % of off" "$(med closed metrics 'rate() * 100 / orate()')" ">=" 95 "%"
target "default telemetry, closed loop, per-round % of off" "$(med closed default 'rate() * 100 / orate()')" ">=" 80 "%"
target "telemetry off at ${RATE}/s, sidecar CPU µs per event" "$(med open off 'us(7)')" "<=" 25 "µs"
target "every span at ${RATE}/s, sidecar CPU µs per span exported over off" "$(med open spans "${SPAN_US}")" "<=" 10 "µs"
exit "${status}"
