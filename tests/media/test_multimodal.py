"""End-to-end media path on real offline processors (Qwen2.5-VL, LLaVA-OneVision, Gemma 3 structure)."""

from __future__ import annotations

import numpy as np
import pytest

from feedline.proto import IGNORE_INDEX, InvalidSample, MediaError, SampleTooLong
from feedline.service import CollateOptions, collate, tokenize_row
from feedline.service.media._loading import MediaPolicy
from feedline.service.media._tensors import from_bf16_bits
from tests.support.media import image_bytes, image_part, processor, vqa_row

OPTS = CollateOptions()


def supervised_text(proc, ids: np.ndarray, labels: np.ndarray) -> str:
    return proc.tokenizer.decode(labels[labels != IGNORE_INDEX])


def test_qwen25_vl_sample_tensors_and_labels() -> None:
    proc = processor("qwen2.5-vl")
    hf = proc.hf_processor
    row = vqa_row(image_part(448, 224), answer="Two noisy squares.")
    sample = tokenize_row(proc, row, OPTS)
    grid = sample.media["image_grid_thw"]
    assert grid.tolist() == [[1, 16, 32]]
    assert sample.media["pixel_values"].shape == (16 * 32, 1176) and sample.media["pixel_values"].dtype == np.float32
    pads = int((sample.input_ids == hf.image_token_id).sum())
    assert pads == 16 * 32 // 4
    assert sample.family == "qwen_vl"
    assert not sample.supervised[sample.media_tokens].any()
    # the same ids the processor itself produces for its own rendering of the conversation
    text = proc.renderer.text(proc_conv(row))
    direct = hf(text=[text], images=[_pil(448, 224)], return_tensors="np")
    assert np.array_equal(direct["input_ids"][0], sample.input_ids)
    assert proc.tokenizer.decode(sample.input_ids[sample.supervised]) == "Two noisy squares.<|im_end|>"
    assert sample.media["position_ids"].shape == (3, sample.num_tokens)


def proc_conv(row):
    from feedline.service import parse_row

    return parse_row(row).template_messages(keep_parts=True)


def _pil(w, h):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(image_bytes(w, h))).convert("RGB")


def test_batch_assembly_mixed_text_and_images() -> None:
    proc = processor("qwen2.5-vl")
    rows = [
        vqa_row(image_part(224, 224), image_part(280, 336, "JPEG", seed=1)),
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        vqa_row(image_part(112, 112, "WEBP")),
    ]
    batch = collate(proc, rows, CollateOptions.from_mapping({"pixel_dtype": "bfloat16"}))
    t = batch.tensors
    assert t["n_images_per_sample"].tolist() == [2, 0, 1]
    assert t["image_grid_thw"].shape == (3, 3)
    bits = t["pixel_values"]
    assert batch.dtypes == {"pixel_values": "bfloat16"}
    assert bits.dtype == np.uint16 and bits.shape[0] == int(np.prod(t["image_grid_thw"], axis=1).sum())
    assert t["input_ids"].shape == t["labels"].shape == t["mm_token_type_ids"].shape
    assert t["position_ids"].shape == (3, *t["input_ids"].shape)
    assert [r.family for r in batch.reports] == ["qwen_vl"] * 3
    f32 = collate(proc, rows[:1], OPTS).tensors["pixel_values"]
    assert np.allclose(from_bf16_bits(bits[: f32.shape[0]]), f32, rtol=1e-2, atol=1e-2)


def test_placeholders_never_supervised_even_in_assistant_turn() -> None:
    proc = processor("qwen2.5-vl")
    row = {
        "messages": [
            {"role": "user", "content": "draw"},
            {"role": "assistant", "content": [image_part(56, 56), {"type": "text", "text": "done"}]},
        ]
    }
    sample = tokenize_row(proc, row, OPTS)
    assert sample.media_tokens.any()
    assert not sample.supervised[sample.media_tokens].any()
    nemo = tokenize_row(proc, row, CollateOptions.from_mapping({"label_policy": "nemo"}))
    assert nemo.supervised[nemo.media_tokens].any()  # NeMo's marker scan supervises them (reproduced)


def test_nemo_policy_matches_default_on_plain_vqa() -> None:
    proc = processor("qwen2.5-vl")
    rows = [vqa_row(image_part()), vqa_row(image_part(seed=2), answer="Static.")]
    mine = collate(proc, rows, CollateOptions(label_format="shifted")).tensors  # nemo's format, compared alike
    nemo = collate(proc, rows, CollateOptions.from_mapping({"label_policy": "nemo"})).tensors
    assert np.array_equal(mine["labels"], nemo["labels"])  # same supervision when no defect is triggered
    assert nemo["input_ids"].shape == nemo["mm_token_type_ids"].shape  # same-shape tensors cut by one


def test_truncation_never_cuts_inside_an_image() -> None:
    proc = processor("qwen2.5-vl")
    row = vqa_row(image_part(224, 224), image_part(224, 224, seed=3))
    full = tokenize_row(proc, row, CollateOptions.from_mapping({"answer_only": True}))
    second = np.flatnonzero(full.media["mm_token_type_ids"])[-1]
    limit = int(second) - 5  # inside the second image
    with pytest.raises(SampleTooLong):
        tokenize_row(proc, row, CollateOptions.from_mapping({"max_length": limit}))
    opts = CollateOptions.from_mapping({"max_length": limit, "truncation": "right", "answer_only": False})
    cut = tokenize_row(proc, row, opts)
    assert cut.num_tokens < limit
    assert cut.media["n_images_per_sample"].tolist() == [1]
    assert cut.media["image_grid_thw"].shape == (1, 3) and cut.media["pixel_values"].shape[0] == 256
    assert (cut.input_ids == proc.hf_processor.image_token_id).sum() == 64
    assert any("whole image" in w for w in cut.warnings)
    assert cut.media["position_ids"].shape == (3, cut.num_tokens)


def test_overlong_drop_and_skip_policies_report_indices() -> None:
    proc = processor("qwen2.5-vl")
    good, long = vqa_row(image_part(56, 56)), vqa_row(image_part(448, 448))
    bad = vqa_row({"type": "image", "image": "aGVsbG8="})  # base64 of text: not an image, not a path
    opts = CollateOptions.from_mapping({"max_length": 120, "overlong": "drop", "on_sample_error": "skip"})
    batch = collate(proc, [good, long, bad, good], opts)
    assert [r.status for r in batch.reports] == ["ok", "dropped", "skipped", "ok"]
    assert batch.reports[2].error["kind"] == "media_error" and batch.reports[2].error["sample"] == 2
    assert batch.tensors["input_ids"].shape[0] == 2
    with pytest.raises(MediaError) as err:
        collate(proc, [good, bad], OPTS)
    assert err.value.sample == 1 and err.value.field == "messages[0].content[0]"


def test_media_root_paths(tmp_path) -> None:
    proc = processor("qwen2.5-vl")
    (tmp_path / "cat.png").write_bytes(image_bytes(64, 64))
    row = vqa_row({"type": "image", "image": "cat.png"})
    with pytest.raises(MediaError, match="no media root"):
        tokenize_row(proc, row, OPTS)
    sample = tokenize_row(proc, row, OPTS, media=MediaPolicy(roots=(tmp_path,)))
    assert sample.media["image_grid_thw"].shape == (1, 3)


def test_llava_onevision_patches_padded_across_samples() -> None:
    proc = processor("llava-onevision")
    rows = [vqa_row(image_part(384, 384)), vqa_row(image_part(800, 300, seed=4))]
    batch = collate(proc, rows, OPTS)
    pv = batch.tensors["pixel_values"]
    assert pv.ndim == 5 and pv.shape[0] == 2 and pv.shape[2:] == (3, 384, 384)
    assert batch.tensors["image_sizes"].tolist() == [[384, 384], [300, 800]]
    assert [r.family for r in batch.reports] == ["llava_onevision"] * 2
    for i in range(2):
        assert (
            supervised_text(proc, batch.tensors["input_ids"][i], batch.tensors["labels"][i])
            == "Mostly noise.<|im_end|>"
        )


def test_gemma3_expansion_is_a_media_span() -> None:
    proc = processor("gemma3-structure")
    sample = tokenize_row(proc, vqa_row(image_part(300, 200)), OPTS)
    tok = proc.tokenizer
    soft = tok.convert_tokens_to_ids("<image_soft_token>")
    assert int((sample.input_ids == soft).sum()) == 256
    assert sample.media["pixel_values"].shape == (1, 3, 896, 896)
    assert sample.media["token_type_ids"].sum() == 256
    assert tok.decode(sample.input_ids[sample.supervised]) == "Mostly noise.<end_of_turn>"
    boi = tok.convert_tokens_to_ids("<start_of_image>")
    assert sample.media_tokens[sample.input_ids == boi].all()


def test_processor_rejection_is_a_per_sample_error() -> None:
    proc = processor("qwen2.5-vl")
    with pytest.raises(InvalidSample) as err:
        tokenize_row(proc, vqa_row(image_part(4000, 8)), OPTS, index=4)  # aspect ratio over Qwen's 200 limit
    assert err.value.sample == 4


def test_one_processor_call_per_batch_gives_the_per_sample_results() -> None:
    from feedline.service.collate._batch import pad_samples, tokenize_rows

    proc = processor("qwen2.5-vl")
    rows = [
        vqa_row(image_part(224, 112), image_part(84, 140, "JPEG", seed=1)),
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        vqa_row(image_part(112, 112, "WEBP", seed=2), answer="Grey."),
    ]
    batched, _ = tokenize_rows(proc, rows, OPTS)
    for row, got in zip(rows, batched, strict=False):
        alone = tokenize_row(proc, row, OPTS)  # a single row: its own processor call
        assert np.array_equal(got.input_ids, alone.input_ids)
        assert np.array_equal(got.supervised, alone.supervised)
        assert np.array_equal(got.media_tokens, alone.media_tokens)
        assert sorted(got.media) == sorted(alone.media)
        for key, value in alone.media.items():
            assert got.media[key].dtype == value.dtype and np.array_equal(got.media[key], value), key
    # each sample's pixel rows are a view of the batch's one pixel_values; the batch reuses it, uncopied
    pixels = [s.media["pixel_values"] for s in batched if "pixel_values" in s.media]
    assert pixels[0].base is not None and pixels[0].base is pixels[1].base
    batch = pad_samples(batched, OPTS, proc.pad_token_id)["pixel_values"]
    assert np.shares_memory(batch, pixels[0]) and np.array_equal(batch, np.concatenate(pixels))


def test_a_sample_the_processor_refuses_does_not_take_the_batch_down() -> None:
    proc = processor("qwen2.5-vl")
    good = vqa_row(image_part(56, 56))
    rows = [good, vqa_row(image_part(4000, 8, seed=1)), good]  # aspect ratio over Qwen's limit of 200
    batch = collate(proc, rows, CollateOptions.from_mapping({"on_sample_error": "skip"}))
    assert [r.status for r in batch.reports] == ["ok", "skipped", "ok"]
    assert batch.reports[1].error["sample"] == 1 and "rejected this sample" in batch.reports[1].error["message"]
    assert batch.tensors["image_grid_thw"].shape == (2, 3)
    with pytest.raises(InvalidSample) as err:
        collate(proc, rows, OPTS)
    assert err.value.sample == 1


def test_mask_report_marks_media_tokens_and_never_supervises_them(tmp_path) -> None:
    from feedline.service.collate._mask_report import mask_report

    proc = processor("qwen2.5-vl")
    row = vqa_row(image_part(112, 112), answer="Noise.")
    report = mask_report(proc, row, OPTS)
    media = [t for t in report["tokens"] if t["kind"] == "media"]
    pieces = [t["piece"] for t in media]
    assert pieces == ["<|vision_start|>", *["<|image_pad|>"] * 16, "<|vision_end|>"]  # 112 px: 8x8 patches, 2x2 merge
    assert not any(t["supervised"] for t in media) and all(t["label"] == IGNORE_INDEX for t in media)
    assert report["num_label_tokens"] == collate(proc, [row], OPTS).reports[0].num_label_tokens
    assert "".join(t["piece"] for t in report["tokens"] if t["supervised"]) == "Noise.<|im_end|>"
    # the operator's media policy reaches the engine: an image by path needs a media root
    (tmp_path / "cat.png").write_bytes(image_bytes(112, 112))
    by_path = vqa_row({"type": "image", "image": "cat.png"}, answer="Noise.")
    with pytest.raises(MediaError, match="no media root"):
        mask_report(proc, by_path, OPTS)
    assert mask_report(proc, by_path, OPTS, media=MediaPolicy(roots=(tmp_path,)))["tokens"] == report["tokens"]


def test_mask_report_truncation_matches_the_media_aware_cut() -> None:
    from feedline.service.collate._mask_report import mask_report

    proc = processor("qwen2.5-vl")
    row = vqa_row(image_part(224, 224), image_part(224, 224, seed=3))
    full = tokenize_row(proc, row, OPTS)
    limit = int(np.flatnonzero(full.media["mm_token_type_ids"])[-1]) - 5  # inside the second image
    opts = CollateOptions.from_mapping({"max_length": limit, "truncation": "right", "answer_only": False})
    report = mask_report(proc, row, opts)
    produced = collate(proc, [row], opts).reports[0]
    assert report["num_tokens"] == produced.num_tokens < limit
    assert report["num_label_tokens"] == produced.num_label_tokens
    kept = [t for t in report["tokens"] if t["kind"] != "truncated"]
    assert sum(t["piece"] == "<|image_pad|>" for t in kept) == 64  # the first image whole, none of the second
    assert any("truncation cuts" in w for w in report["warnings"])


def test_mask_request_uses_the_servers_media_policy(tmp_path) -> None:
    from feedline.service.server import ProcessorRegistry, ServingState, run_mask

    (tmp_path / "cat.png").write_bytes(image_bytes(56, 56))
    row = vqa_row({"type": "image", "image": "cat.png"})
    state = ServingState(ProcessorRegistry.of(processor("qwen2.5-vl")), media_roots=[tmp_path])
    report = run_mask(state, row, processor=None, fingerprint=None, options=None)
    assert [t["piece"] for t in report["tokens"] if t["kind"] == "media"] == [
        "<|vision_start|>",
        *["<|image_pad|>"] * 4,
        "<|vision_end|>",
    ]
    with pytest.raises(MediaError, match="no media root"):
        run_mask(ServingState(state.registry), row, processor=None, fingerprint=None, options=None)
