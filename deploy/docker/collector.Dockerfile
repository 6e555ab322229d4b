# The collector distribution of deploy/collector, FROM scratch.
# Context: the folder deploy/docker/images.sh prepares (otelcol-eventbus,
# config.yaml = otel-collector.yaml).
FROM scratch
COPY otelcol-eventbus /otelcol-eventbus
COPY config.yaml /etc/otelcol/config.yaml
USER 10003:10003
# Inside a container the listeners must leave loopback; the exporter
# target is the compose service "jaeger".
ENV OTELCOL_OTLP_GRPC_ENDPOINT=0.0.0.0:4317 \
    OTELCOL_OTLP_HTTP_ENDPOINT=0.0.0.0:4318 \
    OTELCOL_PROMETHEUS_ENDPOINT=0.0.0.0:8889 \
    OTELCOL_TELEMETRY_HOST=0.0.0.0 \
    OTELCOL_JAEGER_ENDPOINT=jaeger:4317
EXPOSE 4317 4318 8888 8889
ENTRYPOINT ["/otelcol-eventbus"]
CMD ["--config", "file:/etc/otelcol/config.yaml"]
