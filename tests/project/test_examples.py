"""The examples run against a real `feedline serve`: the tiny LM learns from streamed batches."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import Served

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    server = Served()
    yield server
    server.close()


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_lm_loss_goes_down(served: Served) -> None:
    losses = _module("train_tiny_lm").train(f"127.0.0.1:{served.grpc_port}", steps=24)
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4


def test_remote_collate_example_runs(served: Served) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "remote_collate.py"), "--endpoint", f"127.0.0.1:{served.grpc_port}"],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    assert out.count("batch ") == 4 and "supervised tokens" in out
