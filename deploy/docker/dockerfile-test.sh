#!/usr/bin/env bash
# make dockerfile-test: builds deploy/Dockerfile (the users' multi-stage
# build from source) for real and runs the image. The official Go image
# cannot be pulled here, so GO_IMAGE is a FROM scratch image of this
# machine's Go plus an offline copy of the root module's dependencies
# (deploy/docker/toolchain.Dockerfile); the Dockerfile itself is unchanged.
# Checks: the runtime image starts, is FROM scratch (one binary, no shell),
# runs as 10001:10000 and owns /run/eventbus for the socket.
# Skipped, saying why, without a Docker daemon.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${ROOT}"
if ! out="$(docker info --format '{{.ServerVersion}}' 2>&1)"; then
	echo "dockerfile-test: SKIPPED: no Docker daemon answers here (docker info: ${out//$'\n'/ })"
	exit 0
fi
log() { printf 'dockerfile-test: %s\n' "$*" >&2; }
passed=0
ok() { log "ok: $*"; passed=$((passed + 1)); }
fail() { log "FAIL: $*"; echo "dockerfile-test: ${passed} passed, 1 failed"; exit 1; }

TAG="${IMAGE_TAG:-local}"
CTX="${ROOT}/.state/docker/toolchain"
start=${SECONDS}
rm -rf "${CTX}" && mkdir -p "${CTX}/tmp" "${CTX}/gomodcache"
echo "scratch has no /tmp" >"${CTX}/tmp/.keep"
cp -a "$(go env GOROOT)" "${CTX}/go"
# The root module's dependencies, copied out of this machine's module cache
# (no network: GOPROXY points at the cache's download folder).
host_cache="$(go env GOMODCACHE)"
GOMODCACHE="${CTX}/gomodcache" GOPROXY="file://${host_cache}/cache/download" GOFLAGS=-mod=mod \
	GONOSUMDB='*' GOSUMDB=off go mod download
DOCKER_BUILDKIT=0 docker build -q -f deploy/docker/toolchain.Dockerfile -t "eventbus-local/go-toolchain:${TAG}" "${CTX}" >/dev/null ||
	fail "toolchain image did not build"
log "toolchain image built in $((SECONDS - start))s"

start=${SECONDS}
if ! DOCKER_BUILDKIT=0 docker build --build-arg "GO_IMAGE=eventbus-local/go-toolchain:${TAG}" \
	-f deploy/Dockerfile -t "eventbus-local/sidecar-from-source:${TAG}" . >"${ROOT}/.state/docker/from-source.build.log" 2>&1; then
	tail -n 30 "${ROOT}/.state/docker/from-source.build.log" >&2
	fail "deploy/Dockerfile did not build"
fi
ok "deploy/Dockerfile built in $((SECONDS - start))s"

image="eventbus-local/sidecar-from-source:${TAG}"
version="$(docker run --rm "${image}" version)" || fail "the image does not run: ${version}"
ok "the image runs: ${version}"
user="$(docker image inspect --format '{{.Config.User}}' "${image}")"
[[ "${user}" == "10001:10000" ]] || fail "image user ${user}, want 10001:10000"
ok "runs as non-root 10001:10000"
if docker run --rm --entrypoint /bin/sh "${image}" -c true >/dev/null 2>&1; then
	fail "the runtime image has a shell: not minimal"
fi
layers="$(docker history -q "${image}" | wc -l)"
ok "no shell in the runtime image (FROM scratch, ${layers} history entries)"
# The sidecar serves on its socket in the image's own /run/eventbus, as
# the image's user, without any volume: proves the folder's ownership.
cid="$(docker run -d --rm "${image}" serve --admin-addr off)"
trap 'docker rm -f "${cid}" >/dev/null 2>&1 || true' EXIT
deadline=$((SECONDS + 30))
until docker logs "${cid}" 2>&1 | grep -q 'serving'; do
	((SECONDS < deadline)) || fail "sidecar in the image did not start serving: $(docker logs "${cid}" 2>&1 | tail -n 5)"
	docker ps -q --no-trunc | grep -q "${cid}" || fail "sidecar in the image exited: $(docker logs "${cid}" 2>&1 | tail -n 5)"
	sleep 0.5
done
ok "serves on /run/eventbus/eventbus.sock as the image's user"
docker rm -f "${cid}" >/dev/null
# The toolchain context and images are large (Go + module cache): drop
# them, and the build stage the classic builder keeps (labelled in
# deploy/Dockerfile).
docker image rm "${image}" "eventbus-local/go-toolchain:${TAG}" >/dev/null
docker image prune -f --filter label=io.eventbus-sidecar.stage=build >/dev/null
rm -rf "${CTX}"
echo "dockerfile-test: ${passed} passed, 0 failed"
