"""Kimi-VL / Kimi-K2.5 (remote-code processors): placeholder pre-expansion to a fixed sequence length.

These processors leave one ``<|media_pad|>`` per image and let the model expand it. For pipeline parallelism
the sequence length must be known before the model runs, so (as NeMo's ``kimi_k25_vl_collate_fn`` does) each
placeholder becomes ``(h//2)*(w//2)`` copies from the processor's ``grid_thws``, and rows are padded to
``max_length`` (required here: ``padding="max_length"`` whenever ``max_length`` is set). Truncation never leaves
a partial image: the media-aware cut in the media path drops a whole image, its tokens and its patches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from feedline.proto import InvalidOptions

from ..._options import CollateOptions
from ._protocol import LoadedMedia, ProcessorCall
from .generic import GenericFamily, processor_errors, verified_call

__all__ = ["KimiFamily"]

_GRID_KEYS = ("grid_thws", "image_grid_thw")


class KimiFamily(GenericFamily):
    name = "kimi"
    merge_kernel = (2, 2)

    def check_options(self, options: CollateOptions) -> None:
        if options.max_length is not None and options.padding != "max_length":
            raise InvalidOptions(
                "Kimi media expansion fixes the sequence length: use padding='max_length' with max_length",
                field="padding",
            )

    def call(self, processor: Any, text: str, media: LoadedMedia, index: int) -> ProcessorCall:
        hf = processor.hf_processor
        kwargs: dict[str, Any] = {}
        if media.images:
            kwargs["medias"] = [{"type": "image", "image": im} for im in media.images]
        with processor_errors(index, hf):
            out = dict(hf(text=[text], return_tensors="np", **kwargs))
        expand = {}
        grids = _grids(out)
        if grids is not None and len(grids):
            mh, mw = self.merge_kernel
            expand[self._placeholder_id(hf)] = (grids[:, 1] // mh) * (grids[:, 2] // mw)
        with processor_errors(index, hf):
            return verified_call(processor, text, out, expand)

    @staticmethod
    def _placeholder_id(hf: Any) -> int:
        token_id = getattr(hf, "media_placeholder_token_id", None)
        if isinstance(token_id, int):
            return token_id
        return int(hf.tokenizer.convert_tokens_to_ids("<|media_pad|>"))

    def media_token_ids(self, processor: Any) -> frozenset[int]:
        return super().media_token_ids(processor) | {self._placeholder_id(processor.hf_processor)}

    def select_media(self, tensors: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
        out = dict(tensors)
        grids = _grids(tensors)
        if grids is None:
            return out
        key = next(k for k in _GRID_KEYS if k in tensors)
        out["pixel_values"] = tensors["pixel_values"][np.repeat(keep, np.prod(grids, axis=1))]
        out[key] = grids[keep]
        return out

    def finalize(self, processor: Any, input_ids: np.ndarray, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        grids = _grids(tensors)
        if grids is None:
            return tensors
        return {**tensors, "image_grid_hws": grids[:, 1:]}


def _grids(tensors: Mapping[str, Any]) -> np.ndarray | None:
    for key in _GRID_KEYS:
        if key in tensors:
            return np.asarray(tensors[key], dtype=np.int64).reshape(-1, 3)
    return None
