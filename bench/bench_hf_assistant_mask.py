"""The text engine against transformers' own path to the same labels, with identical tensors asserted.

    python -m bench.bench_hf_assistant_mask [--quick] [--rows 1000] [--repeats 3]

The transformers path: ``tokenizer.apply_chat_template(batch, tools=TOOLS, tokenize=True, return_dict=True,
padding=True, return_assistant_tokens_mask=True)`` with a ``{% generation %}`` version of Qwen2.5's template
(every assistant turn's content, tool calls and ``<|im_end|>`` inside the tags, nothing else changed: the rendered
text is checked identical); every chat offers two tools and about half of its answers are tool calls with their
results,
labels = input_ids where the mask is set, IGNORE_INDEX elsewhere. The engine: ``collate`` with
``label_format="unshifted"`` (HF's convention) on the unchanged template (labels from turn markers), on the
tagged template (labels from the generation spans), and with the encoder forced to HF's. Every batch's
input_ids, labels and attention_mask are compared with the transformers path; any difference fails the run.
One process, one thread, batches of 32 real-text chats, round-robin, best time of each.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from bench._corpus import TOOLS, chat_rows  # noqa: E402
from bench._processors import qwen25  # noqa: E402
from bench._progress import steps  # noqa: E402
from feedline.service import IGNORE_INDEX, CollateOptions, Processor, collate  # noqa: E402

__all__ = ["generation_template", "run"]

BATCH = 32
_PLAIN_TURN = "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
_TAGGED_TURN = (
    "{%- if message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message.content + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}" + _PLAIN_TURN + "{%- endif %}"
)
_CALL_TURN_START = (
    "{{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}"
)
_CALL_TURN_END = "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}"
# The same text, the newline after the role outside the block: content, calls and <|im_end|> are generated.
_TAGGED_CALL_START = (
    "{{- '<|im_start|>' + message.role + '\\n' }}{% generation %}{%- if message.content %}{{- message.content }}"
    "{%- endif %}{%- for tool_call in message.tool_calls %}{%- if message.content or not loop.first %}{{- '\\n' }}"
    "{%- endif %}"
)
_TAGGED_CALL_END = (
    "            {{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
)


def generation_template(template: str) -> str:
    """Qwen2.5's template with every assistant turn's generated text inside ``{% generation %}``: the content
    and ``<|im_end|>`` of plain turns; the content, tool calls and ``<|im_end|>`` of tool-call turns."""
    if any(template.count(piece) != 1 for piece in (_PLAIN_TURN, _CALL_TURN_START, _CALL_TURN_END)):
        raise ValueError("not the Qwen2.5 template this bench knows how to tag")
    tagged = template.replace(_PLAIN_TURN, _TAGGED_TURN).replace(_CALL_TURN_START, _TAGGED_CALL_START)
    tagged = tagged.replace(_CALL_TURN_END, _TAGGED_CALL_END)
    return tagged.replace('{{- \'\\n<tool_call>\\n{"name": "\' }}', '{{- \'<tool_call>\\n{"name": "\' }}', 1)


def hf_labels(tokenizer: Any, template: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """transformers' own path: one apply_chat_template call per batch, labels from the assistant mask."""
    out = tokenizer.apply_chat_template(
        [r["messages"] for r in rows],
        tools=TOOLS,
        chat_template=template,
        tokenize=True,
        return_dict=True,
        padding=True,
        return_assistant_tokens_mask=True,
        return_tensors="np",
    )
    ids = out["input_ids"]
    return {
        "input_ids": ids,
        "labels": np.where(out["assistant_masks"] == 1, ids, IGNORE_INDEX),
        "attention_mask": out["attention_mask"],
    }


def _check(reference: dict[str, np.ndarray], tensors: Mapping[str, np.ndarray], name: str) -> None:
    for key, expected in reference.items():
        if not np.array_equal(np.asarray(tensors[key], dtype=np.int64), expected.astype(np.int64)):
            raise SystemExit(f"{name}: {key} differs from transformers' apply_chat_template path")


def run(quick: bool, rows: int | None = None, repeats: int | None = None) -> dict[str, Any]:
    """Tokens/s of each path, the engine's speed-up over transformers', and the identical-labels check."""
    rows = rows or (128 if quick else 1000)
    repeats = repeats or (2 if quick else 3)
    fast = qwen25()
    tokenizer, template = fast.tokenizer, fast.chat_template
    assert template is not None
    tagged_template = generation_template(template)
    tagged = Processor("qwen2.5", tokenizer, chat_template=tagged_template)
    hf = Processor("qwen2.5", tokenizer, encoder_mode="hf", chat_template=template)
    data = chat_rows(rows, seed=3, tool_share=1.0)  # every row offers tools; about half the answers call one
    batches = [data[i : i + BATCH] for i in range(0, len(data), BATCH)]
    for row in data:
        if tagged.renderer.text(row["messages"], tools=TOOLS) != fast.renderer.text(row["messages"], tools=TOOLS):
            raise SystemExit("the tagged template renders differently from the original")
    options = CollateOptions.from_mapping({"label_format": "unshifted"})
    engines = {"engine, turn markers": fast, "engine, generation tags": tagged, "engine, turn markers, hf encoder": hf}
    strategies = {}
    references = [hf_labels(tokenizer, tagged_template, batch) for batch in batches]
    for name, processor in engines.items():
        for reference, batch in zip(references, batches, strict=True):
            collated = collate(processor, batch, options)
            _check(reference, collated.tensors, name)
        strategies[name] = sorted({r.strategy for r in collated.reports})
    tokens = int(sum(r["attention_mask"].sum() for r in references))
    supervised = int(sum((r["labels"] != IGNORE_INDEX).sum() for r in references))

    variants: dict[str, Callable[[], object]] = {
        "transformers apply_chat_template + assistant mask": lambda: [
            hf_labels(tokenizer, tagged_template, b) for b in batches
        ],
        **{name: (lambda p=p: [collate(p, b, options) for b in batches]) for name, p in engines.items()},
    }
    times = dict.fromkeys(variants, float("inf"))
    for _ in steps(range(repeats), "hf assistant mask"):  # round-robin: every variant sees the same load
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - start)
    hf_time = times["transformers apply_chat_template + assistant mask"]
    return {
        "rows": rows,
        "tokens": tokens,
        "supervised_tokens": supervised,
        "encoder": fast.encoder.name,
        "identical input_ids, labels, attention_mask": True,
        "label strategies": strategies,
        "tokens_per_s": {name: tokens / t for name, t in times.items()},
        "ratio over transformers": {name: hf_time / times[name] for name in engines},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 chats, 2 repeats")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args()
    result = run(args.quick, args.rows, args.repeats)
    print(
        f"{result['rows']} chats, {result['tokens']:,} tokens ({result['supervised_tokens']:,} supervised); "
        f"input_ids, labels and attention_mask identical on every path"
    )
    for name, rate in result["tokens_per_s"].items():
        ratio = result["ratio over transformers"].get(name)
        print(f"{name:>50}: {rate / 1e6:6.3f} Mtok/s" + (f"  {ratio:5.2f}x transformers" if ratio else ""))


if __name__ == "__main__":
    main()
