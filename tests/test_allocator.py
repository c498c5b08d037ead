"""``cdc.allocator``: with freed memory kept, large CPU tensors stop costing page faults (counted by
the kernel, in fresh processes: the setting is process-wide)."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import resource, torch
from cdc.allocator import keep_freed_memory
kept = keep_freed_memory()
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):  # two 48 MiB tensors a round, as a full-resolution step makes them
        x = torch.empty(12 << 20); x.fill_(1); y = x * 2; del x, y
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults(); faults()  # the heap grows to its peak
print(kept, min(faults() for _ in range(3)))  # a steady round: other work on the machine can evict a page
"""


def _run(malloc: str) -> tuple[bool, int]:
    env = {**os.environ, "CDC_MALLOC": malloc}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True,
                         timeout=120).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")
def test_kept_memory_makes_large_tensors_fault_free():
    kept, faults = _run("")
    system_kept, system_faults = _run("system")
    assert kept and not system_kept
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not (thp.exists() and "[always]" in thp.read_text()):  # else fresh memory faults in 2 MiB pages
        assert system_faults > 40_000  # 8 x 48 MiB of fresh 4 KiB pages: ~98,000 faults
    assert faults < system_faults / 20
