"""Family rules: registry, mRoPE against transformers' own get_rope_index, and families whose real processors
cannot be built here, exercised through stand-ins made of real parts (named in each test)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import transformers

from feedline.proto import InvalidOptions, InvalidSample, UnknownFamily
from feedline.service import CollateOptions, Processor, tokenize_row
from feedline.service.media.families import GENERIC, family_for, family_named
from feedline.service.media.families.gemma3 import GEMMA4_THINKING_PREFIX
from feedline.service.media.families.qwen_vl import mrope_position_ids
from tests.support.media import image_part, own_tokenizer, processor, vqa_row

OPTS = CollateOptions()


def test_registry_is_explicit() -> None:
    assert family_for(processor("qwen2.5-vl").hf_processor).name == "qwen_vl"
    assert family_for(object()) is GENERIC
    with pytest.raises(UnknownFamily):
        family_named("nope")


def test_mrope_matches_transformers_get_rope_index() -> None:
    proc = processor("qwen2.5-vl")
    sample = tokenize_row(proc, vqa_row(image_part(224, 112), image_part(140, 196, seed=1)), OPTS)
    config = types.SimpleNamespace(vision_config=types.SimpleNamespace(spatial_merge_size=2, tokens_per_second=2))
    model = types.SimpleNamespace(config=config)
    cls = transformers.Qwen2_5_VLModel
    model.get_vision_position_ids = types.MethodType(cls.get_vision_position_ids, model)
    ids = torch.from_numpy(sample.input_ids)[None]
    expected, _ = cls.get_rope_index(
        model,
        ids,
        torch.from_numpy(sample.media["mm_token_type_ids"])[None],
        image_grid_thw=torch.from_numpy(sample.media["image_grid_thw"]),
    )
    assert np.array_equal(sample.media["position_ids"], expected[:, 0].numpy())
    assert np.array_equal(mrope_position_ids(np.zeros(5, int), np.zeros((0, 3)), 2), np.tile(np.arange(5), (3, 1)))


def test_videoless_variant_keeps_the_real_class_name(tmp_path) -> None:
    from feedline.service.tokenizers._compat import videoless_class_for

    proc = processor("qwen2.5-vl")
    assert type(proc.hf_processor).__name__ == "Qwen2_5_VLProcessor"
    assert "video_processor" not in type(proc.hf_processor).get_attributes()
    proc.hf_processor.save_pretrained(tmp_path)
    assert videoless_class_for(tmp_path).__name__ == "Qwen2_5_VLProcessor"
    assert '"processor_class": "Qwen2_5_VLProcessor"' in (tmp_path / "processor_config.json").read_text()


def test_gemma4_thinking_prefix_is_injected_and_not_supervised() -> None:
    # Stand-in: Gemma4Processor's registry key on transformers' real Gemma3Processor code (a subclass named
    # Gemma4Processor), Gemma3ImageProcessorPil, the Gemma-structure tokenizer plus Gemma 4's turn/channel
    # tokens, and a Gemma-4-style template (<|turn>role ... <turn|>). Gemma 4's own processor and vocabulary
    # are not exercised.
    g3 = processor("gemma3-structure").hf_processor
    tok = own_tokenizer("gemma3-structure")
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|turn>", "<turn|>", "<|channel>", "<channel|>"]},
        replace_extra_special_tokens=False,
    )
    template = g3.chat_template or tok.chat_template
    template = template.replace("<start_of_turn>", "<|turn>").replace("<end_of_turn>", "<turn|>")
    cls = type("Gemma4Processor", (type(g3),), {})
    hf = cls(image_processor=g3.image_processor, tokenizer=tok, chat_template=template)
    proc = Processor("gemma4-standin", tok, hf_processor=hf)
    row = {
        "messages": [
            {"role": "user", "content": [image_part(64, 64), {"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "one"},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "two"},
        ]
    }
    sample = tokenize_row(proc, row, OPTS)
    assert sample.family == "gemma4_thinking"
    prefix = tok.encode(GEMMA4_THINKING_PREFIX, add_special_tokens=False)
    ids = sample.input_ids.tolist()
    starts = [i for i in range(len(ids)) if ids[i : i + len(prefix)] == prefix]
    assert len(starts) == 2
    for s in starts:
        assert not sample.supervised[s : s + len(prefix)].any()
    assert tok.decode(sample.input_ids[sample.supervised]) == "one<turn|>two<turn|>"
    assert "<|turn>" not in processor("gemma3-structure").tokenizer.get_vocab()  # the shared tokenizer is untouched


class _KimiLike(transformers.ProcessorMixin):
    """Stand-in for the remote-code KimiK25Processor: transformers' Qwen2VLImageProcessorPil for grids and
    patches (Kimi's own image processor is remote code), the Qwen2.5 tokenizer with <|media_pad|>, and
    Kimi's calling convention (``medias=``, one unexpanded placeholder per image, ``grid_thws``)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(self, text=None, medias=None, return_tensors=None, **kwargs):
        out = dict(self.tokenizer(text, add_special_tokens=False, return_tensors=return_tensors))
        if medias:
            img = self.image_processor([m["image"] for m in medias], return_tensors="np")
            out.update(pixel_values=img["pixel_values"], grid_thws=img["image_grid_thw"])
        return out


def test_kimi_preexpansion_fixed_length_and_whole_image_truncation() -> None:
    base = processor("qwen2.5-vl")
    tok = own_tokenizer("qwen2.5-vl")
    tok.add_special_tokens({"additional_special_tokens": ["<|media_pad|>"]}, replace_extra_special_tokens=False)
    template = base.chat_template.replace("<|vision_start|><|image_pad|><|vision_end|>", "<|media_pad|>")
    hf = type("KimiK25Processor", (_KimiLike,), {})(base.hf_processor.image_processor, tok, template)
    proc = Processor("kimi-standin", tok, hf_processor=hf)
    row = vqa_row(image_part(224, 224), image_part(112, 224, seed=1))
    sample = tokenize_row(proc, row, OPTS)
    pad = tok.convert_tokens_to_ids("<|media_pad|>")
    assert int((sample.input_ids == pad).sum()) == 8 * 8 + 4 * 8  # (h//2)*(w//2) per image
    assert sample.media["image_grid_hws"].tolist() == [[16, 16], [16, 8]]
    assert tok.decode(sample.input_ids[sample.supervised]) == "Mostly noise.<|im_end|>"
    with pytest.raises(InvalidOptions, match="padding='max_length'"):
        tokenize_row(proc, row, CollateOptions.from_mapping({"max_length": 100}))
    opts = CollateOptions.from_mapping(
        {"max_length": 60, "padding": "max_length", "truncation": "right", "answer_only": False}
    )
    cut = tokenize_row(proc, row, opts)
    assert cut.media["n_images_per_sample"].tolist() == [0] and cut.num_tokens < 60
    assert cut.media["pixel_values"].shape[0] == 0 and not (cut.input_ids == pad).any()
    from feedline.service import collate

    batch = collate(proc, [row], CollateOptions.from_mapping({"max_length": 400, "padding": "max_length"}))
    assert batch.tensors["input_ids"].shape == (1, 400)  # fixed before the model: exactly max_length wide
    assert "<|media_pad|>" not in base.tokenizer.get_vocab()  # the shared tokenizer is untouched


def test_templateless_prompt_is_masked() -> None:
    # Stand-in: the NemotronParseProcessor registry key over the same Kimi-like call shape (Nemotron-Parse's
    # processor and tokenizer are remote code); exercised: prompt + answer text, prompt masked, image tensors.
    base = processor("qwen2.5-vl")

    class _ParseLike(_KimiLike):
        def __call__(self, images=None, text=None, return_tensors=None, **kwargs):
            out = dict(self.tokenizer(text, add_special_tokens=False, return_tensors=return_tensors))
            if images:
                out["pixel_values"] = self.image_processor(images, return_tensors="np")["pixel_values"]
            return out

    tok = own_tokenizer("qwen2.5-vl")
    tok.add_special_tokens(
        {"additional_special_tokens": ["</s>", "<s>", "<predict_bbox>", "<predict_classes>", "<output_markdown>"]},
        replace_extra_special_tokens=False,
    )
    hf = type("NemotronParseProcessor", (_ParseLike,), {})(base.hf_processor.image_processor, tok, None)
    proc = Processor("parse-standin", tok, hf_processor=hf)
    sample = tokenize_row(proc, vqa_row(image_part(56, 56), answer="# Title"), OPTS)
    text = tok.decode(sample.input_ids[sample.supervised])
    assert text == "# Title<|im_end|>" and sample.family == "templateless"
    assert "pixel_values" in sample.media
    assert "<predict_bbox>" not in base.tokenizer.get_vocab()  # the shared tokenizer is untouched


def test_omni_asr_needs_final_assistant_turn_and_extracts_features() -> None:
    # Real parts: transformers' Qwen2_5OmniProcessor code (video slot dropped), WhisperFeatureExtractor
    # (numpy), Qwen2VLImageProcessorPil, the Qwen2.5 vocabulary plus the Omni audio/vision tokens (new ids),
    # and a ChatML template writing <|audio_bos|><|AUDIO|><|audio_eos|> for audio parts (not Omni's own).
    from transformers import WhisperFeatureExtractor

    from feedline.service.tokenizers._compat import without_video
    from feedline.service.tokenizers.builtin._multimodal import _qwen_tokenizer

    tok = _qwen_tokenizer(
        named={
            "image_token": "<|IMAGE|>",
            "audio_token": "<|AUDIO|>",
            "video_token": "<|VIDEO|>",
            "vision_bos_token": "<|vision_bos|>",
            "vision_eos_token": "<|vision_eos|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
        }
    )
    template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}"
        "{% else %}{% for c in m.content %}{% if c.type == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
        "{% elif c.type == 'text' %}{{ c.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    )
    base = processor("qwen2.5-vl")
    cls = without_video(transformers.Qwen2_5OmniProcessor)
    hf = cls(
        image_processor=base.hf_processor.image_processor,
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tok,
        chat_template=template,
    )
    proc = Processor("omni-standin", tok, hf_processor=hf)
    audio = {
        "type": "audio",
        "audio": {"array": np.sin(np.arange(16000) / 10).astype(np.float32), "sampling_rate": 16000},
    }
    row = {
        "messages": [
            {"role": "user", "content": [audio, {"type": "text", "text": "Transcribe."}]},
            {"role": "assistant", "content": "a tone"},
        ]
    }
    sample = tokenize_row(proc, row, OPTS)
    assert sample.family == "qwen_omni"
    assert sample.media["input_features"].shape[:2] == (1, 128)
    assert tok.decode(sample.input_ids[sample.supervised]) == "a tone<|im_end|>"
    assert int((sample.input_ids == tok.convert_tokens_to_ids("<|AUDIO|>")).sum()) > 1
    bad = {"messages": row["messages"][:1] + [{"role": "assistant", "content": " "}]}
    with pytest.raises(InvalidSample, match="non-empty assistant"):
        tokenize_row(proc, bad, OPTS)
