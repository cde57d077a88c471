"""keep_freed_memory: a refill of the size of a study reuses freed memory instead of taking
fresh pages from the kernel (measured as minor page faults, in a process of its own because
the malloc policy is process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
from app.cache.heap import keep_freed_memory
kept = keep_freed_memory(1 << 30) if sys.argv[1] == "keep" else None
def fill():
    return [b"\\x01" * 525_000 for _ in range(200)]  # ~100 MB of instance-sized objects
del fill()[:]  # first fill: fresh pages either way, then freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
again = fill()
print(json.dumps({"kept": kept,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _refill_faults(mode: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          timeout=60, check=True)
    return dict(json.loads(done.stdout))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_refill_reuses_freed_memory() -> None:
    default = _refill_faults("default")
    kept = _refill_faults("keep")
    assert kept["kept"] is True
    # ~24,000 pages are touched by the refill: by default nearly all fault again.
    assert int(default["faults"]) > 10_000, default
    assert int(kept["faults"]) < int(default["faults"]) // 10, (kept, default)
