"""Batch assembly of per-sample media tensors, next to the padded text tensors.

Three kinds of key: token-axis keys (``TOKEN_AXIS_KEYS``: one value per token) are padded like input_ids and
cut by one in the shifted label format; per-item keys (pixel_values, grids, image sizes, audio features,
``n_images_per_sample``) are concatenated along axis 0 in batch order, trailing axes zero-padded to the largest
sample (LLaVA-OneVision patch counts). bfloat16 has no numpy dtype: such tensors travel as their uint16 bit
patterns, and the batch carries their dtype as data (``wire_dtypes``, the codec's dtype tags);
``torch.from_numpy(a).view(torch.bfloat16)`` restores them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from feedline.proto import LabelFormat
from feedline.proto._codec import bfloat16_to_float32 as from_bf16_bits
from feedline.proto._codec import float32_to_bfloat16 as bf16_bits

from ..engine._sample import TOKEN_AXIS_KEYS, TokenizedSample

__all__ = ["batch_media", "bf16_bits", "cast_pixels", "from_bf16_bits", "wire_dtypes"]

_PAD = {"position_ids": 1}  # what transformers' get_rope_index leaves at padded positions


def cast_pixels(tensors: Mapping[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """pixel_values* in the requested float dtype (bfloat16 as its uint16 bit patterns; ``wire_dtypes`` tags them)."""
    out: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        if not key.startswith("pixel_values") or not np.issubdtype(value.dtype, np.floating) or dtype == "float32":
            out[key] = value
        elif dtype == "bfloat16":
            out[key] = bf16_bits(value)
        else:
            out[key] = value.astype(np.float16)
    return out


def wire_dtypes(tensors: Mapping[str, np.ndarray], pixel_dtype: str) -> dict[str, str]:
    """The dtype tags a batch travels with: the pixel arrays ``cast_pixels`` turned into bfloat16 bits."""
    if pixel_dtype != "bfloat16":
        return {}
    return {k: "bfloat16" for k, v in tensors.items() if k.startswith("pixel_values") and v.dtype == np.uint16}


def batch_media(samples: Sequence[TokenizedSample], fmt: LabelFormat, width: int) -> dict[str, np.ndarray]:
    """Media tensors of a padded batch (``width``: the padded token length of input_ids)."""
    keys: dict[str, None] = {}
    for s in samples:
        keys.update(dict.fromkeys(s.media))
    out: dict[str, np.ndarray] = {}
    for key in keys:
        if key in TOKEN_AXIS_KEYS:
            out[key] = _token_axis(key, samples, fmt, width)
        else:
            out[key] = _concatenate(key, samples)
    return out


def _token_axis(key: str, samples: Sequence[TokenizedSample], fmt: LabelFormat, width: int) -> np.ndarray:
    rows = [s.media.get(key) for s in samples]
    lead = next(r for r in rows if r is not None).shape[:-1]
    batch = np.full((len(rows), *lead, width), _PAD.get(key, 0), dtype=np.int64)
    for i, r in enumerate(rows):
        if r is None:
            continue
        r = r[..., :-1] if fmt is LabelFormat.SHIFTED else r
        batch[i, ..., : r.shape[-1]] = r
    return np.moveaxis(batch, 0, -2) if lead else batch  # position_ids: [3, B, L] as the models take them


def _concatenate(key: str, samples: Sequence[TokenizedSample]) -> np.ndarray:
    """Per-item tensors stacked along axis 0 in at most one copy, trailing axes zero-padded."""
    parts = [s.media.get(key, None) for s in samples]
    if key == "n_images_per_sample":
        parts = [p if p is not None else np.zeros(1, dtype=np.int64) for p in parts]
    present = [p for p in parts if p is not None]
    view = _one_view(present)
    if view is not None:
        return view
    trailing = tuple(np.max([p.shape[1:] for p in present], axis=0).tolist())
    if all(p.shape[1:] == trailing for p in present):
        return np.concatenate(present, axis=0)
    out = np.zeros((sum(p.shape[0] for p in present), *trailing), dtype=np.result_type(*present))
    at = 0
    for p in present:
        out[(slice(at, at + p.shape[0]),) + tuple(slice(0, d) for d in p.shape[1:])] = p
        at += p.shape[0]
    return out


def _one_view(parts: Sequence[np.ndarray]) -> np.ndarray | None:
    """The parts as a single view when they lie back to back in one buffer (no copy needed), else None.

    A family that calls its processor once per batch hands each sample a block of rows of the processor's
    own pixel_values; when every sample of the batch is kept, in order, those blocks are that array again.
    """
    first = parts[0]
    if len(parts) == 1:
        return first
    owner = first.base
    if owner is None:
        return None
    end = _address(first)
    for p in parts:
        same = p.base is owner and p.dtype == first.dtype and p.shape[1:] == first.shape[1:] and p.flags.c_contiguous
        if not same or _address(p) != end:
            return None
        end += p.nbytes
    shape = (sum(p.shape[0] for p in parts), *first.shape[1:])
    strides = tuple(int(np.prod(shape[i + 1 :], dtype=np.int64)) * first.itemsize for i in range(len(shape)))
    return np.lib.stride_tricks.as_strided(first, shape=shape, strides=strides)


def _address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])
