"""Reliability soak: the issue 13 campaign for many more kills than the test suite can afford.

    python3 benchmarks/soak_reliability.py [--kills 200] [--seed 13] [--out benchmarks/results]

A real ``envcache serve`` (this checkout) over a fresh data directory under /tmp runs the
campaign of ``tests/fixtures/campaign.py``: one client pushing like docker (HEAD, mount or
upload — monolithic or chunked —, PUT the manifest), pushing old garbage again while gc
collects it, untagging, and a gc loop with a 2 s grace beside it. After a random 0.2–2 s the
daemon gets SIGKILL, is started again on the same data, and the ledger of everything it
acknowledged is checked: tagged images (tag → same digest, every blob byte for byte), blobs
acknowledged within their grace period, "blob unknown" answers for blobs the client had just been
told exist, and fsck (report-only) after every restart. Images from earlier rounds are sampled
(50 per round) and all of them checked every 20 rounds and at the end.

It reports "N tried, N survived, N lost" (tried = acknowledged writes checked after a restart,
counted once per check) to ``<out>/soak_reliability.md`` and ``.json``. It is a correctness soak,
not a speed measurement: a loaded machine changes where the kills land, not what must hold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures.campaign import GRACE, Ledger, campaign  # noqa: E402
from tests.fixtures.daemon import start_daemon_process  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    command = f"python3 benchmarks/soak_reliability.py --kills {args.kills} --seed {args.seed}"
    work = Path(tempfile.mkdtemp(prefix="envcache-soak-"))
    load_start = round(os.getloadavg()[0], 2)
    started = time.monotonic()

    def progress(ledger: Ledger) -> None:
        if ledger.kills % 10 == 0:
            print(f"[{time.monotonic() - started:6.0f}s] {ledger.summary()}", flush=True)

    try:
        ledger = asyncio.run(campaign(work / "data", args.kills, seed=args.seed, start=start_daemon_process,
                                      round_seconds=(0.2, 2.0), full_every=20, on_round=progress))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = round(time.monotonic() - started, 1)
    result = {
        "command": command, "kills": ledger.kills, "tried": ledger.tried, "survived": ledger.survived,
        "lost": len(ledger.lost), "blob_unknown": len(ledger.blob_unknown), "fsck_problems": len(ledger.fsck_problems),
        "images_pushed": ledger.counter, "gc_grace_seconds": GRACE, "seconds": seconds,
        "lost_items": ledger.lost[:20], "blob_unknown_items": ledger.blob_unknown[:20],
        "meta": {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
                 "cpus": os.cpu_count(), "load_1min": [load_start, round(os.getloadavg()[0], 2)]},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak_reliability.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "soak_reliability.md").write_text(f"""# Reliability soak (issue 13 campaign)

Command: `{command}`  
Run: {result['meta']['when']} on {os.cpu_count()} shared cores, Python {platform.python_version()}, {seconds} s.

| kills (SIGKILL, then restart) | acknowledged writes tried | survived | lost | "blob unknown" | fsck problems |
| ---: | ---: | ---: | ---: | ---: | ---: |
| {ledger.kills} | {ledger.tried} | {ledger.survived} | {len(ledger.lost)} | {len(ledger.blob_unknown)} | {len(ledger.fsck_problems)} |

**{ledger.tried} tried, {ledger.survived} survived, {len(ledger.lost)} lost.** {ledger.counter} images were pushed
while a gc loop (grace {GRACE:g} s) collected the garbage of untagged ones and old garbage was pushed
again; each round ran 0.2–2 s before the kill. "Tried" counts acknowledged writes checked after a
restart (an image checked after several restarts counts at each; older images are sampled between
the full checks every 20 rounds and at the end). Load average (1 min) at start and
end: {load_start}, {result['meta']['load_1min'][1]} — other jobs shared the machine, which changes
where the kills land, not what must hold.
""")
    print(ledger.summary())
    return 0 if not (ledger.lost or ledger.blob_unknown or ledger.fsck_problems) else 1


if __name__ == "__main__":
    raise SystemExit(main())
