"""Run every feedline benchmark, write its figures as JSON, draw the plots and regenerate BENCHMARKS.md.

    python -m bench --quick                 # development run, under 2 minutes
    python -m bench                         # full run
    python -m bench --only client,scaling   # some of them (the others' JSON is kept and still reported)
    python -m bench --quick --out /tmp/b    # somewhere else (CI): BENCHMARKS.md is written there too
    python -m bench --report-only           # redraw plots and BENCHMARKS.md from the JSON already there

Each benchmark module has its own CLI and a ``run(quick) -> dict``; this runs them one after another in one
process (the shared tokenizer is loaded once), with a progress bar, and writes ``<out>/<name>.json``.
A benchmark that fails is recorded with its error and the others still run; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tqdm import tqdm  # noqa: E402

from bench._report import ROOT, machine, write_markdown  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results"


def _fastpath(module: Any, quick: bool) -> dict[str, Any]:
    """bench_fastpath's ``run(rows, repeats)`` with its own --quick and default sizes."""
    return dict(module.run(300, 2) if quick else module.run(2000, 5))


def _plain(module: Any, quick: bool) -> dict[str, Any]:
    return dict(module.run(quick))


# name -> (module, how to call it); the order they run in.
BENCHES: dict[str, tuple[str, Callable[[Any, bool], dict[str, Any]]]] = {
    "text": ("bench.bench_text", _plain),
    "hf_assistant_mask": ("bench.bench_hf_assistant_mask", _plain),
    "nemo": ("bench.bench_nemo", _plain),
    "fastpath": ("bench.bench_fastpath", _fastpath),
    "packing": ("bench.bench_packing", _plain),
    "multimodal": ("bench.bench_multimodal", _plain),
    "wire": ("bench.bench_wire", _plain),
    "client": ("bench.bench_client", _plain),
    "scaling": ("bench.bench_scaling", _plain),
    "datasets": ("bench.bench_datasets", _plain),
}


def run_one(name: str, quick: bool, command: str) -> dict[str, Any]:
    """One benchmark's record: its figures (or its error), mode, wall time and the command that ran it."""
    module_name, call = BENCHES[name]
    started = time.perf_counter()
    record: dict[str, Any] = {
        "name": name,
        "module": module_name,
        "quick": quick,
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_before": os.getloadavg()[0],
    }
    try:
        record["figures"] = call(importlib.import_module(module_name), quick)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the suite reports a failed bench and goes on
        record["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        traceback.print_exc()
    record["wall_s"] = time.perf_counter() - started
    record["loadavg_after"] = os.getloadavg()[0]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for development (under 2 minutes)")
    parser.add_argument(
        "--only",
        type=lambda s: s.split(","),
        default=list(BENCHES),
        help=f"comma-separated subset of: {','.join(BENCHES)}",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where JSON and PNG go (default bench/results)")
    parser.add_argument("--report-only", action="store_true", help="only redraw plots and BENCHMARKS.md")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {list(BENCHES)}")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    failed = []
    if not args.report_only:
        (out / "machine.json").write_text(json.dumps({**machine(), "command": command.strip()}, indent=1))
        started = time.perf_counter()
        bar = tqdm(args.only, desc="bench", unit="bench", file=sys.stderr, dynamic_ncols=True)
        for name in bar:
            bar.set_postfix_str(name)
            record = run_one(name, args.quick, command.strip())
            (out / f"{name}.json").write_text(json.dumps(record, indent=1, default=str))
            if "error" in record:
                failed.append(name)
        print(
            f"{len(args.only)} benchmarks in {time.perf_counter() - started:.0f} s"
            + (f"; failed: {', '.join(failed)}" if failed else ""),
            file=sys.stderr,
        )
    from bench._plots import draw_all

    plots = draw_all(out)
    markdown = ROOT / "BENCHMARKS.md" if out == DEFAULT_OUT.resolve() else out / "BENCHMARKS.md"
    write_markdown(out, markdown, plots)
    drawn = ", ".join(p.name for p in plots.values()) or "none"
    print(f"results in {out}; plots: {drawn}; report: {markdown}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
