# Python client: clients/python (package eventbus_sidecar). Included by the
# top-level Makefile. Its tests start real `eventbus-sidecar serve` processes,
# so they run after `build` and use that binary.
PYTHON ?= python3
PY_CLIENT_DIR := clients/python

.PHONY: test-python python-install
TEST_TARGETS += test-python

# Runs the client's unittest suite (including the seed's six tests, one of
# which waits the real 5 s signal timeout). Prints unittest's summary and a
# "python: N passed, N failed" line; fails on any failure or error.
test-python: build
	cd $(PY_CLIENT_DIR) && EVENTBUS_SIDECAR_BIN=$(abspath $(BIN)) $(PYTHON) -m tests

# Installs the client into the current Python environment. The in-tree
# build backend needs nothing from a package index.
python-install:
	$(PYTHON) -m pip install --no-index ./$(PY_CLIENT_DIR)
