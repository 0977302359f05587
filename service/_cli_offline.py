"""`feedline collate` and `feedline mask`: the engine on local files, no server involved."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from feedline.proto import FeedlineError, bfloat16_to_float32

from ._options import CollateOptions
from .collate._batch import batch_pad_id, pad_samples, tokenize_rows
from .collate._mask_report import mask_report
from .engine._sample import TOKEN_AXIS_KEYS
from .media._loading import MediaPolicy
from .media._tensors import wire_dtypes
from .tokenizers._processor import Processor, load_processor

__all__ = ["add_offline_commands"]

_PER_TOKEN = frozenset({"input_ids", "labels", "loss_mask", "attention_mask", *TOKEN_AXIS_KEYS})
_ANSI_SUPERVISED = "\x1b[1;32m"
_ANSI_RESET = "\x1b[0m"


def add_offline_commands(subparsers: Any) -> None:
    """Register the `collate` and `mask` subcommands on an argparse subparsers object."""
    collate = subparsers.add_parser("collate", help="tokenize and label JSONL rows into JSONL tensors")
    _add_processor_args(collate)
    collate.add_argument("--input", required=True, type=Path, help="JSONL file, one row per line")
    collate.add_argument("--output", required=True, type=Path, help="JSONL file to write ('-' for stdout)")
    collate.add_argument("--no-progress", action="store_true", help="do not draw a progress bar on stderr")
    _add_option_args(collate)
    collate.set_defaults(func=run_collate)

    mask = subparsers.add_parser("mask", help="print one conversation's tokens with supervised spans marked")
    _add_processor_args(mask)
    mask.add_argument("--input", required=True, type=Path, help="a JSON file holding one row")
    mask.add_argument("--json", action="store_true", help="print the /v1/mask JSON instead of marked text")
    mask.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    _add_option_args(mask)
    mask.set_defaults(func=run_mask)


def _add_processor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--processor", default="qwen2.5", help="a built-in name or a local directory (a hub id with --allow-hub)"
    )
    parser.add_argument(
        "--allow-hub",
        action="store_const",
        const=True,
        default=None,
        help="let --processor be a hub id (env FEEDLINE_ALLOW_HUB; off: nothing is fetched)",
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow code from the model repository")
    parser.add_argument("--media-root", action="append", default=[], type=Path, help="directory media may be read from")


def _add_option_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label-policy", choices=("assistant", "nemo"), default="assistant")
    parser.add_argument(
        "--label-format",
        choices=("shifted", "unshifted", "loss_mask"),
        default=None,
        help="default: the label policy's convention (assistant: unshifted, nemo: shifted)",
    )
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--truncation", choices=("none", "right", "left"), default="none")
    parser.add_argument("--padding", choices=("none", "longest", "max_length"), default="none")
    parser.add_argument("--train-on-last-turn-only", action="store_true")
    parser.add_argument("--mask-reasoning-content", action="store_true")
    parser.add_argument("--no-answer-only", action="store_true", help="supervise every token")
    parser.add_argument("--on-zero-labels", choices=("error", "skip"), default="error")
    parser.add_argument("--overlong", choices=("error", "drop"), default="error")


def options_from_args(args: argparse.Namespace) -> CollateOptions:
    """CollateOptions from parsed CLI flags (validated like any request)."""
    return CollateOptions.from_mapping(
        {
            "label_policy": args.label_policy,
            "label_format": args.label_format,
            "max_length": args.max_length,
            "truncation": args.truncation,
            "padding": args.padding,
            "train_on_last_turn_only": args.train_on_last_turn_only,
            "mask_reasoning_content": args.mask_reasoning_content,
            "answer_only": not args.no_answer_only,
            "on_zero_labels": args.on_zero_labels,
            "overlong": args.overlong,
        }
    )


def _load(args: argparse.Namespace) -> Processor:
    return load_processor(
        str(args.processor), args.processor, trust_remote_code=args.trust_remote_code, allow_hub=args.allow_hub
    )


def media_policy_from_args(args: argparse.Namespace) -> MediaPolicy:
    """The media policy for image paths in the rows: readable only inside the ``--media-root`` directories."""
    return MediaPolicy(roots=tuple(args.media_root))


def run_collate(args: argparse.Namespace) -> int:
    """Write one JSON object per input row; a bad row becomes an error line and the others still come out."""
    options = options_from_args(args)
    processor = _load(args)
    media = media_policy_from_args(args)
    rows = list(_read_jsonl(args.input))
    failures = 0
    with _open_output(args.output) as out:
        for index, row in _progress(rows, disable=args.no_progress):
            record = _collate_one(processor, row, options, index, media)
            failures += "error" in record
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"feedline collate: {len(rows) - failures} rows written, {failures} errors", file=sys.stderr)
    return 1 if failures else 0


def _collate_one(
    processor: Processor, row: Any, options: CollateOptions, index: int, media: MediaPolicy
) -> dict[str, Any]:
    if isinstance(row, FeedlineError):
        return {"index": index, "error": row.at_sample(index).to_dict()}
    try:
        samples, reports = tokenize_rows(processor, [row], options, first_index=index, media=media)
    except FeedlineError as exc:
        return {"index": index, "error": exc.to_dict()}
    report = reports[0]
    record: dict[str, Any] = {"index": index, "status": report.status}
    if samples:
        arrays = pad_samples(samples, options, batch_pad_id(processor, options))
        record.update(_row_lists(arrays, wire_dtypes(arrays, options.pixel_dtype)))
    record.update(
        label_strategy=report.strategy, num_label_tokens=report.num_label_tokens, warnings=list(report.warnings)
    )
    if report.error:
        record["report"] = report.error
    return record


def _row_lists(arrays: dict[str, np.ndarray], dtypes: dict[str, str]) -> dict[str, Any]:
    """A one-row batch as lists: per-token tensors without the batch axis, per-item media tensors (pixel_values,
    image grids, ``n_images_per_sample``) whole, since every item in them is this row's; bfloat16 as its values."""
    out = {}
    for k, v in arrays.items():
        values = bfloat16_to_float32(v) if dtypes.get(k) == "bfloat16" else v
        out[k] = (np.take(values, 0, axis=-2) if k in _PER_TOKEN else values).tolist()
    return out


def _read_jsonl(path: Path) -> Iterator[Any]:
    """Rows of a JSONL file; an unparsable line yields an error in its place, so numbering stays right."""
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as exc:
                yield FeedlineError(f"line {lineno} is not JSON: {exc}", field="line")


def _open_output(path: Path) -> TextIO:
    if str(path) == "-":
        return _NoClose(sys.stdout)  # type: ignore[return-value]  # a TextIO in every way the caller uses
    return path.open("w", encoding="utf-8")


class _NoClose:
    """stdout as a context manager that does not close it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __enter__(self) -> TextIO:
        return self._stream

    def __exit__(self, *exc: object) -> None:
        self._stream.flush()


def _progress(rows: list[Any], *, disable: bool) -> Iterator[tuple[int, Any]]:
    from tqdm import tqdm

    yield from enumerate(tqdm(rows, desc="collate", unit="row", file=sys.stderr, disable=disable))


def run_mask(args: argparse.Namespace) -> int:
    """Print the conversation's tokens with supervised spans marked, and the strategy used."""
    options = options_from_args(args)
    processor = _load(args)
    row = json.loads(args.input.read_text(encoding="utf-8"))
    report = mask_report(processor, row, options, media=media_policy_from_args(args))
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=1))
        return 0
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(render_marked_text(report["tokens"], color=color))
    print(f"\nstrategy: {report['strategy']}  supervised tokens: {report['num_label_tokens']} / {report['num_tokens']}")
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    return 0


def render_marked_text(tokens: list[dict[str, Any]], *, color: bool) -> str:
    """Concatenate token pieces, wrapping each supervised run in [[...]] (or green when ``color``)."""
    opening, closing = (_ANSI_SUPERVISED, _ANSI_RESET) if color else ("[[", "]]")
    parts: list[str] = []
    inside = False
    for token in tokens:
        if token["kind"] == "truncated":
            continue
        if token["supervised"] != inside:
            parts.append(opening if token["supervised"] else closing)
            inside = token["supervised"]
        parts.append(token["piece"])
    if inside:
        parts.append(closing)
    return "".join(parts)
