"""Shared helpers for the media tests: real processors built offline once per test session, real images."""

from __future__ import annotations

import base64
import copy
import io
import os
import struct
import tempfile
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from feedline.service import Processor, load_processor
from feedline.service.tokenizers.builtin._multimodal import builtin_processor_dir

_CACHE = Path(os.environ.get("FEEDLINE_TEST_CACHE") or tempfile.mkdtemp(prefix="feedline-mm-"))


def processor_dir(name: str) -> Path:
    """The saved directory of a built-in multimodal processor (built once per test session)."""
    return builtin_processor_dir(name, _CACHE)


@cache
def processor(name: str) -> Processor:
    """A built-in multimodal processor, saved under a per-session cache and loaded through load_processor."""
    return load_processor(name, processor_dir(name))


def own_tokenizer(name: str) -> Any:
    """A private copy of a built-in processor's tokenizer, for a test that adds tokens to it.

    The processors above are cached for the whole session; adding tokens to theirs would change what every later
    test sees, so the result would depend on test order.
    """
    return copy.deepcopy(processor(name).tokenizer)


def image_bytes(w: int, h: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def image_part(w: int = 224, h: int = 224, fmt: str = "PNG", seed: int = 0) -> dict:
    return {"type": "image", "image": base64.b64encode(image_bytes(w, h, fmt, seed)).decode()}


def vqa_row(*parts: dict, question: str = "What is in the picture?", answer: str = "Mostly noise.") -> dict:
    return {
        "messages": [
            {"role": "user", "content": [*parts, {"type": "text", "text": question}]},
            {"role": "assistant", "content": answer},
        ]
    }


def encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def noise(w: int = 64, h: int = 48, mode: str = "RGB") -> Image.Image:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG file whose header declares any size (a decompression bomb, built without the pixels)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    )
