#!/usr/bin/env bash
# The test command (README, "Run the tests"): installs everything the suite needs on a fresh
# Debian machine — system packages for the real engines and registry clients, the package with
# its test extras — then runs pytest. The servers (dockerd, the reference registry, envcache
# daemons) are started by the test fixtures themselves, on loopback, and stopped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in dockerd:docker.io buildah:buildah skopeo:skopeo docker-registry:docker-registry \
            debootstrap:debootstrap busybox:busybox-static chromium:chromium chromedriver:chromium-driver \
            curl:curl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${need[*]}" >&2
  bash tests/apt-install.sh "${need[@]}"   # waits while another install holds apt's locks
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
exec python3 -m pytest "$@"
