"""Processor names resolve offline, the same way for `serve`, the config file and the offline commands.

An unknown name fails at once with the built-in names and what was tried; a directory that does not exist stops
`feedline serve` from starting; the hub is used only where the operator enables it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from feedline.proto import UnknownProcessor
from feedline.service.tokenizers._sources import ALLOW_HUB_ENV, builtin_names, resolve_source
from tests.support.servers import Served

ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("FEEDLINE_", "PROMETHEUS_"))}


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "feedline.service._cli", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
    )


def test_an_unknown_name_fails_at_once_saying_what_was_tried(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(ROW)
    start = time.monotonic()
    done = _cli("collate", "--processor", "org/no-such-model", "--input", str(rows), "--output", "-")
    elapsed = time.monotonic() - start
    assert done.returncode == 2, done.stderr
    message = done.stderr
    assert "Traceback" not in message and "org/no-such-model" in message
    assert all(name in message for name in builtin_names())  # the names that would have worked
    assert "(not found)" in message and "hub, which is off" in message
    assert "--allow-hub" in message and f"{ALLOW_HUB_ENV}=1" in message
    assert elapsed < 60, f"refusing an unknown name took {elapsed:.1f} s"  # no hub retries (those took 190 s)


def test_the_hub_is_used_only_where_enabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_HUB_ENV, raising=False)
    with pytest.raises(UnknownProcessor):
        resolve_source("org/model")
    assert resolve_source("org/model", allow_hub=True).local_only is False
    monkeypatch.setenv(ALLOW_HUB_ENV, "1")
    assert resolve_source("org/model").location == "org/model"
    assert resolve_source(tmp_path).local_only is False
    monkeypatch.setenv(ALLOW_HUB_ENV, "0")
    local = resolve_source(tmp_path)
    assert local.local_only is True and local.location == str(tmp_path)
    builtin = resolve_source("qwen3")
    assert builtin.builtin == "qwen3" and Path(builtin.location, "tokenizer.json").is_file()


def test_serve_refuses_to_start_on_a_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    config = tmp_path / "feedline.yaml"
    config.write_text(yaml.safe_dump({"processors": {"qwen2.5": "qwen2.5", "mine": str(missing)}}))
    done = _cli(
        "serve", "--config", str(config), "--grpc-port", "0", "--http-port", "0", "--host", "127.0.0.1", timeout=60
    )
    assert done.returncode == 2
    assert "processors.mine" in done.stderr and str(missing) in done.stderr and "qwen3" in done.stderr
    done = _cli(
        "serve", "--processor", "qwen4", "--grpc-port", "0", "--http-port", "0", "--host", "127.0.0.1", timeout=60
    )
    assert done.returncode == 2 and "no processor 'qwen4'" in done.stderr


def test_serve_and_collate_accept_the_same_builtin_names(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(ROW)
    offline = _cli(
        "collate",
        "--processor",
        "qwen3",
        "--input",
        str(rows),
        "--output",
        "-",
        "--no-progress",
        "--label-format",
        "unshifted",
    )
    assert offline.returncode == 0, offline.stderr
    served = Served("--processor", "qwen3")
    try:
        listed = served.http.get("/v1/processors").json()
        assert [p["name"] for p in listed["processors"]] == ["qwen3"]
        reply = served.http.post(
            "/v1/collate", json={"samples": [yaml.safe_load(ROW)], "options": {"label_format": "unshifted"}}
        )
        assert reply.status_code == 200, reply.text
    finally:
        served.close()
    tensors = json.loads(offline.stdout)
    assert tensors["input_ids"] == reply.json()["tensors"]["input_ids"][0]
