"""available_cpus: the affinity set capped by a cgroup v2 or v1 CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from feedline.service.server import available_cpus, collate_threads_for

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, AFFINITY),
        ({"cpu.max": "max 100000\n"}, AFFINITY),
        ({"cpu.max": "100000 100000\n"}, 1),
        ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU still runs one thread
        ({"cpu.max": "150000 100000\n"}, min(AFFINITY, 2)),
        ({"cpu.max": "6400000 100000\n"}, AFFINITY),  # a quota above the affinity set does not add CPUs
        ({"cpu.max": "garbage\n"}, AFFINITY),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ],
)
def test_the_quota_caps_the_affinity_set(tmp_path: Path, files: dict[str, str], expected: int) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert available_cpus(tmp_path) == expected


def test_each_worker_collates_its_share_at_least_one() -> None:
    cpus = available_cpus()
    assert collate_threads_for(1) == cpus
    assert collate_threads_for(cpus * 4) == 1
