# Prometheus from Debian's package, FROM scratch. Debian's binary is not
# static (it links libc), so deploy/docker/images.sh copies the libraries
# `ldd` lists into the context under their own paths (lib/, lib64/), next
# to the binary, promtool, the classic web assets and a default config.
FROM scratch
COPY rootfs/ /
# The TSDB folder (and the named volume docker-compose initialises from
# it) must belong to the user Prometheus runs as.
COPY --chown=65534:65534 data/ /prometheus/
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=0.0.0.0:9090"]
