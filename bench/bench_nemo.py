"""The nemo label policy's fast path against its reference (NeMo's own per-prefix calls), identical outputs.

    python -m bench.bench_nemo [--quick] [--rows 400]

The reference is ``nemo_tokenize(..., fast=False)``: the calls NeMo AutoModel's ``format_chat_template`` makes
(one ``apply_chat_template`` render + encode per conversation prefix), on the same tokenizer. NeMo itself is
not installed here (nemo-automodel 0.7.0 pins transformers 5.18 and pulls CUDA packages), so the reference
stands in for it; its outputs are NeMo's by the spec tests in tests/test_nemo_policy.py. The fast path
(``_nemo_fast``) must give the same bytes on every row: ids, mask, attention, strategy and warnings, or the same
error; the bench fails otherwise. CPU is ``time.process_time()`` per side, round-robin repeats, best kept.
The default label policy on the same rows is shown for scale.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench._corpus import chat_rows  # noqa: E402

__all__ = ["run"]

TOKENIZERS = ("qwen2.5", "mistral-nemo")
TARGET = 5.0


def _rows(name: str, n: int) -> list[dict[str, Any]]:
    """Real-text chats; Mistral's templates move the system prompt into the last user turn, which NeMo's prefix
    arithmetic refuses for every row, so its rows have none (the refusal is measured by the tests)."""
    rows = chat_rows(n, seed=3)
    if name.startswith("mistral"):
        rows = [{"messages": [m for m in r["messages"] if m["role"] != "system"]} for r in rows]
    return rows


def _one(name: str, n: int, repeats: int) -> dict[str, Any]:
    from feedline.proto import FeedlineError
    from feedline.service import CollateOptions, Processor, parse_row, tokenize_row
    from feedline.service.engine.nemo._fast import FAST_PATH
    from feedline.service.engine.nemo._labels import nemo_tokenize
    from feedline.service.tokenizers.builtin._vocab import builtin_tokenizer

    processor = Processor(name, builtin_tokenizer(name))
    options = CollateOptions.from_mapping({"label_policy": "nemo"})
    parsed = [parse_row(r, index=i) for i, r in enumerate(_rows(name, n))]

    def nemo(fast: bool) -> Callable[[], list[Any]]:
        def go() -> list[Any]:
            out: list[Any] = []
            for i, row in enumerate(parsed):
                try:
                    s = nemo_tokenize(processor, row, options, index=i, fast=fast)
                except FeedlineError as exc:
                    out.append(repr(exc))
                    continue
                out.append(
                    (s.input_ids.tobytes(), s.supervised.tobytes(), s.attention_mask.tobytes(), s.strategy, s.warnings)
                )
            return out

        return go

    def default() -> list[Any]:
        return [tokenize_row(processor, r, CollateOptions(), index=i) for i, r in enumerate(_rows(name, n))]

    sides = {"reference (NeMo's calls)": nemo(False), "fast": nemo(True), "default policy": default}
    best = {side: float("inf") for side in sides}
    outputs: dict[str, Any] = {}
    nemo(True)()  # warm-up: compiled template, encoder tables
    FAST_PATH.reset()
    for _ in range(repeats):
        for side, fn in sides.items():
            start = time.process_time()
            outputs[side] = fn()
            best[side] = min(best[side], time.process_time() - start)
    identical = outputs["fast"] == outputs["reference (NeMo's calls)"]
    if not identical:
        raise AssertionError(f"{name}: the fast path and the reference disagree on some row")
    counts = {k: v // repeats for k, v in FAST_PATH.snapshot().items()}
    tokens = sum(len(o[0]) // 8 for o in outputs["fast"] if isinstance(o, tuple))
    return {
        "rows": n,
        "tokens": tokens,
        "us_per_row": {side: t / n * 1e6 for side, t in best.items()},
        "fast / reference speed": best["reference (NeMo's calls)"] / best["fast"],
        "default policy / fast speed": best["fast"] / best["default policy"],
        "identical on every row": identical,
        "rows by path": counts,
    }


def run(quick: bool, rows: int | None = None) -> dict[str, Any]:
    n = rows or (30 if quick else 400)
    result: dict[str, Any] = {"target": TARGET}
    for name in TOKENIZERS:
        result[name] = _one(name, n, 1 if quick else 3)
    result["target met"] = all(result[name]["fast / reference speed"] >= TARGET for name in TOKENIZERS)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int)
    args = parser.parse_args()
    print(json.dumps(run(args.quick, args.rows), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
