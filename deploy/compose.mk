# Images and docker-compose.
#   make images        local FROM scratch images of the sidecar, the demo
#                      app, the collector, Jaeger and Prometheus
#   make compose-test  docker-compose.yml up with those images, checked,
#                      torn down (skipped, saying why, without a daemon)
#   make dockerfile-test  deploy/Dockerfile (users' build from source) built
#                      and run for real with a local Go toolchain image;
#                      about 9 min on a loaded 2-core machine, so it is not
#                      in TEST_TARGETS (run it when deploy/Dockerfile or
#                      go.mod changes)
.PHONY: images compose-test dockerfile-test

images:
	CGO_ENABLED=0 $(MAKE) --no-print-directory build
	deploy/stack/install.sh
	deploy/docker/images.sh

compose-test:
	deploy/docker/compose-test.sh

dockerfile-test:
	deploy/docker/dockerfile-test.sh

TEST_TARGETS += compose-test
