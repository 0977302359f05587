"""Every `feedline` command keeps third-party notices off stderr, on a service install without torch.

The service extra does not install torch, and there transformers prints "PyTorch was not found..." when it is
imported. These runs hide torch from the subprocess (``sys.modules["torch"] = None``, which is how Python
spells "not installed") and read stderr line by line: the offline commands print only their own summary,
`serve` prints only JSON log lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
_WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; from feedline.service._cli import main; sys.exit(main())"


def _command(*args: str) -> list[str]:
    return [sys.executable, "-c", _WITHOUT_TORCH, *args]


def _env() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("FEEDLINE_", "PROMETHEUS_", "TRANSFORMERS_", "HF_"))
    }


def test_torch_is_hidden_in_these_runs() -> None:
    """The premise: without the quieting, this interpreter setup makes transformers print its notice."""
    code = "import sys; sys.modules['torch'] = None; import transformers"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert "PyTorch was not found" in done.stderr


def test_offline_commands_print_only_their_own_lines(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(ROW + "\n")
    one = tmp_path / "row.json"
    one.write_text(ROW)
    runs = {
        "collate": ["collate", "--input", str(rows), "--output", str(tmp_path / "out.jsonl"), "--no-progress"],
        "mask": ["mask", "--input", str(one), "--processor", "qwen3"],
        "help": ["--help"],
        "unknown processor": ["mask", "--input", str(one), "--processor", "no-such"],
    }
    for name, argv in runs.items():
        done = subprocess.run(_command(*argv), capture_output=True, text=True, env=_env(), timeout=180)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert all(line.startswith("feedline ") for line in lines), (name, done.stderr)
    assert done.returncode == 2 and len(lines) == 1  # the unknown processor: one line, no traceback


def _wait_ready(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server did not become ready")


def test_serve_prints_only_json_log_lines(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        _command("serve", "--grpc-port", "0", "--http-port", "0", "--host", "127.0.0.1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stderr is not None
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if '"listening"' in line:
                break
        _wait_ready(json.loads(lines[-1])["http_port"])  # the whole start, uvicorn included, then a drain
        proc.send_signal(signal.SIGTERM)
        lines.extend(proc.stderr.read().splitlines())
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    records = [json.loads(line) for line in lines if line.strip()]  # a non-JSON line fails here
    assert any(r.get("msg") == "listening" for r in records) and proc.returncode == 0
