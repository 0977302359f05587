"""Media payloads to validated media: images to RGB Pillow images, audio to 1-D float32 samples.

Every check happens here, before any processor sees the data, and every failure is a MediaError that names the
sample and the content part. Nothing is fetched over a network: an image is encoded bytes (PNG/JPEG/WebP, raw or
base64, or a ``data:`` URL) or a path / ``file://`` URL that must resolve, after following symlinks, inside one
of the operator's media roots. Limits live in a ``MediaPolicy`` (operator configuration, never request input);
Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` is left alone.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from feedline.proto import MediaError

__all__ = ["MediaPolicy", "decode_image", "load_audio", "load_image"]

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"RIFF", "WEBP"))
_HEAD = 64  # characters of a bare string read to tell base64 image data from a path
_MEDIA_ROOT_HINT = (
    "Image paths are read only inside the media roots: start the server (or the offline command) with "
    "--media-root DIR (config media_roots, env FEEDLINE_MEDIA_ROOTS), or send the image inline as a "
    "data URL"
)


@dataclass(frozen=True)
class MediaPolicy:
    """What media a deployment accepts (set by the operator; requests cannot change it).

    ``roots``: directories that image paths and ``file://`` URLs may resolve inside (empty: paths refused).
    ``max_image_pixels``: width*height limit checked from the header, before decoding (decompression bombs).
    ``max_image_bytes``: encoded size limit. ``max_audio_seconds``: audio length limit.
    """

    roots: tuple[Path, ...] = ()
    max_image_pixels: int = 50_000_000
    max_image_bytes: int = 32 * 1024 * 1024
    image_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP")
    max_audio_seconds: float = 1800.0
    _real_roots: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        roots = tuple(Path(r) for r in self.roots)
        object.__setattr__(self, "roots", roots)
        object.__setattr__(self, "_real_roots", tuple(os.path.realpath(r) for r in roots))

    def resolve(self, reference: str, *, sample: int, where: str) -> Path:
        """The real path of ``reference`` (relative to a root, or absolute), refused unless inside a root."""
        if not self.roots:
            raise MediaError(
                "image paths are not accepted: the server has no media root configured",
                sample=sample,
                field=where,
                hint=_MEDIA_ROOT_HINT,
            )
        if "\x00" in reference:
            raise MediaError("an image path cannot contain a NUL character", sample=sample, field=where)
        candidates = [reference] if os.path.isabs(reference) else [os.path.join(r, reference) for r in self.roots]
        for candidate in candidates:
            real = os.path.realpath(candidate)
            if not any(_inside(real, root) for root in self._real_roots):
                continue
            if os.path.isfile(real):
                return Path(real)
        raise MediaError(
            f"image path {reference!r} is not a file inside the media roots",
            sample=sample,
            field=where,
            hint=_MEDIA_ROOT_HINT,
        )


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def load_image(payload: Mapping[str, Any], policy: MediaPolicy, *, sample: int, where: str) -> Any:
    """One image content part to an RGB ``PIL.Image``; MediaError names ``sample`` and ``where``."""
    return decode_image(_image_bytes(payload, policy, sample, where), policy, sample=sample, where=where)


def _image_bytes(payload: Mapping[str, Any], policy: MediaPolicy, sample: int, where: str) -> bytes:
    """The encoded bytes of an image part, whichever of the accepted forms it uses."""
    for key in ("image", "image_url", "url", "path", "base64", "data"):
        if key in payload and payload[key] is not None:
            value = payload[key]
            break
    else:
        raise MediaError(
            "an image part needs 'image', 'image_url', 'url', 'path' or 'base64'", sample=sample, field=where
        )
    if isinstance(value, Mapping):  # OpenAI: {"image_url": {"url": ...}}
        value = value.get("url")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str) or not value:
        raise MediaError(
            f"an image must be encoded bytes, base64 text, a data URL or a path; got {type(value).__name__}",
            sample=sample,
            field=where,
        )
    if key == "path":
        return _read_file(policy.resolve(value, sample=sample, where=where), policy, sample, where)
    if key == "base64":
        return _b64(value, sample, where)
    return _from_reference(value, policy, sample, where)


def _from_reference(value: str, policy: MediaPolicy, sample: int, where: str) -> bytes:
    """A data URL, a file:// URL, bare base64 of a PNG/JPEG/WebP file, or a path under a media root."""
    if value.startswith("data:"):
        comma = value.find(",")
        if comma < 0 or not value[:comma].endswith(";base64"):
            raise MediaError("a data URL must be base64-encoded", sample=sample, field=where)
        return _b64(value, sample, where, start=comma + 1)
    if "://" in value[:_HEAD]:
        url = urlparse(value)
        if url.scheme != "file" or url.netloc not in ("", "localhost"):
            raise MediaError(
                f"URL scheme {url.scheme!r} refused: only file:// inside a media root (no network fetch)",
                sample=sample,
                field=where,
            )
        return _read_file(policy.resolve(unquote(url.path), sample=sample, where=where), policy, sample, where)
    if _is_b64_image(value):
        return _b64(value, sample, where)
    return _read_file(policy.resolve(value, sample=sample, where=where), policy, sample, where)


def _is_b64_image(text: str) -> bool:
    """Whether bare text is base64 of a PNG/JPEG/WebP file, judged from its first characters only."""
    head = "".join(text[:_HEAD].split())
    try:
        raw = base64.b64decode(head[: len(head) // 4 * 4], validate=True)
    except (binascii.Error, ValueError):
        return False
    return any(raw.startswith(m) for m, _ in _MAGIC)


def _b64(text: str, sample: int, where: str, *, start: int = 0) -> bytes:
    """Decode ``text[start:]`` as base64 (whitespace and line breaks skipped) with one ASCII copy and no slicing."""
    try:
        return binascii.a2b_base64(memoryview(text.encode("ascii"))[start:])
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MediaError(f"image data is not valid base64: {exc}", sample=sample, field=where) from exc


def _read_file(path: Path, policy: MediaPolicy, sample: int, where: str) -> bytes:
    size = path.stat().st_size
    if size > policy.max_image_bytes:
        raise MediaError(
            f"image file is {size} bytes; the limit is {policy.max_image_bytes}", sample=sample, field=where
        )
    return path.read_bytes()


def decode_image(data: bytes, policy: MediaPolicy, *, sample: int = 0, where: str = "image") -> Any:
    """Validate and decode encoded image bytes to an RGB image, decoding the pixels once.

    Format and size come from the header, checked before any pixel is decoded (decompression bombs); a PNG's
    chunk checksums are verified first (Pillow's ``verify``, which decodes nothing; JPEG and WebP have no such
    check in Pillow); truncated or corrupt pixel data fails the one ``load``.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise MediaError("image data is empty", sample=sample, field=where)
    if len(data) > policy.max_image_bytes:
        raise MediaError(
            f"image is {len(data)} bytes; the limit is {policy.max_image_bytes}", sample=sample, field=where
        )
    formats = list(policy.image_formats)
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
        _check_size(image.size, policy, sample, where)
        if image.format == "PNG":
            image.verify()  # consumes the file: the header is parsed again below, the pixels still once
            image = Image.open(io.BytesIO(data), formats=["PNG"])
        image.load()
    except Image.DecompressionBombError as exc:
        raise MediaError(f"image refused as a decompression bomb: {exc}", sample=sample, field=where) from exc
    except UnidentifiedImageError as exc:
        raise MediaError(
            f"not a {'/'.join(formats)} image (unknown format, or a corrupt header)", sample=sample, field=where
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise MediaError(f"image is truncated or corrupt: {exc}", sample=sample, field=where) from exc
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_size(size: tuple[int, int], policy: MediaPolicy, sample: int, where: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise MediaError(f"image has zero size ({width}x{height})", sample=sample, field=where)
    if width * height > policy.max_image_pixels:
        raise MediaError(
            f"image declares {width}x{height} = {width * height} pixels; the limit is "
            f"{policy.max_image_pixels} (possible decompression bomb)",
            sample=sample,
            field=where,
        )


def load_audio(
    payload: Mapping[str, Any], policy: MediaPolicy, *, expected_rate: int | None, sample: int, where: str
) -> np.ndarray:
    """One audio part (1-D float samples plus a sample rate) to contiguous float32 samples."""
    audio = payload.get("audio", payload.get("input_audio", payload))
    if not isinstance(audio, Mapping):
        audio = {"array": audio, "sampling_rate": payload.get("sampling_rate")}
    samples = audio.get("array", audio.get("samples"))
    rate = audio.get("sampling_rate", audio.get("sample_rate"))
    if samples is None:
        raise MediaError(
            "an audio part needs 'array' (1-D float samples) and 'sampling_rate'", sample=sample, field=where
        )
    try:
        arr = np.asarray(samples)
    except (ValueError, TypeError) as exc:  # ragged nested lists, objects numpy cannot hold
        raise MediaError(f"audio samples are not an array: {exc}", sample=sample, field=where) from None
    described = f"shape {arr.shape} dtype {arr.dtype}"
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.floating):
        raise MediaError(f"audio must be non-empty 1-D float samples; got {described}", sample=sample, field=where)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise MediaError(
            f"audio has a NaN or infinite sample at position {bad} ({described})", sample=sample, field=where
        )
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise MediaError(f"audio needs a positive integer sampling_rate; got {rate!r}", sample=sample, field=where)
    if expected_rate is not None and int(rate) != expected_rate:
        raise MediaError(
            f"audio is sampled at {rate} Hz; this processor needs {expected_rate} Hz (resample before sending)",
            sample=sample,
            field=where,
        )
    if arr.size > policy.max_audio_seconds * int(rate):
        raise MediaError(
            f"audio is {arr.size / int(rate):.1f} s long; the limit is {policy.max_audio_seconds} s",
            sample=sample,
            field=where,
        )
    return np.ascontiguousarray(arr, dtype=np.float32)
