#!/usr/bin/env bash
# Installs promtool (from Debian's prometheus package) when it is missing.
# Idempotent: does nothing when promtool is already on PATH. Needs root for
# apt-get, as on the project's machines and in CI.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
	echo "promtool present: $(promtool --version 2>&1 | head -n1)"
	exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends keeps the node exporter and friends out; the
# package ships prometheus and promtool. No service is started in a
# container without an init system.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null 2>&1 || {
	echo "install.sh: prometheus package installed but promtool is not on PATH" >&2
	exit 1
}
echo "promtool installed: $(promtool --version 2>&1 | head -n1)"
