#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against a real Prometheus, HAProxy and
# Alertmanager.
# Installs what the tests need from Debian's packages when it is missing (as root, or with
# sudo). Usage: tests/run.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing from Debian: ${need[*]}" >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Fail here, not halfway through the suite, if anything is still missing.
for pair in prometheus:prometheus promtool:prometheus haproxy:haproxy \
    prometheus-alertmanager:prometheus-alertmanager openssl:openssl python3:python3; do
  tool=${pair%%:*}
  command -v "$tool" >/dev/null 2>&1 || { echo "missing: $tool (Debian package ${pair#*:})" >&2; exit 1; }
done
[ -f ../shared/traces/nasa_http_jul95_1min.csv ] || { echo "missing: ../shared/traces/nasa_http_jul95_1min.csv" >&2; exit 1; }

cargo test --locked "$@"
