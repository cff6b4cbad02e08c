#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against a real Prometheus, real HTTP
# receivers and a real headless Chromium.
# Installs what the tests need from Debian's packages when it is missing (as root, or with
# sudo). Usage: tests/run.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing from Debian: ${need[*]}" >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Fail here, not halfway through the suite, if anything is still missing.
for tool in prometheus promtool chromium; do
  command -v "$tool" >/dev/null 2>&1 || { echo "missing: $tool (Debian packages: prometheus, chromium)" >&2; exit 1; }
done
[ -f ../shared/traces/nasa_http_jul95_1min.csv ] || { echo "missing: ../shared/traces/nasa_http_jul95_1min.csv" >&2; exit 1; }

cargo test --locked "$@"
