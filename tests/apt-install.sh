#!/usr/bin/env bash
# Install Debian packages for the test suite (tests/run.sh calls it with what is missing).
#
# Waits while another apt or dpkg holds its locks — a machine shared with other jobs, or
# unattended-upgrades — instead of failing at once with "Could not get lock". dpkg's lock is
# waited for by apt itself (DPkg::Lock::Timeout); apt-get update does not wait for its lists
# lock, so a command that fails only because a lock is held is retried until the same deadline.
# ENVCACHE_APT_LOCK_WAIT: seconds to wait in all (default 900).
set -euo pipefail
[ $# -gt 0 ] || exit 0
export DEBIAN_FRONTEND=noninteractive
wait_s=${ENVCACHE_APT_LOCK_WAIT:-900}
deadline=$((SECONDS + wait_s))

apt_locked() {
  local err
  while true; do
    if err=$(apt-get -o DPkg::Lock::Timeout="$((deadline > SECONDS ? deadline - SECONDS : 1))" "$@" 2>&1 >/dev/null); then
      return 0
    fi
    if [[ $err != *"Could not get lock"* ]] || (( SECONDS >= deadline )); then
      echo "$err" >&2
      return 1
    fi
    echo "tests/apt-install.sh: apt is busy (another install holds its lock); waiting" >&2
    sleep 3
  done
}

# The package lists may be missing or stale on a fresh machine: update only when install needs it.
apt_locked install -y -qq "$@" 2>/dev/null || { apt_locked update -qq && apt_locked install -y -qq "$@"; }
