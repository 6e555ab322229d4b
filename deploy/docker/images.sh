#!/usr/bin/env bash
# make images: builds the local images the compose test uses, FROM scratch,
# from binaries this project builds or installs itself (no registry here):
#   eventbus-local/sidecar     bin/eventbus-sidecar (deploy/docker/sidecar.Dockerfile)
#   eventbus-local/demo        the same binary, `demo` command (demo.Dockerfile)
#   eventbus-local/otelcol     deploy/collector/otelcol-eventbus
#   eventbus-local/jaeger      deploy/jaeger/jaeger
#   eventbus-local/prometheus  Debian's /usr/bin/prometheus and its libc
# Tag: $IMAGE_TAG (default "local"). Expects `CGO_ENABLED=0 make build` and
# deploy/stack/install.sh to have run (the make target does both).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TAG="${IMAGE_TAG:-local}"
# Build contexts per tag, so two runs with different tags do not mix.
CTX="${ROOT}/.state/docker/${TAG}"
# SIDECAR_BIN: the static sidecar binary to package (make build's output).
SIDECAR_BIN="${SIDECAR_BIN:-bin/eventbus-sidecar}"
cd "${ROOT}"
mkdir -p "${CTX}"

log() { printf 'images: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# is_static FILE: the scratch images have no libc.
is_static() { ! ldd "$1" >/dev/null 2>&1; }

for bin in "${SIDECAR_BIN}" deploy/collector/otelcol-eventbus deploy/jaeger/jaeger; do
	[[ -x "${bin}" ]] || die "${bin} missing (make build / make stack-build)"
	is_static "${bin}" || die "${bin} is dynamically linked; build it with CGO_ENABLED=0"
done

build() {
	local name="$1" dockerfile="$2" context="$3" start=${SECONDS}
	# The classic builder (docker-compose v1's engine has no buildx here).
	if ! DOCKER_BUILDKIT=0 docker build -f "${dockerfile}" -t "eventbus-local/${name}:${TAG}" "${context}" >"${CTX}/${name}.build.log" 2>&1; then
		tail -n 20 "${CTX}/${name}.build.log" >&2
		die "docker build of ${name} failed; log: ${CTX}/${name}.build.log"
	fi
	log "eventbus-local/${name}:${TAG} built in $((SECONDS - start))s"
}

# The sidecar and the demo app: repo root context, narrowed by a
# throw-away context folder so that Docker does not send the whole tree
# (stack binaries, Prometheus data) with every build.
rm -rf "${CTX}/sidecar"
mkdir -p "${CTX}/sidecar/bin" "${CTX}/sidecar/deploy/docker"
cp "${SIDECAR_BIN}" "${CTX}/sidecar/bin/eventbus-sidecar"
cp -r deploy/docker/rootfs "${CTX}/sidecar/deploy/docker/"
build sidecar deploy/docker/sidecar.Dockerfile "${CTX}/sidecar"
build demo deploy/docker/demo.Dockerfile "${CTX}/sidecar"

rm -rf "${CTX}/otelcol" && mkdir -p "${CTX}/otelcol"
cp deploy/collector/otelcol-eventbus "${CTX}/otelcol/"
cp otel-collector.yaml "${CTX}/otelcol/config.yaml"
build otelcol deploy/docker/collector.Dockerfile "${CTX}/otelcol"

rm -rf "${CTX}/jaeger" && mkdir -p "${CTX}/jaeger"
cp deploy/jaeger/jaeger "${CTX}/jaeger/"
cp deploy/jaeger/config.yaml "${CTX}/jaeger/config.yaml"
build jaeger deploy/docker/jaeger.Dockerfile "${CTX}/jaeger"

# Prometheus: Debian's binary links libc, so its shared libraries go in too,
# each at the path the dynamic loader expects.
prom="$(command -v prometheus)" || die "prometheus missing (deploy/stack/install.sh)"
promtool="$(command -v promtool)" || die "promtool missing (deploy/stack/install.sh)"
root="${CTX}/prometheus/rootfs"
rm -rf "${CTX}/prometheus" && mkdir -p "${root}/bin" "${root}/etc/prometheus" "${CTX}/prometheus/data"
echo "Prometheus TSDB folder" >"${CTX}/prometheus/data/.keep"
cp "${prom}" "${promtool}" "${root}/bin/"
# ldd lines: "\tlibc.so.6 => /lib/.../libc.so.6 (0x...)" and "\t/lib64/ld-linux-x86-64.so.2 (0x...)".
for lib in $(ldd "${prom}" "${promtool}" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $1 !~ /:$/ {print $1}' | sort -u); do
	mkdir -p "${root}$(dirname "${lib}")"
	cp -L "${lib}" "${root}${lib}"
done
if [[ -d /usr/share/prometheus/web ]]; then
	mkdir -p "${root}/usr/share/prometheus"
	cp -r /usr/share/prometheus/web "${root}/usr/share/prometheus/"
fi
cp deploy/docker/prometheus.yml "${root}/etc/prometheus/prometheus.yml"
build prometheus deploy/docker/prometheus.Dockerfile "${CTX}/prometheus"

# Each image must at least start its binary.
docker run --rm "eventbus-local/sidecar:${TAG}" version >/dev/null || die "sidecar image does not run"
docker run --rm "eventbus-local/demo:${TAG}" --help >/dev/null || die "demo image does not run \`eventbus-sidecar demo\` (is the demo command wired into the CLI?)"
docker run --rm "eventbus-local/otelcol:${TAG}" --version >/dev/null || die "otelcol image does not run"
docker run --rm "eventbus-local/jaeger:${TAG}" version >/dev/null 2>&1 || die "jaeger image does not run"
docker run --rm --entrypoint /bin/prometheus "eventbus-local/prometheus:${TAG}" --version >/dev/null 2>&1 || die "prometheus image does not run"
log "all images run their binaries"
