#!/usr/bin/env bash
# Builds Jaeger v2 from the Go module proxy into deploy/jaeger/jaeger.
# go.mod pins github.com/jaegertracing/jaeger v1.76.0 as a tool dependency
# (`go get -tool`, since a plain `go install` of it is refused). The binary is
# rebuilt only when go.mod, go.sum or this script change: a cold build takes
# about 8 minutes on 2 cores. CGO is off so the binary is static and can go
# into a FROM scratch image unchanged.
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${dir}/jaeger"
cd "${dir}"
if [[ -x "${out}" ]]; then
	stale=0
	for f in go.mod go.sum build.sh; do
		[[ "${f}" -nt "${out}" ]] && stale=1
	done
	if [[ "${stale}" == 0 ]]; then
		echo "jaeger: ${out} is up to date"
		exit 0
	fi
fi
echo "jaeger: building ${out} (about 8 minutes cold)"
start=${SECONDS}
CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags='-s -w' -o "${out}.tmp" github.com/jaegertracing/jaeger/cmd/jaeger
mv "${out}.tmp" "${out}"
echo "jaeger: built in $((SECONDS - start))s"
