# eventbus-sidecar runtime image from a binary built outside Docker
# (goreleaser style: COPY only). Same result as deploy/Dockerfile.
#
#   make images                   # eventbus-local/sidecar:local, among others
#
# `make images` builds bin/eventbus-sidecar with CGO_ENABLED=0, checks it is
# static and builds this file with a context folder holding only that binary
# and deploy/docker/rootfs (the repository's .dockerignore keeps bin/ out of
# a build from the repository root, so `docker build .` cannot use this
# file). The image has no libc: a binary built with CGO on will not start in it.
FROM scratch
COPY bin/eventbus-sidecar /usr/local/bin/eventbus-sidecar
COPY --chown=10001:10000 deploy/docker/rootfs/ /
USER 10001:10000
ENV EVENTBUS_SOCKET=/run/eventbus/eventbus.sock
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/eventbus-sidecar"]
CMD ["serve"]
