"""Media decoding and validation with real Pillow images and numpy audio."""

from __future__ import annotations

import base64
import os
import struct

import numpy as np
import pytest

from feedline.proto import MediaError
from feedline.service.media._loading import MediaPolicy, decode_image, load_audio, load_image
from tests.support.media import encode, noise, png_declaring

POLICY = MediaPolicy()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_formats_decode_to_rgb(fmt: str) -> None:
    data = encode(noise(), fmt)
    for payload in (
        {"image": data},
        {"image": base64.b64encode(data).decode()},
        {"image_url": {"url": "data:image/x;base64," + base64.b64encode(data).decode()}},
        {"base64": base64.b64encode(data).decode()},
    ):
        img = load_image(payload, POLICY, sample=0, where="p")
        assert img.mode == "RGB" and img.size == (64, 48)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA"])
def test_modes_are_converted_to_rgb(mode: str) -> None:
    img = decode_image(encode(noise(mode=mode), "PNG"), POLICY)
    assert img.mode == "RGB"


def test_gif_is_refused_by_format() -> None:
    with pytest.raises(MediaError, match="not a PNG/JPEG/WEBP"):
        decode_image(encode(noise(), "GIF"), POLICY, sample=3, where="messages[0].content[0]")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_a_clear_error(fmt: str) -> None:
    data = encode(noise(256, 256), fmt)
    with pytest.raises(MediaError, match="truncated or corrupt") as err:
        decode_image(data[: len(data) // 2], POLICY, sample=7, where="messages[1].content[0]")
    assert err.value.sample == 7 and err.value.field == "messages[1].content[0]"


def test_decompression_bomb_is_refused_from_the_header() -> None:
    with pytest.raises(MediaError, match="decompression bomb"):
        decode_image(png_declaring(20_000, 20_000), POLICY)
    small = MediaPolicy(max_image_pixels=1000)
    with pytest.raises(MediaError, match="limit is 1000"):
        decode_image(encode(noise(), "PNG"), small)


def test_zero_size_and_empty_and_garbage() -> None:
    with pytest.raises(MediaError, match="zero size|corrupt"):
        decode_image(png_declaring(0, 10), POLICY)
    with pytest.raises(MediaError, match="empty"):
        decode_image(b"", POLICY)
    with pytest.raises(MediaError):
        load_image({"image": "bm90IGFuIGltYWdl"}, POLICY, sample=0, where="p")  # base64 of text, no root


def test_paths_resolve_only_inside_media_roots(tmp_path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    data = encode(noise(), "PNG")
    (root / "a.png").write_bytes(data)
    (outside / "secret.png").write_bytes(data)
    os.symlink(outside / "secret.png", root / "link.png")
    policy = MediaPolicy(roots=(root,))
    assert load_image({"image": "a.png"}, policy, sample=0, where="p").size == (64, 48)
    assert load_image({"path": str(root / "a.png")}, policy, sample=0, where="p").mode == "RGB"
    assert load_image({"image": (root / "a.png").as_uri()}, policy, sample=0, where="p").mode == "RGB"
    for bad in ("../outside/secret.png", str(outside / "secret.png"), "link.png", (outside / "secret.png").as_uri()):
        with pytest.raises(MediaError, match="inside the media roots"):
            load_image({"image": bad}, policy, sample=0, where="p")
    for url in ("http://example.com/a.png", "https://x/y.png", "file://otherhost/a.png"):
        with pytest.raises(MediaError, match="no network fetch"):
            load_image({"image": url}, policy, sample=0, where="p")
    with pytest.raises(MediaError, match="no media root"):
        load_image({"image": "a.png"}, POLICY, sample=0, where="p")


def test_audio_validation_names_shape_and_dtype() -> None:
    ok = load_audio(
        {"audio": {"array": np.zeros(1600, np.float64), "sampling_rate": 16000}},
        POLICY,
        expected_rate=16000,
        sample=0,
        where="a",
    )
    assert ok.dtype == np.float32 and ok.shape == (1600,)
    assert load_audio(
        {"array": [0.0, 0.5], "sampling_rate": 16000}, POLICY, expected_rate=None, sample=0, where="a"
    ).shape == (2,)
    cases = [
        (np.zeros((2, 100), np.float32), r"shape \(2, 100\) dtype float32"),
        (np.zeros(100, np.int16), r"shape \(100,\) dtype int16"),
        (np.zeros(0, np.float32), r"shape \(0,\)"),
        (np.array([0.0, np.nan, 1.0], np.float32), "position 1"),
    ]
    for arr, message in cases:
        with pytest.raises(MediaError, match=message) as err:
            load_audio(
                {"audio": {"array": arr, "sampling_rate": 16000}},
                POLICY,
                expected_rate=16000,
                sample=5,
                where="messages[0].content[1]",
            )
        assert err.value.sample == 5
    with pytest.raises(MediaError, match="needs 16000 Hz"):
        load_audio(
            {"audio": {"array": np.zeros(10), "sampling_rate": 8000}}, POLICY, expected_rate=16000, sample=0, where="a"
        )


def test_base64_with_line_breaks_and_bad_base64() -> None:
    data = encode(noise(), "PNG")
    wrapped = base64.encodebytes(data).decode()  # MIME style: a line break every 76 characters
    assert "\n" in wrapped
    for payload in ({"image": wrapped}, {"base64": wrapped}, {"image_url": "data:image/png;base64," + wrapped}):
        assert load_image(payload, POLICY, sample=0, where="p").size == (64, 48)
    with pytest.raises(MediaError, match="not valid base64") as err:
        load_image({"base64": base64.b64encode(data).decode()[:-3]}, POLICY, sample=2, where="q")  # bad padding
    assert err.value.sample == 2 and err.value.field == "q"
    with pytest.raises(MediaError, match="not valid base64"):
        load_image({"base64": "iVBORw0KGgo\u00e9"}, POLICY, sample=0, where="p")  # non-ASCII
    with pytest.raises(MediaError, match="must be base64"):
        load_image({"image": "data:image/png,rawbytes"}, POLICY, sample=0, where="p")


def test_png_damage_is_caught_in_data_and_in_checksums() -> None:
    good = encode(noise(256, 256), "PNG")
    idat = good.index(b"IDAT")
    length = struct.unpack(">I", good[idat - 4 : idat])[0]
    for at in (idat + 100, idat + 4 + length):  # a byte of compressed pixels; a byte of that chunk's CRC only
        data = bytearray(good)
        data[at] ^= 0xFF
        with pytest.raises(MediaError, match="truncated or corrupt") as err:
            decode_image(bytes(data), POLICY, sample=1, where="messages[0].content[0]")
        assert err.value.sample == 1


def test_jpeg_and_webp_decode_once_and_keep_the_size_check() -> None:
    small = MediaPolicy(max_image_pixels=64 * 48 - 1)
    for fmt in ("JPEG", "WEBP"):
        data = encode(noise(), fmt)
        assert decode_image(data, POLICY).size == (64, 48)
        with pytest.raises(MediaError, match="possible decompression bomb"):
            decode_image(data, small)
    only_png = MediaPolicy(image_formats=("PNG",))
    with pytest.raises(MediaError, match="not a PNG image"):
        decode_image(encode(noise(), "JPEG"), only_png)
