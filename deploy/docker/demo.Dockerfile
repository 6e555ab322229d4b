# The simulated trading app (`eventbus-sidecar demo`, package demo): the
# same static binary as the sidecar, run as another non-root user (10002)
# that shares only the group 10000 with the sidecar, which is what it needs
# to use the sidecar's 0660 socket.
#
#   CGO_ENABLED=0 make build
#   docker build -f deploy/docker/demo.Dockerfile -t eventbus-trading-demo .
FROM scratch
COPY bin/eventbus-sidecar /usr/local/bin/eventbus-sidecar
USER 10002:10000
ENV EVENTBUS_SOCKET=/run/eventbus/eventbus.sock
ENTRYPOINT ["/usr/local/bin/eventbus-sidecar", "demo"]
