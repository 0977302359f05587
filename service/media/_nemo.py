"""The ``nemo`` label policy on the media path: NeMo AutoModel's VLM label builder, reproduced.

``build_labels_from_template`` (nemo_reference.md 2.2-2.3): for the Qwen-VL/Omni processor classes the marker
is ``<|im_start|>`` + the tokens of ``"assistant\\n"`` and the stop is ``<|im_end|>``; for other classes the marker
and stop are derived by rendering ``[user "u", assistant SENTINEL]`` against ``[user "u"]``. Every span from
after a marker through the first stop (inclusive) is supervised, media tokens included, exactly as NeMo does.
Labels are unshifted here; the shifted label format then cuts inputs and token-axis tensors by one, as NeMo's
collate does. Markers are derived once per processor (NeMo derives them on every batch).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from feedline.proto import TemplateError

from ..tokenizers._processor import Processor

__all__ = ["nemo_markers", "nemo_supervision"]

_IMSTART_PROCESSORS = frozenset(
    {
        "Qwen2VLProcessor",
        "Qwen2_5_VLProcessor",
        "Qwen2_5OmniProcessor",
        "Qwen3VLProcessor",
        "Qwen3VLMoeProcessor",
        "Qwen3OmniMoeProcessor",
    }
)
_SENTINEL = "XSENTINELMARKERX"


@lru_cache(maxsize=32)
def nemo_markers(processor: Processor) -> tuple[tuple[int, ...], int]:
    """(assistant marker token ids, stop token id), derived as NeMo derives them."""
    tok = processor.tokenizer
    if type(processor.hf_processor).__name__ in _IMSTART_PROCESSORS:
        start, stop = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
        if start is not None and stop is not None and start != tok.unk_token_id:
            return (int(start), *tok.encode("assistant\n", add_special_tokens=False)), int(stop)
    user = [{"role": "user", "content": "u"}]
    full = processor.encoder.encode_with_offsets(
        processor.renderer.text(user + [{"role": "assistant", "content": _SENTINEL}])
    )[0]
    base = processor.encoder.encode_with_offsets(processor.renderer.text(user))[0]
    sentinel = np.asarray(tok.encode(_SENTINEL, add_special_tokens=False), dtype=np.int64)
    at = _find(full, sentinel, len(base))
    if at < 0:
        raise TemplateError("nemo policy: the sentinel is not found in the rendered template")
    if at + len(sentinel) >= len(full):
        raise TemplateError("nemo policy: nothing follows the sentinel, so there is no stop token")
    marker = tuple(int(i) for i in full[len(base) : at])
    if not marker:
        raise TemplateError("nemo policy: the derived assistant marker is empty")
    return marker, int(full[at + len(sentinel)])


def _find(ids: np.ndarray, pattern: np.ndarray, start: int) -> int:
    m = len(pattern)
    for i in range(start, len(ids) - m + 1):
        if np.array_equal(ids[i : i + m], pattern):
            return i
    return -1


def nemo_supervision(processor: Processor, input_ids: np.ndarray) -> np.ndarray:
    """NeMo's ``_build_labels_from_markers`` scan as a mask: content after each marker through the stop."""
    marker, stop = nemo_markers(processor)
    ids = np.asarray(input_ids)
    n, m = len(ids), len(marker)
    mask = np.zeros(n, dtype=bool)
    pattern = np.asarray(marker, dtype=ids.dtype)
    stops = np.flatnonzero(ids == stop)
    resume = 0
    for i in np.flatnonzero(ids == pattern[0]):
        if i < resume or i + m > n or not np.array_equal(ids[i : i + m], pattern):
            continue
        j = i + m
        after = stops[np.searchsorted(stops, j) :]
        resume = int(after[0]) + 1 if after.size else n
        mask[j:resume] = True
    return mask
