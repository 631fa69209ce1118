"""The cycle collector's settings for a polling process (`bridge.heap`).

Run in a child process: freezing the heap of the test runner would change every later test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import gc, json, trio, trio.testing
    from bridge import heap

    class Node:
        def __init__(self):
            self.me = self  # a cycle: only the collector frees it

    heap.tune_collector()
    kept = [Node() for _ in range(1000)]
    garbage = [Node() for _ in range(1000)]
    del garbage
    checks = []

    def settled():
        checks.append(trio.current_time())
        return len(checks) >= 3

    async def main():
        frozen = await heap.settle(settled, where="test", limit_s=60, poll_s=1)
        out = {"frozen": frozen, "checks": checks, "count": gc.get_freeze_count(),
               "threshold": gc.get_threshold(), "at": trio.current_time()}
        # A frozen object dropped later is not reclaimed; refreeze gives it back.
        kept.clear()
        gc.collect()
        out["after_drop"] = gc.get_freeze_count()
        out["refrozen"] = heap.refreeze()
        return out

    print(json.dumps(trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))))
    """
)

LIMIT_SCRIPT = textwrap.dedent(
    """
    import json, trio, trio.testing
    from bridge import heap
    async def main():
        await heap.settle(lambda: False, where="test", limit_s=30, poll_s=1)
        return trio.current_time()
    print(json.dumps(trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))))
    """
)


def _run(script: str) -> object:
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_settle_waits_for_the_fleet_then_freezes_what_is_alive() -> None:
    out = _run(SCRIPT)
    assert isinstance(out, dict)
    from bridge import heap

    assert out["threshold"] == [heap.GEN0_THRESHOLD, heap.GEN1_THRESHOLD, heap.GEN2_THRESHOLD]
    # Asked once a second until settled, then frozen at once.
    assert out["checks"] == [0, 1, 2]
    assert out["at"] == 2
    # The live objects (1,000 kept cycles at least) are frozen; the unreachable ones were
    # collected first, not frozen.
    # (Frozen objects freed by reference counting leave the frozen set: a few, by then.)
    assert out["count"] >= 1000
    assert out["count"] - 10 <= out["frozen"] <= out["count"] + 10
    # The dropped cycles stayed frozen until refreeze gave them back to the collector.
    assert out["after_drop"] >= out["count"] - 10
    assert out["refrozen"] <= out["after_drop"] - 1000


def test_settle_freezes_at_the_limit_if_the_fleet_never_settles() -> None:
    assert _run(LIMIT_SCRIPT) == 30
