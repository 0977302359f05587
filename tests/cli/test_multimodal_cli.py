"""`feedline collate` / `feedline mask` on multimodal rows: images by path under --media-root and by base64."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from feedline.proto import IGNORE_INDEX
from feedline.service._cli_offline import add_offline_commands
from tests.support.media import image_bytes, image_part, processor, processor_dir, vqa_row


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="feedline")
    add_offline_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_collate_multimodal_rows_by_media_root_and_by_base64(tmp_path: Path, capsys) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "cat.png").write_bytes(image_bytes(112, 56))
    rows = [
        vqa_row({"type": "image", "image": "cat.png"}, answer="A cat."),
        vqa_row(image_part(84, 84, "JPEG"), answer="Noise."),
    ]
    src, out = tmp_path / "rows.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    common = ["collate", "--processor", str(processor_dir("qwen2.5-vl")), "--input", str(src), "--no-progress"]
    assert _run([*common, "--output", str(out), "--media-root", str(media)]) == 0
    tokenizer = processor("qwen2.5-vl").tokenizer
    for record, (h, w), answer in zip(
        map(json.loads, out.read_text().splitlines()), [(56, 112), (84, 84)], ["A cat.", "Noise."], strict=False
    ):
        assert record["status"] == "ok"
        grid = np.asarray(record["image_grid_thw"])
        assert grid.tolist() == [[1, round(h / 28) * 2, round(w / 28) * 2]]
        assert np.asarray(record["pixel_values"]).shape == (int(grid.prod()), 1176)  # every patch, not one row
        assert record["n_images_per_sample"] == [1]
        n = len(record["input_ids"])
        assert len(record["labels"]) == len(record["mm_token_type_ids"]) == n
        assert np.asarray(record["position_ids"]).shape == (3, n)
        labels = [t for t in record["labels"] if t != IGNORE_INDEX]
        assert tokenizer.decode(labels) == answer + "<|im_end|>"
    capsys.readouterr()
    # without the media root the path row is refused (named), the base64 row still comes out
    assert _run([*common, "--output", str(out)]) == 1
    first, second = map(json.loads, out.read_text().splitlines())
    assert first["error"]["kind"] == "media_error" and first["error"]["sample"] == 0
    assert "no media root" in first["error"]["message"] and second["status"] == "ok"


def test_mask_multimodal_row_by_media_root(tmp_path: Path, capsys) -> None:
    (tmp_path / "cat.png").write_bytes(image_bytes(56, 56))
    src = tmp_path / "row.json"
    src.write_text(json.dumps(vqa_row({"type": "image", "image": "cat.png"}, answer="A cat.")), encoding="utf-8")
    argv = [
        "mask",
        "--processor",
        str(processor_dir("qwen2.5-vl")),
        "--input",
        str(src),
        "--media-root",
        str(tmp_path),
        "--json",
    ]
    assert _run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    media = [t for t in report["tokens"] if t["kind"] == "media"]
    assert len(media) == 2 + 4 and not any(t["supervised"] for t in media)  # 56 px: 4 merged patches + markers
    assert "".join(t["piece"] for t in report["tokens"] if t["supervised"]) == "A cat.<|im_end|>"
