# A Go toolchain image FROM scratch: this machine's Go (static binaries)
# and, because no module proxy can be reached from a build container here,
# a module cache holding exactly the root module's dependencies. It stands
# in for the official Go image when dockerfile-test builds
# deploy/Dockerfile (GO_IMAGE=eventbus-local/go-toolchain). Context: the
# folder deploy/docker/dockerfile-test.sh prepares.
FROM scratch
COPY go/ /usr/local/go/
COPY gomodcache/ /go/pkg/mod/
COPY tmp/ /tmp/
ENV PATH=/usr/local/go/bin \
    GOROOT=/usr/local/go \
    GOPATH=/go \
    GOMODCACHE=/go/pkg/mod \
    GOCACHE=/tmp/go-build \
    HOME=/tmp \
    GOPROXY=off \
    GOTOOLCHAIN=local \
    GOFLAGS=-buildvcs=false
