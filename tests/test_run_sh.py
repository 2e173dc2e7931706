"""The test command on a shared machine: its apt step waits while another install holds dpkg's
lock, instead of failing at once with "Could not get lock" (tests/run.sh → tests/apt-install.sh)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Takes dpkg's frontend lock the way apt and dpkg do (fcntl), says so, holds it, lets go.
HOLD = """
import fcntl, sys, time
with open("/var/lib/dpkg/lock-frontend", "a") as lock:
    fcntl.lockf(lock, fcntl.LOCK_EX)  # wait our turn if a real install holds it right now
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_the_apt_step_waits_for_a_held_dpkg_lock() -> None:
    assert "bash tests/apt-install.sh" in (ROOT / "tests" / "run.sh").read_text()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, "4"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        began = time.monotonic()
        # Already installed, so apt has nothing to fetch: all it needs is the lock.
        result = subprocess.run(["bash", "tests/apt-install.sh", "busybox-static"], cwd=ROOT, capture_output=True,
                                text=True, timeout=600)
        waited = time.monotonic() - began
    finally:
        holder.wait(30)
    assert result.returncode == 0, result.stderr
    assert waited >= 3, f"apt-install.sh finished in {waited:.1f}s while dpkg was locked for 4s: it did not wait"
    assert "Could not get lock" not in result.stderr
