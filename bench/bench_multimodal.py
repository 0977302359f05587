"""Engine vs processor alone on the same encoded images: images/s, batches/s and the engine's overhead.

    python -m bench.bench_multimodal [--quick] [--processor qwen2.5-vl] [--batch 8] [--repeats 11]

Both sides start from the same JSON rows carrying base64 PNGs, and both produce one batch per step.
* processor alone: what any user of the processor has to do with these rows: render each row's messages with
  the processor's chat template (``apply_chat_template(..., tokenize=False)``), base64-decode each image, open
  it with Pillow, convert it to RGB, and call the processor once per batch on the texts and images
  (``padding=True``). Labels, which it does not produce, cost it nothing.
* engine: ``collate`` on the rows: parse and validate each row, decode and check each image (format whitelist,
  pixel limit read from the header before decoding, PNG checksums, truncation), render, one processor call for
  the batch with token offsets and placeholder spans, labels, media-token checks, mRoPE position ids, padded
  batch with the media tensors.
The two run interleaved, one batch each per repeat, after a warm-up. Throughput and overhead (engine time /
processor-alone time - 1; target: under 10%) come from each side's fastest repeat, the usual estimate on a
machine shared with other work (slower repeats measure the other work); the median-based overhead and the
one from this process's CPU time are printed beside it.
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench._progress import steps
from feedline.service import CollateOptions, collate, load_processor
from feedline.service.tokenizers.builtin._multimodal import builtin_processor_dir

__all__ = ["measure", "run"]

SIZES = {"224px": (224, 224), "640x480": (640, 480), "1280x720": (1280, 720)}


def rows_for(w: int, h: int, n: int) -> list[dict[str, Any]]:
    """``n`` single-image VQA rows with random-noise PNGs (incompressible: the slowest PNGs to decode)."""
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
        rows.append(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "image": base64.b64encode(buf.getvalue()).decode()},
                            {"type": "text", "text": f"Describe picture {i} in detail."},
                        ],
                    },
                    {
                        "role": "assistant",
                        "content": "A field of coloured noise, with no discernible object in it. " * 3,
                    },
                ]
            }
        )
    return rows


def processor_alone(hf: Any, rows: list[dict[str, Any]]) -> Callable[[], Any]:
    """One batch the way a user's collate_fn makes it with the processor alone, from the same rows."""

    def run() -> Any:
        texts = [hf.apply_chat_template(r["messages"], tokenize=False) for r in rows]
        images = [
            Image.open(io.BytesIO(base64.b64decode(r["messages"][0]["content"][0]["image"]))).convert("RGB")
            for r in rows
        ]
        return hf(text=texts, images=images, padding=True, return_tensors="np")

    return run


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(processor: str, batch: int, repeats: int) -> dict[str, Any]:
    """Per image size: images/s and batches/s of both sides, the overhead from best, median and CPU times."""
    proc = load_processor(processor, builtin_processor_dir(processor, Path(tempfile.gettempdir()) / "feedline-bench"))
    opts = CollateOptions()
    result: dict[str, Any] = {"processor": processor, "batch": batch, "repeats": repeats, "sizes": []}
    for label in steps(SIZES, "multimodal"):
        rows = rows_for(*SIZES[label], batch)
        alone = processor_alone(proc.hf_processor, rows)
        engine = functools.partial(collate, proc, rows, opts)
        alone(), engine()  # warm-up (caches, allocator)
        t_alone, t_engine = [], []
        for _ in range(repeats):
            t_alone.append(timed(alone))
            t_engine.append(timed(engine))
        (a, a_cpu), (e, e_cpu) = (tuple(map(min, zip(*t, strict=False))) for t in (t_alone, t_engine))
        a_med, e_med = (statistics.median(w for w, _ in t) for t in (t_alone, t_engine))
        result["sizes"].append(
            {
                "size": label,
                "processor_images_per_s": batch / a,
                "engine_images_per_s": batch / e,
                "processor_batches_per_s": 1 / a,
                "engine_batches_per_s": 1 / e,
                "overhead": e / a - 1,
                "overhead_median": e_med / a_med - 1,
                "overhead_cpu": e_cpu / a_cpu - 1,
            }
        )
    return result


def run(quick: bool) -> dict[str, Any]:
    """The suite's entry: batch 4, 3 repeats quick; batch 8, 11 repeats full."""
    return measure("qwen2.5-vl", *((4, 3) if quick else (8, 11)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="batch 4, 3 repeats")
    ap.add_argument("--processor", default="qwen2.5-vl")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()
    batch, repeats = (4, 3) if args.quick else (args.batch, args.repeats)
    result = measure(args.processor, batch, repeats)
    print(
        f"processor {args.processor}; batch {batch}; {repeats} interleaved repeats after a warm-up; random-noise PNGs"
    )
    print(
        "processor alone: apply_chat_template + base64 decode + PIL open + convert('RGB') + one processor call "
        "per batch"
    )
    print("engine: collate() on the same rows (validate, decode once, render, one processor call, label, batch)")
    print("throughput and overhead from each side's fastest repeat; then overhead from medians and from CPU time")
    print(
        f"{'size':>9} {'proc img/s':>11} {'engine img/s':>13} {'proc batch/s':>13} {'engine batch/s':>15}"
        f" {'overhead':>9} {'(median)':>9} {'(CPU)':>9}"
    )
    for r in result["sizes"]:
        print(
            f"{r['size']:>9} {r['processor_images_per_s']:11.1f} {r['engine_images_per_s']:13.1f} "
            f"{r['processor_batches_per_s']:13.2f} {r['engine_batches_per_s']:15.2f} {r['overhead']:9.1%}"
            f" {r['overhead_median']:9.1%} {r['overhead_cpu']:9.1%}"
        )


if __name__ == "__main__":
    main()
