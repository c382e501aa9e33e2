"""A short run of ``tools/redis_fuzz.py`` against the real Redis: two or three instances of
one ``RedisBackend``, random requests, cancellations, limit changes and simulated Redis
failures (raising before or after the script ran, hanging past the command timeout), with
invariants checked after every step: no more than C running while every instance is global
(beyond requests whose lease was lost), counters back to zero, no key left, no acquire
outliving its timeout. The tool prints each violation; longer runs are for development."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests._redis import REDIS_URL, require_redis

TOOL = Path(__file__).resolve().parent.parent / "tools" / "redis_fuzz.py"


def test_a_short_random_outage_fuzz_breaks_no_invariant() -> None:
    require_redis()
    env = {**os.environ, "STEPS": "150", "SLACK": "0.5", "LOCKGATE_REDIS_URL": REDIS_URL}
    done = subprocess.run(
        [sys.executable, str(TOOL), "0", "4"], env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )
    report = done.stdout[-3000:] + done.stderr[-3000:]
    assert "VIOLATIONS" not in done.stdout, report
    assert done.returncode == 0, report
    assert "done 12 runs 150 steps each" in done.stdout, report
