"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: ``<|image_pad|>`` runs checked against image_grid_thw, mRoPE position ids.

pixel_values are flattened patches (one row per patch, ``t*h*w`` rows per image), so dropping an image drops
its rows. Position ids are the model's 3-D rotary indices ([3, L]) computed from tokens and grids alone (what
transformers' ``get_rope_index`` computes for images from the model config's ``spatial_merge_size``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from feedline.proto import FeedlineError, InvalidSample

from ...engine._text import capture
from ._protocol import LoadedMedia, ProcessorCall
from .generic import PROCESSOR_ERRORS, GenericFamily, normalise_call

__all__ = ["QwenVLFamily", "mrope_position_ids"]

_PER_TEXT_KEYS = ("input_ids", "offset_mapping", "text_replacement_offsets", "mm_token_type_ids")
_BATCH_KEYS = frozenset({*_PER_TEXT_KEYS, "attention_mask", "pixel_values", "image_grid_thw"})


class QwenVLFamily(GenericFamily):
    name = "qwen_vl"
    extra_media_tokens = ("<|vision_start|>", "<|vision_end|>")

    def check(self, processor: Any, call: ProcessorCall, index: int) -> None:
        grids = call.tensors.get("image_grid_thw")
        if grids is None:
            return
        merge = int(processor.hf_processor.image_processor.merge_size)
        expected = np.prod(grids, axis=1) // (merge * merge)
        runs = np.asarray([len(_pad_ids(call, span)) for span in call.media_spans], dtype=np.int64)
        if runs.shape != expected.shape or not np.array_equal(runs, expected):
            raise InvalidSample(
                f"image token counts {runs.tolist()} do not match image_grid_thw ({expected.tolist()} expected)",
                sample=index,
            )

    def call_batch(
        self, processor: Any, texts: Sequence[str], media: Sequence[LoadedMedia], indices: Sequence[int]
    ) -> list[ProcessorCall | FeedlineError]:
        """One processor call for the batch: its per-call overhead paid once and pixel_values made once (each
        sample's rows are a view of them); sample by sample instead when the processor refuses the batch, so
        the error names its sample, or when the output cannot be split exactly."""
        hf = processor.hf_processor
        token = getattr(hf, "image_token", None)
        if (
            len(texts) < 2
            or not isinstance(token, str)
            or any(m.audio or t.count(token) != len(m.images) for t, m in zip(texts, media, strict=False))
        ):
            return super().call_batch(processor, texts, media, indices)
        images = [im for m in media for im in m.images]
        try:
            out = dict(
                hf(
                    text=list(texts),
                    return_tensors=None,
                    add_special_tokens=False,
                    return_offsets_mapping=True,
                    return_text_replacement_offsets=True,
                    **({"images": images} if images else {}),
                )
            )
        except PROCESSOR_ERRORS:
            return super().call_batch(processor, texts, media, indices)
        if not set(out) <= _BATCH_KEYS:
            return super().call_batch(processor, texts, media, indices)
        grids = np.asarray(out.get("image_grid_thw", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
        first_image = np.cumsum([0] + [len(m.images) for m in media])
        first_row = np.cumsum(np.concatenate([[0], np.prod(grids, axis=1)]))
        calls: list[ProcessorCall | FeedlineError] = []
        for k, text in enumerate(texts):
            part: dict[str, Any] = {key: [out[key][k]] for key in _PER_TEXT_KEYS if key in out}
            a, b = first_image[k], first_image[k + 1]
            if b > a:
                part.update(pixel_values=out["pixel_values"][first_row[a] : first_row[b]], image_grid_thw=grids[a:b])
            calls.append(capture(normalise_call, hf, text, part))
        return calls

    def select_media(self, tensors: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
        out = dict(tensors)
        grids = tensors.get("image_grid_thw")
        if grids is None:
            return out
        rows = np.repeat(keep, np.prod(grids, axis=1))
        out["pixel_values"] = tensors["pixel_values"][rows]
        out["image_grid_thw"] = grids[keep]
        return out

    def finalize(self, processor: Any, input_ids: np.ndarray, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        merge = int(getattr(processor.hf_processor.image_processor, "merge_size", 2))
        types = tensors.get("mm_token_type_ids", np.zeros_like(input_ids))
        grids = tensors.get("image_grid_thw", np.zeros((0, 3), dtype=np.int64))
        return {**tensors, "position_ids": mrope_position_ids(types, grids, merge)}


def _pad_ids(call: ProcessorCall, span: tuple[int, int]) -> np.ndarray:
    lo, hi = np.searchsorted(call.starts, span[0]), np.searchsorted(call.starts, span[1])
    return call.input_ids[lo:hi]


def mrope_position_ids(mm_token_type_ids: np.ndarray, image_grid_thw: np.ndarray, merge_size: int) -> np.ndarray:
    """3-D rotary position ids [3, L] for text and image tokens (images only; videos are not processed here).

    Text advances all three axes by one per token; an image run of ``t*(h/m)*(w/m)`` tokens gets
    (temporal, row, column) indices offset by the current position, after which the position advances by
    ``max(h, w)/m``. Each image run must be a maximal run of image tokens, in grid order.
    """
    types = np.asarray(mm_token_type_ids)
    n = types.shape[0]
    out = np.empty((3, n), dtype=np.int64)
    change = np.flatnonzero(np.diff(types)) + 1
    bounds = [0, *change.tolist(), n]
    grids = iter(np.asarray(image_grid_thw, dtype=np.int64).tolist())
    pos = 0
    for a, b in zip(bounds[:-1], bounds[1:], strict=False):
        if types[a] == 0:
            out[:, a:b] = np.arange(pos, pos + (b - a))
            pos += b - a
            continue
        t, h, w = next(grids)
        gh, gw = h // merge_size, w // merge_size
        k = np.arange(t * gh * gw)  # row-major over (t, gh, gw)
        out[0, a:b] = k // (gh * gw) + pos
        out[1, a:b] = k // gw % gh + pos
        out[2, a:b] = k % gw + pos
        pos += max(h, w) // merge_size
    return out
