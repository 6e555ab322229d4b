# eventbus-sidecar runtime image from a binary built outside Docker
# (goreleaser style: COPY only). Same result as deploy/Dockerfile.
#
#   CGO_ENABLED=0 make build      # static bin/eventbus-sidecar
#   docker build -f deploy/docker/sidecar.Dockerfile -t eventbus-sidecar .
#
# `make images` does exactly this (and checks the binary is static). The
# image has no libc: a binary built with CGO on will not start in it.
FROM scratch
COPY bin/eventbus-sidecar /usr/local/bin/eventbus-sidecar
COPY --chown=10001:10000 deploy/docker/rootfs/ /
USER 10001:10000
ENV EVENTBUS_SOCKET=/run/eventbus/eventbus.sock
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/eventbus-sidecar"]
CMD ["serve"]
