#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against a real Prometheus, HAProxy,
# Alertmanager, etcd, real HTTP receivers, a real headless Chromium and the Standard Webhooks
# library (PyPI standardwebhooks) checking real deliveries.
# Installs what the tests need from Debian's packages when it is missing (as root, or with
# sudo). Usage: tests/run.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# tool:Debian package
tools="prometheus:prometheus promtool:prometheus haproxy:haproxy
  prometheus-alertmanager:prometheus-alertmanager chromium:chromium openssl:openssl python3:python3
  etcd:etcd-server systemd-analyze:systemd"

need=()
for pair in $tools; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
# pip, to install the Standard Webhooks library below (Debian ships it apart from python3).
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing from Debian: ${need[*]}" >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Fail here, not halfway through the suite, if anything is still missing.
for pair in $tools; do
  tool=${pair%%:*}
  command -v "$tool" >/dev/null 2>&1 || { echo "missing: $tool (Debian package ${pair#*:})" >&2; exit 1; }
done
# The Standard Webhooks library that tests/standard_webhooks.rs verifies real deliveries
# with, pinned. PIP_BREAK_SYSTEM_PACKAGES lets a Debian python3 (PEP 668) take it too.
swh=standardwebhooks==1.3.0
if ! python3 -c 'import standardwebhooks' >/dev/null 2>&1; then
  echo "installing from PyPI: $swh" >&2
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check "$swh" ||
    { echo "cannot install $swh (python3 -m pip install $swh)" >&2; exit 1; }
fi
python3 -c 'import standardwebhooks' ||
  { echo "missing: the Python package standardwebhooks (python3 -m pip install $swh)" >&2; exit 1; }
[ -f ../shared/traces/nasa_http_jul95_1min.csv ] || { echo "missing: ../shared/traces/nasa_http_jul95_1min.csv" >&2; exit 1; }

# --no-fail-fast: one failing file must not hide the failures of the files after it.
cargo test --locked --no-fail-fast "$@"
