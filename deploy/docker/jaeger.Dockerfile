# Jaeger v2 built by deploy/jaeger (module v1.76.0 = Jaeger 2.13.0), FROM
# scratch, in-memory storage. Built from the Go module proxy it has no web
# UI (a placeholder page); the HTTP API under /api works.
# Context: the folder deploy/docker/images.sh prepares (jaeger, config.yaml).
FROM scratch
COPY jaeger /jaeger
COPY config.yaml /etc/jaeger/config.yaml
USER 10004:10004
ENV JAEGER_OTLP_GRPC_ENDPOINT=0.0.0.0:4317 \
    JAEGER_QUERY_HTTP_ENDPOINT=0.0.0.0:16686 \
    JAEGER_QUERY_GRPC_ENDPOINT=0.0.0.0:16685
EXPOSE 4317 16685 16686
ENTRYPOINT ["/jaeger"]
CMD ["--config", "file:/etc/jaeger/config.yaml"]
