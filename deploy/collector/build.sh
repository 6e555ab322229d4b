#!/usr/bin/env bash
# Builds the collector distribution into deploy/collector/otelcol-eventbus.
# The binary is rebuilt only when a source file (main.go, go.mod, go.sum,
# this script) is newer than it, because a cold build takes minutes on the
# shared 2-core machines. CGO is off so the binary is static and can go into a
# FROM scratch image unchanged.
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${dir}/otelcol-eventbus"
cd "${dir}"
if [[ -x "${out}" ]]; then
	stale=0
	for f in main.go go.mod go.sum build.sh; do
		[[ "${f}" -nt "${out}" ]] && stale=1
	done
	if [[ "${stale}" == 0 ]]; then
		echo "collector: ${out} is up to date"
		exit 0
	fi
fi
echo "collector: building ${out} (takes a few minutes cold)"
start=${SECONDS}
CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags='-s -w' -o "${out}.tmp" .
mv "${out}.tmp" "${out}"
echo "collector: built in $((SECONDS - start))s"
