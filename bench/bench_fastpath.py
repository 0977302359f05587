"""Text collation on the fast (tiktoken) path against raw HF batch encoding of the same rendered text.

    python -m bench.bench_fastpath [--rows 2000] [--repeats 5] [--quick]

One process, one thread (RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false), the built-in Qwen2.5 tokenizer and
its real ChatML template, multi-turn chats from ``bench._corpus``. Side by side in one run:

* raw: ``tokenizer(texts, add_special_tokens=False)`` on the pre-rendered texts (encoding only, no render, no
  labels): the bar to beat;
* collate fast / collate hf: ``collate`` (render, encode, labels, padding) in batches of 32, with the processor's
  encoder forced to each path (the same tokenizer object underneath);
* encoder fast / encoder hf: ``encode_batch_with_offsets`` alone on the pre-rendered texts.

Every batch's tensors (input_ids, labels, attention_mask) are compared between the two paths; any difference
fails the run. Variants run round-robin and each keeps its best time. The ratio to read is collate fast over raw.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from bench._corpus import chat_rows  # noqa: E402
from feedline.service import CollateOptions, Processor, collate, load_processor  # noqa: E402
from feedline.service.tokenizers._encoders import select_encoder  # noqa: E402

BATCH = 32


def run(rows: int, repeats: int) -> dict[str, object]:
    started = time.perf_counter()
    fast = load_processor("qwen2.5", "qwen2.5", encoder_mode="fast")
    load_s = time.perf_counter() - started
    hf = Processor("qwen2.5", fast.tokenizer, encoder_mode="hf", chat_template=fast.chat_template)
    started = time.perf_counter()
    select_encoder(fast.tokenizer, "fast")
    select_s = time.perf_counter() - started
    data = chat_rows(rows, seed=1)
    batches = [data[i : i + BATCH] for i in range(0, len(data), BATCH)]
    texts = [fast.renderer.text(r["messages"]) for r in data]
    tokens = sum(len(ids) for ids in fast.tokenizer(texts, add_special_tokens=False)["input_ids"])
    options = CollateOptions()

    for a, b in zip(*([collate(p, batch, options) for batch in batches] for p in (fast, hf)), strict=False):
        assert a.tensors.keys() == b.tensors.keys()
        for key in a.tensors:
            if not np.array_equal(a.tensors[key], b.tensors[key]):
                raise SystemExit(f"fast and hf paths differ in {key!r}")

    variants: dict[str, Callable[[], object]] = {
        "raw hf encode": lambda: fast.tokenizer(texts, add_special_tokens=False),
        "render only": lambda: [fast.renderer.text(r["messages"]) for r in data],
        "encoder hf": lambda: hf.encoder.encode_batch_with_offsets(texts),
        "encoder fast": lambda: fast.encoder.encode_batch_with_offsets(texts),
        "collate hf": lambda: [collate(hf, batch, options) for batch in batches],
        "collate fast": lambda: [collate(fast, batch, options) for batch in batches],
    }
    times = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):  # round-robin, so every variant samples the same stretches of machine load
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - start)
    return {
        "rows": rows,
        "tokens": tokens,
        "fast path": fast.encoder_reason,
        "load_processor, fast path included (s)": round(load_s, 2),
        "select_encoder: read, build, verify (s)": round(select_s, 2),
        **{f"{name} (Mtok/s)": round(tokens / t / 1e6, 3) for name, t in times.items()},
        "ratio collate fast / raw hf encode": round(times["raw hf encode"] / times["collate fast"], 2),
        "ratio collate fast / collate hf": round(times["collate hf"] / times["collate fast"], 2),
        "ratio encoder fast / encoder hf": round(times["encoder hf"] / times["encoder fast"], 2),
        "identical tensors (input_ids, labels, attention_mask)": True,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="300 rows, 2 repeats (well under a minute)")
    args = parser.parse_args()
    rows, repeats = (300, 2) if args.quick else (args.rows, args.repeats)
    for key, value in run(rows, repeats).items():
        print(f"{key:>54}: {value}")


if __name__ == "__main__":
    main()
