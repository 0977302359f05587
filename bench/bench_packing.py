"""Packing figures side by side: fill ratio and packing cost relative to tokenization, at 4096/8192/16384.

Tokenization is real: multi-turn chats (text from the Python documentation shipped with the interpreter,
lengths drawn from a heavy-tailed multi-turn distribution) go through the engine's ``tokenize_row`` with a
real Qwen2.5 tokenizer and chat template. Packing is then timed on those samples: the epoch plan from lengths
plus materialising every pack into padded batches. A sequential first-fit packer (NeMo's THD packing) is
shown for comparison of fill. Floors: encoding the rendered chats alone with the HF tokenizer and with the
fast encoder (tiktoken over the same ranks) when the processor uses it.

    python -m bench.bench_packing --quick      # 2,000 chats, well under 2 minutes
    python -m bench.bench_packing              # 20,000 chats
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np

from bench._processors import qwen25
from bench._progress import steps
from feedline.service import CollateOptions, Processor, tokenize_row
from feedline.service.collate._packing import PackOptions, materialise, plan_packs, sample_lengths

PACK_SIZES = (4096, 8192, 16384)
BATCH_PACKS = 8  # packs per materialised batch
clock = time.process_time  # CPU seconds of this process: ratios stay fair when other work shares the cores
CHARS_PER_TOKEN = 4.2  # English prose with code, Qwen2.5 vocabulary (measured on this corpus: ~4.2)


def encode_only_seconds(processor: Processor, chats: list[dict[str, Any]]) -> dict[str, float]:
    """Floors for comparison: encoding the rendered chats alone, with the HF tokenizer and the fast encoder."""
    texts = [processor.renderer.text(c["messages"]) for c in chats]
    backend = processor.tokenizer.backend_tokenizer
    t0 = clock()
    for text in texts:
        backend.encode(text, add_special_tokens=False)
    out = {"hf encode": clock() - t0}
    if processor.encoder.name == "fast":
        t0 = clock()
        processor.encoder.encode_batch_with_offsets(texts)
        out["fast encoder"] = clock() - t0
    return out


def corpus_words() -> list[str]:
    from pydoc_data.topics import topics

    return " ".join(topics[k] for k in sorted(topics)).split(" ")


def make_chats(n: int, seed: int) -> list[dict[str, Any]]:
    """Multi-turn chats: 1-12 turns (mean about 2.7), long-tailed user and assistant messages."""
    rng = np.random.default_rng(seed)
    words = corpus_words()

    def text(tokens: float) -> str:
        count = max(1, int(tokens * CHARS_PER_TOKEN / 6))  # ~6 characters per word with its space
        start = int(rng.integers(0, len(words) - count - 1))
        return " ".join(words[start : start + count])

    chats = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": text(rng.uniform(15, 150))})
        for _turn in range(min(12, int(rng.geometric(0.45)))):
            messages.append({"role": "user", "content": text(min(6000, rng.lognormal(np.log(60), 1.2)))})
            messages.append({"role": "assistant", "content": text(min(6000, rng.lognormal(np.log(280), 0.8)))})
        chats.append({"messages": messages})
    return chats


def sequential_fill(lengths: np.ndarray, pack_size: int) -> float:
    """NeMo THD packing: consecutive samples into a pack until the next does not fit (over-long ones skipped)."""
    packs, used, total = 0, pack_size, 0
    for n in (lengths - 1).tolist():
        if n > pack_size:
            continue
        if used + n > pack_size:
            packs, used = packs + 1, 0
        used += n
        total += n
    return total / max(1, packs * pack_size)


def time_packing(
    samples: list[Any], lengths: np.ndarray, pack_size: int, pad_id: int
) -> tuple[float, float, Any, float]:
    options = PackOptions(pack_size=pack_size, window=1000, seed=0, overlong="drop")
    t0 = clock()
    plan = plan_packs(lengths, options)
    t1 = clock()
    real = slots = 0
    for first in range(0, len(plan), BATCH_PACKS):
        batch = materialise(samples, plan, range(first, min(first + BATCH_PACKS, len(plan))), pad_id=pad_id)
        real += int(batch["seq_lens"].sum())
        slots += batch["input_ids"].size
    t2 = clock()
    assert abs(real / slots - plan.fill_ratio) < 1e-9
    return t1 - t0, t2 - t1, plan, real / slots


def measure(n: int, seed: int = 0, repeats: int = 3) -> dict[str, Any]:
    """Fill and packing cost at every pack size, against tokenization and encode-only floors."""
    processor = qwen25()
    chats = make_chats(n, seed)
    options = CollateOptions()
    for i, chat in enumerate(chats[:20]):  # warm the template and tokenizer caches
        tokenize_row(processor, chat, options, index=i)
    t0 = clock()
    samples = [tokenize_row(processor, chat, options, index=i) for i, chat in enumerate(chats)]
    tokenize_s = clock() - t0
    lengths = sample_lengths(samples)
    floors = encode_only_seconds(processor, chats)
    result: dict[str, Any] = {
        "chats": n,
        "tokens": int(lengths.sum()),
        "encoder": processor.encoder.name,
        "tokens_per_chat": {
            "mean": float(lengths.mean()),
            "median": float(np.median(lengths)),
            "p90": float(np.percentile(lengths, 90)),
            "p99": float(np.percentile(lengths, 99)),
            "max": int(lengths.max()),
        },
        "tokenize_cpu_s": tokenize_s,
        "encode_only_cpu_s": floors,
        "pack_sizes": {},
    }
    for pack_size in steps(PACK_SIZES, "packing"):
        runs = [time_packing(samples, lengths, pack_size, processor.pad_token_id) for _ in range(repeats)]
        plan_s = statistics.median(r[0] for r in runs)
        mat_s = statistics.median(r[1] for r in runs)
        plan, fill = runs[0][2], runs[0][3]
        pack_s = plan_s + mat_s
        result["pack_sizes"][str(pack_size)] = {
            "packs": len(plan),
            "dropped": len(plan.dropped),
            "fill": fill,
            "sequential_fill": sequential_fill(lengths, pack_size),
            "plan_ms": plan_s * 1e3,
            "materialise_ms": mat_s * 1e3,
            "pack_over_tokenize": pack_s / tokenize_s,
            **{f"pack_over_{k.replace(' ', '_')}": pack_s / v for k, v in floors.items()},
        }
    return result


def run(quick: bool) -> dict[str, Any]:
    """The suite's entry: 1,000 chats quick, 20,000 full."""
    return measure(1000 if quick else 20000, repeats=2 if quick else 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 chats (under 2 minutes)")
    parser.add_argument("--chats", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="packing timings: median of this many runs")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    r = measure(args.chats or (2000 if args.quick else 20000), args.seed, args.repeats)
    lengths, tokenize_s = r["tokens_per_chat"], r["tokenize_cpu_s"]
    print(f"tokenizer: feedline built-in qwen2.5, encoder {r['encoder']}")
    print(
        f"chats: {r['chats']}, tokens: {r['tokens']:,}; tokens per chat mean {lengths['mean']:.0f}, "
        f"median {lengths['median']:.0f}, p90 {lengths['p90']:.0f}, p99 {lengths['p99']:.0f}, max {lengths['max']}"
    )
    print(
        f"tokenization (engine tokenize_row, 1 process): {tokenize_s:.2f} CPU s "
        f"({r['tokens'] / tokenize_s / 1e6:.2f} M tokens/s, {r['chats'] / tokenize_s:.0f} chats/s)"
    )
    print("encode only, for comparison: " + ", ".join(f"{k} {v:.2f} CPU s" for k, v in r["encode_only_cpu_s"].items()))
    print()
    floors = [f"pack_over_{k.replace(' ', '_')}" for k in r["encode_only_cpu_s"]]
    print(
        f"{'pack_size':>9} {'packs':>6} {'dropped':>7} {'fill':>7} {'seq. fill':>9} {'plan ms':>8} "
        f"{'material. ms':>14} "
        f"{'pack/tokenize':>13} " + " ".join(f"{'/' + f[10:]:>14}" for f in floors)
    )
    for size, p in r["pack_sizes"].items():
        print(
            f"{size:>9} {p['packs']:>6} {p['dropped']:>7} {p['fill']:>7.4f} {p['sequential_fill']:>9.4f} "
            f"{p['plan_ms']:>8.1f} {p['materialise_ms']:>14.1f} {p['pack_over_tokenize']:>13.2%} "
            + " ".join(f"{p[f]:>14.2%}" for f in floors)
        )
    print(
        "\nfill = real tokens / slots (padded layout); seq. fill = sequential first-fit packing (NeMo THD), for "
        "comparison;\npack/tokenize = (plan + materialise) / engine tokenization time; /hf_encode and /fast_encoder: "
        f"the same packing time over encode-only time.\ntotal {time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
