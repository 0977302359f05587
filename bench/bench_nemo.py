"""The nemo label policy's fast path against NeMo AutoModel itself and against its reference, identical outputs.

    python -m bench.bench_nemo [--quick] [--rows 400]

NeMo is ``nemo_automodel.components.datasets.llm.formatting_utils.format_chat_template`` (what its ChatDataset
calls per row, with ``unshifted=True`` so it returns unshifted ids, loss mask and attention mask) on a copy of
the same tokenizer, when nemo-automodel imports (scripts/test.sh installs it with --no-deps); every row must
give the same ids, mask and attention mask, or both sides must refuse it. The reference is
``nemo_tokenize(..., fast=False)``: the calls NeMo's ``format_chat_template`` makes (one ``apply_chat_template``
render + encode per conversation prefix) re-created in feedline, the pre-change path; the fast path must give
its bytes on every row: ids, mask, attention, strategy and warnings, or the same error. The bench fails on any
difference. CPU is ``time.process_time()`` per side, round-robin repeats, best kept. The default label policy
on the same rows is shown for scale. The target is fast / NeMo (fast / reference where NeMo does not import).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from bench._corpus import chat_rows  # noqa: E402

__all__ = ["run"]

TOKENIZERS = ("qwen2.5", "mistral-nemo")
TARGET = 5.0
NEMO = "NeMo AutoModel (format_chat_template)"


def _rows(name: str, n: int) -> list[dict[str, Any]]:
    """Real-text chats; Mistral's templates move the system prompt into the last user turn, which NeMo's prefix
    arithmetic refuses for every row, so its rows have none (the refusal is measured by the tests)."""
    rows = chat_rows(n, seed=3)
    if name.startswith("mistral"):
        rows = [{"messages": [m for m in r["messages"] if m["role"] != "system"]} for r in rows]
    return rows


def _nemo_automodel(tokenizer: Any, rows: list[dict[str, Any]]) -> Callable[[], list[Any]] | None:
    """NeMo AutoModel's own per-row call as its ChatDataset makes it (default options: answer-only loss, no
    padding or truncation), on its own copy of ``tokenizer``; None when nemo-automodel does not import."""
    try:
        from nemo_automodel.components.datasets.llm.chat_dataset import _normalize_messages
        from nemo_automodel.components.datasets.llm.formatting_utils import _add_pad_token, format_chat_template
    except ImportError:
        return None
    own = copy.deepcopy(tokenizer)
    pad = _add_pad_token(own) or own.eos_token_id

    def go() -> list[Any]:
        out: list[Any] = []
        for row in rows:
            try:
                sample = format_chat_template(
                    own,
                    _normalize_messages(row["messages"]),
                    own.eos_token_id,
                    pad,
                    tools=row.get("tools") or None,
                    unshifted=True,
                )
            except Exception:  # noqa: BLE001 - NeMo refuses the row; feedline must refuse it too
                out.append("refused")
                continue
            out.append((sample["input_ids"], sample["loss_mask"], sample["attention_mask"]))
        return out

    return go


def _as_nemo(outcome: Any) -> Any:
    """A fast-path outcome in NeMo's terms: unshifted ids, 0/1 loss mask, attention mask; or a refusal."""
    if not isinstance(outcome, tuple):
        return "refused"
    ids, mask, attention = (
        np.frombuffer(b, dtype=t) for b, t in zip(outcome[:3], (np.int64, bool, np.int64), strict=True)
    )
    return (ids.tolist(), mask.astype(np.int64).tolist(), attention.tolist())


def _one(name: str, n: int, repeats: int) -> dict[str, Any]:
    from feedline.proto import FeedlineError
    from feedline.service import CollateOptions, Processor, parse_row, tokenize_row
    from feedline.service.engine.nemo._fast import FAST_PATH
    from feedline.service.engine.nemo._labels import nemo_tokenize
    from feedline.service.tokenizers.builtin._vocab import builtin_tokenizer

    processor = Processor(name, builtin_tokenizer(name))
    options = CollateOptions.from_mapping({"label_policy": "nemo"})
    rows = _rows(name, n)
    parsed = [parse_row(r, index=i) for i, r in enumerate(rows)]

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
    automodel = _nemo_automodel(processor.tokenizer, rows)
    if automodel is not None:
        sides[NEMO] = automodel
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
    result: dict[str, Any] = {
        "rows": n,
        "tokens": sum(len(o[0]) // 8 for o in outputs["fast"] if isinstance(o, tuple)),
        "us_per_row": {side: t / n * 1e6 for side, t in best.items()},
        "fast / reference speed": best["reference (NeMo's calls)"] / best["fast"],
        "default policy / fast speed": best["fast"] / best["default policy"],
        "identical on every row": identical,
        "rows by path": {k: v // repeats for k, v in FAST_PATH.snapshot().items()},
    }
    if automodel is not None:
        mismatched = [
            i for i, (a, b) in enumerate(zip(outputs["fast"], outputs[NEMO], strict=True)) if _as_nemo(a) != b
        ]
        if mismatched:
            raise AssertionError(f"{name}: the fast path and NeMo AutoModel disagree on rows {mismatched[:10]}")
        result["fast / NeMo speed"] = best[NEMO] / best["fast"]
        result["identical to NeMo on every row"] = True
        result["rows NeMo refused"] = outputs[NEMO].count("refused")
    return result


def _speed(figures: dict[str, Any]) -> float:
    """The figure the target is on: fast / NeMo, or fast / reference where NeMo does not import."""
    return float(figures.get("fast / NeMo speed", figures["fast / reference speed"]))


def run(quick: bool, rows: int | None = None) -> dict[str, Any]:
    n = rows or (30 if quick else 400)
    result: dict[str, Any] = {"target": TARGET}
    for name in TOKENIZERS:
        result[name] = _one(name, n, 1 if quick else 3)
    result["target met"] = all(_speed(result[name]) >= TARGET for name in TOKENIZERS)
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
