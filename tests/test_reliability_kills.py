"""The campaign of issue 13 in the suite, bounded in time: a real ``envcache serve`` under pushes,
re-pushes of old garbage, untags and a gc loop with a 2 s grace — and, in the second test,
SIGKILLed at 20 random moments (mid-upload, mid-manifest, mid-gc) and restarted. Every write the
daemon acknowledged must still be there byte for byte, no push may meet "blob unknown" for a blob
it was just told exists, and fsck must find no problem (crash leftovers are only a note). The
long soak is ``benchmarks/soak_reliability.py``; the ledger is ``tests/fixtures/campaign.py``.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import aiohttp

from tests.fixtures.campaign import Ledger, Workload, campaign, check
from tests.fixtures.daemon import start_daemon_process


async def test_gc_looping_during_pushes_and_repushes_loses_nothing(daemon_process, tmp_path: Path) -> None:
    proc = daemon_process(tmp_path / "data")
    ledger = Ledger()
    async with aiohttp.ClientSession() as http:
        work = asyncio.create_task(Workload(http, proc.url, ledger, random.Random(1311)).run())
        await asyncio.sleep(8)
        assert not work.done(), work.exception()
        work.cancel()
        await asyncio.wait([work])
        await check(http, proc.url, proc.data_dir, ledger, time.monotonic())
    assert ledger.counter > 20 and ledger.tried > 40, ledger.summary()
    assert (ledger.lost, ledger.blob_unknown, ledger.fsck_problems) == ([], [], []), ledger.summary()


async def test_kill_9_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    ledger = await campaign(tmp_path / "data", 20, seed=1312, start=start_daemon_process)
    assert ledger.kills == 20 and ledger.tried > 100, ledger.summary()
    assert ledger.lost == [], ledger.summary() + "\n" + "\n".join(ledger.lost[:10])
    assert ledger.blob_unknown == [], ledger.blob_unknown[:10]
    assert ledger.fsck_problems == [], ledger.fsck_problems[:3]
