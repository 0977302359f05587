"""Built-in tokenizers: published ids, the tiktoken reference, mistral-common's chat ids, templates and the cache."""

from __future__ import annotations

import inspect
import json
import random
import textwrap
import unicodedata
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from feedline.proto import UnknownProcessor
from feedline.service.tokenizers.builtin import _mistral as _vocab_mistral
from feedline.service.tokenizers.builtin import _qwen as _vocab_qwen
from feedline.service.tokenizers.builtin import _vocab
from feedline.service.tokenizers.builtin._vocab import BUILTIN_TOKENIZERS, builtin_tokenizer, builtin_tokenizer_dir

Messages = list[dict[str, Any]]

# The three sequences of transformers' own Qwen2 tokenizer integration test and their expected ids
# (tests/models/qwen2/test_tokenization_qwen2.py, `test_tokenizer_integration`, padding removed).
TRANSFORMERS_QWEN2_CASES = [
    (
        "Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides "
        "general-purpose architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet...) for Natural "
        "Language Understanding (NLU) and Natural Language Generation (NLG) with over 32+ pretrained "
        "models in 100+ languages and deep interoperability between Jax, PyTorch and TensorFlow.",
        [
            8963,
            388,
            320,
            69514,
            3881,
            438,
            4510,
            27414,
            32852,
            388,
            323,
            4510,
            27414,
            21334,
            35722,
            1455,
            529,
            8,
            5707,
            4586,
            58238,
            77235,
            320,
            61437,
            11,
            479,
            2828,
            12,
            17,
            11,
            11830,
            61437,
            64,
            11,
            1599,
            10994,
            11,
            27604,
            321,
            33,
            529,
            11,
            29881,
            6954,
            32574,
            369,
            18448,
            11434,
            45451,
            320,
            45,
            23236,
            8,
            323,
            18448,
            11434,
            23470,
            320,
            30042,
            38,
            8,
            448,
            916,
            220,
            18,
            17,
            10,
            80669,
            4119,
            304,
            220,
            16,
            15,
            15,
            10,
            15459,
            323,
            5538,
            94130,
            2897,
            1948,
            619,
            706,
            11,
            5355,
            51,
            21584,
            323,
            94986,
            13,
        ],
    ),
    (
        "🤗 Transformers 提供了可以轻松地下载并且训练先进的预训练模型的 API 和工具。"
        "使用预训练模型可以减少计算消耗和碳排放，并且节省从头训练所需要的时间和资源。",
        [
            144834,
            80532,
            93685,
            83744,
            34187,
            73670,
            104261,
            29490,
            62189,
            103937,
            104034,
            102830,
            98841,
            104034,
            104949,
            9370,
            5333,
            58143,
            102011,
            1773,
            37029,
            98841,
            104034,
            104949,
            73670,
            101940,
            100768,
            104997,
            33108,
            100912,
            105054,
            90395,
            100136,
            106831,
            45181,
            64355,
            104034,
            113521,
            101975,
            33108,
            85329,
            1773,
        ],
    ),
    (
        '```python\ntokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen-tokenizer")\ntokenizer("世界，你好！")```',
        [
            73594,
            12669,
            198,
            85593,
            284,
            8979,
            37434,
            6387,
            10442,
            35722,
            445,
            48,
            16948,
            45274,
            16948,
            34841,
            3135,
            1138,
            85593,
            445,
            99489,
            3837,
            108386,
            6313,
            899,
            73594,
        ],
    ),
]

# Qwen2.5-Instruct's default system turn, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. ...".
QWEN2_5_DEFAULT_SYSTEM_IDS = [
    151644,
    8948,
    198,
    2610,
    525,
    1207,
    16948,
    11,
    3465,
    553,
    54364,
    14817,
    13,
    1446,
    525,
    264,
    10950,
    17847,
    13,
    151645,
    198,
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "abcDEF123",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "abcDEF123", "content": "sunny, 21C"},
    {"role": "assistant", "content": "It is sunny and 21C in Paris."},
]


def _ids(encoded: Any) -> list[int]:
    """`apply_chat_template(tokenize=True)` returns a BatchEncoding in transformers 5, a list before."""
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


# --- Qwen ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), TRANSFORMERS_QWEN2_CASES)
def test_qwen_matches_transformers_integration_ids(qwen_tokenizer: Any, text: str, expected: list[int]) -> None:
    assert qwen_tokenizer(text)["input_ids"] == expected


def test_qwen_normalises_to_nfc_only(qwen_tokenizer: Any) -> None:
    # Three characters whose NFC, NFD, NFKC and NFKD forms all differ (transformers' Qwen2 NFC test).
    assert qwen_tokenizer.backend_tokenizer.normalizer.normalize_str("\u03d2\u0301\u03d2\u0308\u017f\u0307") == (
        "\u03d3\u03d4\u1e9b"
    )


def test_qwen_merges_are_one_per_multibyte_token() -> None:
    vocab, merges = _vocab_qwen.bpe_from_ranks(_vocab_qwen.load_ranks(_vocab_qwen.qwen_vocab_file()))
    assert len(vocab) == 151_643
    assert len(merges) == 151_387  # the size of Qwen2's published merges.txt
    assert all(a + b in vocab for a, b in merges[:1000])


@pytest.fixture(scope="module")
def tiktoken_qwen() -> Any:
    tiktoken = pytest.importorskip("tiktoken")
    return tiktoken.Encoding(
        name="qwen-reference",
        pat_str=_vocab_qwen.PRETOKENIZE_REGEX,
        mergeable_ranks=_vocab_qwen.load_ranks(_vocab_qwen.qwen_vocab_file()),
        special_tokens={content: 151_643 + i for i, (content, _) in enumerate(_vocab_qwen.QWEN2_5_SPECIALS)},
    )


def _reference_texts() -> list[str]:
    """A few hundred varied texts: many scripts, emoji, code, whitespace runs, numbers, contractions."""
    seeds = [
        "Hello, world! It's a test; we'll see. I'M LOUD and they'RE quiet, aren't they?",
        "Числа: 3.14159, 2,718 и 1e-9 — всё в порядке.",
        "深度学习模型需要大量的数据。机器学习是人工智能的一个分支。",
        "日本語のテキストと、カタカナ、ひらがな、漢字を混ぜた文章です。",
        "한국어 문장도 토큰화되어야 합니다. 안녕하세요!",
        "مرحبا بالعالم، هذا نص عربي للاختبار.",
        "नमस्ते दुनिया, यह एक परीक्षण है।",
        "Γειά σου Κόσμε· ελληνικό κείμενο. שלום עולם. สวัสดีชาวโลก. Xin chào thế giới.",
        "Emoji: 👩‍👩‍👧‍👦 👍🏽 🇫🇷🇯🇵 ❤️‍🔥 🧑🏿‍🚀 😀😃😄 ✨",
        "Tabs\tand\t\tmore\t\t\ttabs, spaces     runs   and trailing   ",
        "Windows\r\nline\r\n\r\nendings and\n\n\n\nblank lines\n   \n\t\n",
        "   leading spaces, then a word",
        "math: ∀x∈ℝ, x² ≥ 0; ∑_{i=1}^{n} i = n(n+1)/2; 1/0 → ∞",
        "URL https://example.com/a/b?c=d&e=f#g and email a.b+c@example.org",
        '{"key": [1, 2, 3], "nested": {"a": null, "b": true, "c": "ünïcödé"}}',
        "SELECT id, name FROM users WHERE age >= 21 ORDER BY name DESC LIMIT 10;",
        'fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!("{:?}", v);\n}\n',
        "const f = async (x) => { await fetch(`/api/${x}`); return x ?? 0; };",
        "0123456789 12345678901234567890 3,000,000.00 $5 €10 ¥100",
        "Combining: e\u0301 a\u0308 n\u0303 and precomposed: é ä ñ; ligature ﬁ, fullwidth ＡＢＣ",
        "Zero\u200bwidth\u200djoiner\u2060and\u00a0nbsp\u2003em space",
        "<b>markup</b> <|not_special|> a<b && c>d ->> x => y",
    ]
    code = [inspect.getsource(module) for module in (json.decoder, textwrap, random)]
    rng = random.Random(20240611)
    texts = list(seeds)
    for source in code:  # real source code in chunks of assorted sizes
        start = 0
        while start < len(source) and len(texts) < 220:
            size = rng.randint(20, 600)
            texts.append(source[start : start + size])
            start += size
    alphabet = "".join(seeds) + " \t\n\r" * 8
    for _ in range(200):  # shuffled mixtures: odd boundaries between scripts, digits and whitespace
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120))))
    return texts


def test_qwen_ids_equal_tiktoken_reference(qwen_tokenizer: Any, tiktoken_qwen: Any) -> None:
    texts = _reference_texts()
    assert len(texts) >= 300
    ours = qwen_tokenizer(texts, add_special_tokens=False)["input_ids"]
    reference = [tiktoken_qwen.encode_ordinary(unicodedata.normalize("NFC", text)) for text in texts]
    mismatched = [text for text, ids, ref in zip(texts, ours, reference, strict=True) if ids != ref]
    assert mismatched == []


def test_qwen_special_tokens(qwen_tokenizer: Any) -> None:
    added = qwen_tokenizer.added_tokens_decoder
    expected = {151_643 + i: pair for i, pair in enumerate(_vocab_qwen.QWEN2_5_SPECIALS)}
    assert {i: (t.content, t.special) for i, t in added.items()} == expected
    assert expected[151_644] == ("<|im_start|>", True) and expected[151_657] == ("<tool_call>", False)
    assert (qwen_tokenizer.eos_token, qwen_tokenizer.eos_token_id) == ("<|im_end|>", 151_645)
    assert (qwen_tokenizer.pad_token, qwen_tokenizer.pad_token_id) == ("<|endoftext|>", 151_643)
    assert qwen_tokenizer.bos_token is None and qwen_tokenizer.model_max_length == 131_072
    assert len(qwen_tokenizer) == 151_665
    assert qwen_tokenizer("<|im_start|>hello<|im_end|>")["input_ids"] == [151_644, 14_990, 151_645]


@pytest.fixture(scope="module")
def qwen3_tokenizer() -> Any:
    return builtin_tokenizer("qwen3")


def test_qwen3_adds_think_and_tool_response_tokens(qwen3_tokenizer: Any, qwen_tokenizer: Any) -> None:
    added = {i: (t.content, t.special) for i, t in qwen3_tokenizer.added_tokens_decoder.items()}
    assert [added[i] for i in range(151_665, 151_669)] == [
        ("<tool_response>", False),
        ("</tool_response>", False),
        ("<think>", False),
        ("</think>", False),
    ]
    assert len(qwen3_tokenizer) == 151_669
    ids = qwen3_tokenizer("<think>\nhm\n</think>")["input_ids"]
    assert ids[0] == 151_667 and ids[-1] == 151_668
    assert ids[1:-1] == qwen_tokenizer("\nhm\n")["input_ids"]  # same vocabulary underneath


def test_qwen2_5_default_system_prompt_ids(qwen_tokenizer: Any, tiktoken_qwen: Any) -> None:
    ids = _ids(qwen_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True))
    assert ids[: len(QWEN2_5_DEFAULT_SYSTEM_IDS)] == QWEN2_5_DEFAULT_SYSTEM_IDS
    rest = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert ids[len(QWEN2_5_DEFAULT_SYSTEM_IDS) :] == tiktoken_qwen.encode(rest, allowed_special="all")


def test_qwen2_5_template_renders_tools_conversation(qwen_tokenizer: Any) -> None:
    text = qwen_tokenizer.apply_chat_template(TOOL_CONVERSATION, tools=[WEATHER_TOOL], tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + json.dumps(WEATHER_TOOL, ensure_ascii=False)
        + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nsunny, 21C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nIt is sunny and 21C in Paris.<|im_end|>\n"
    )
    ids = _ids(qwen_tokenizer.apply_chat_template(TOOL_CONVERSATION, tools=[WEATHER_TOOL]))
    # <tool_call> and </tool_call> are single tokens: twice in the system prompt, once in the assistant turn.
    assert ids.count(151_657) == 3 and ids.count(151_658) == 3


def test_qwen3_template_drops_earlier_reasoning(qwen3_tokenizer: Any) -> None:
    tokenizer = qwen3_tokenizer
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "add them"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "add again"},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n<think>\nadd again\n</think>\n\n6<|im_end|>\n"
    )
    # Reasoning written inline is moved the same way; the rendering of turn 2 differs from its prefix rendering.
    inline = [messages[0], {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"}, messages[2]]
    prefix = tokenizer.apply_chat_template(inline[:2], tokenize=False)
    full = tokenizer.apply_chat_template(inline, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert "<think>\nadd them\n</think>\n\n4<|im_end|>" in prefix
    assert "add them" not in full and full.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


# --- Mistral -------------------------------------------------------------------------------------------------

MISTRAL_CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?\nExplain   briefly."},
        {"role": "assistant", "content": "6: three plus three."},
    ],
    [
        {"role": "user", "content": "Écris un poème sur la mer 🌊"},
        {"role": "assistant", "content": " La mer\n  est bleue."},
        {"role": "user", "content": "  merci  "},
    ],
    [
        {"role": "user", "content": "def f(x):\n    return x**2\n\n# explain"},
        {"role": "assistant", "content": "It squares x."},
        {"role": "user", "content": "日本語で説明して"},
        {"role": "assistant", "content": "xを二乗します。"},
    ],
    TOOL_CONVERSATION,
]


@cache
def _mistral_common(file_name: str) -> Any:
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.from_file(str(_vocab_mistral.mistral_data_file(file_name)), mode=ValidationMode.agnostic)


def _mistral_common_ids(file_name: str, messages: Messages, tools: Messages | None) -> list[int]:
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    request = ChatCompletionRequest(messages=_mistral_messages(messages), tools=tools)
    return list(_mistral_common(file_name).encode_chat_completion(request).tokens)


def _mistral_messages(messages: Messages) -> Messages:
    """mistral-common wants tool-call arguments as a JSON string."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {
                **message,
                "tool_calls": [
                    {**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                    for c in calls
                ],
            }
        out.append(message)
    return out


@pytest.mark.parametrize("messages", MISTRAL_CONVERSATIONS)
def test_mistral_tekken_chat_ids_equal_mistral_common(mistral_tekken_tokenizer: Any, messages: Messages) -> None:
    tools = [WEATHER_TOOL] if messages is TOOL_CONVERSATION else None
    ours = _ids(mistral_tekken_tokenizer.apply_chat_template(_mistral_messages(messages), tools=tools))
    assert ours == _mistral_common_ids("tekken_240718.json", messages, tools)


@pytest.mark.parametrize("messages", MISTRAL_CONVERSATIONS)
def test_mistral_sp_chat_ids_equal_mistral_common(mistral_sp_tokenizer: Any, messages: Messages) -> None:
    tools = [WEATHER_TOOL] if messages is TOOL_CONVERSATION else None
    ours = _ids(mistral_sp_tokenizer.apply_chat_template(_mistral_messages(messages), tools=tools))
    assert ours == _mistral_common_ids("mistral_instruct_tokenizer_240323.model.v3", messages, tools)


def test_pixtral_chat_ids_equal_mistral_common() -> None:
    messages = MISTRAL_CONVERSATIONS[1]
    ours = _ids(builtin_tokenizer("pixtral").apply_chat_template(messages))
    assert ours == _mistral_common_ids("tekken_240911.json", messages, None)


def test_mistral_sp_raw_text_matches_sentencepiece(mistral_sp_tokenizer: Any) -> None:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(
        model_file=str(_vocab_mistral.mistral_data_file("mistral_instruct_tokenizer_240323.model.v3"))
    )
    texts = [t for t in _reference_texts()[:120] if t.strip() and not t[0].isspace() and "[" not in t]
    ours = mistral_sp_tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert [text for text, ids in zip(texts, ours, strict=True) if ids != sp.encode(text)] == []


@pytest.mark.parametrize(
    ("template", "file_name"),
    [
        ("mistral_nemo.jinja", "tekken_240718.json"),
        ("pixtral.jinja", "tekken_240911.json"),
        ("mistral_7b_v3.jinja", "mistral_instruct_tokenizer_240323.model.v3"),
    ],
)
def test_shipped_mistral_templates_are_what_mistral_common_generates(template: str, file_name: str) -> None:
    from mistral_common.integrations.chat_templates.chat_templates import convert_tokenizer_to_chat_template

    generated = convert_tokenizer_to_chat_template(_vocab_mistral.mistral_data_file(file_name))
    assert _vocab._template_text(template) == generated


# --- registry and cache ----------------------------------------------------------------------------------------


def test_every_builtin_is_saved_with_its_template_file() -> None:
    assert BUILTIN_TOKENIZERS == ("mistral-7b-v3", "mistral-nemo", "pixtral", "qwen2.5", "qwen3")
    for name in BUILTIN_TOKENIZERS:
        directory = builtin_tokenizer_dir(name)
        assert (directory / "tokenizer.json").is_file()
        saved = (directory / "chat_template.jinja").read_text(encoding="utf-8")
        assert saved == _vocab._template_text(_vocab._BUILTINS[name].template)


def test_reloaded_tokenizer_keeps_chat_template(qwen_tokenizer: Any) -> None:
    assert qwen_tokenizer.chat_template == _vocab._template_text("qwen2_5.jinja")


def test_unknown_builtin_is_refused() -> None:
    with pytest.raises(UnknownProcessor, match="no built-in tokenizer 'llama-9'"):
        builtin_tokenizer_dir("llama-9")


def test_cache_builds_once_and_reloads_identical_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, qwen_tokenizer: Any
) -> None:
    monkeypatch.setenv("FEEDLINE_CACHE_DIR", str(tmp_path))
    directory = builtin_tokenizer_dir("qwen2.5")
    assert directory.parent == tmp_path / "tokenizers" and directory.name.startswith("qwen2.5-")
    built_at = (directory / "tokenizer.json").stat().st_mtime_ns
    assert builtin_tokenizer_dir("qwen2.5") == directory
    reloaded = builtin_tokenizer("qwen2.5")
    assert (directory / "tokenizer.json").stat().st_mtime_ns == built_at
    texts = [text for text, _ in TRANSFORMERS_QWEN2_CASES] + ["<|im_start|>user\nhi<|im_end|>"]
    assert reloaded(texts)["input_ids"] == qwen_tokenizer(texts)["input_ids"]
    assert [p.name for p in (tmp_path / "tokenizers").iterdir()] == [directory.name]  # no temp folder left


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FEEDLINE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _vocab.cache_dir() == tmp_path / "xdg" / "feedline"
    monkeypatch.setenv("FEEDLINE_CACHE_DIR", str(tmp_path / "mine"))
    assert _vocab.cache_dir() == tmp_path / "mine"


class _FakeTokenizer:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def save_pretrained(self, directory: Path) -> None:
        (Path(directory) / "tokenizer.json").write_text(self.marker)


def test_build_race_keeps_the_first_complete_folder(tmp_path: Path) -> None:
    final = tmp_path / "tokenizers" / "fake-0123"
    first = _vocab._Builtin(lambda: tmp_path, "x.jinja", lambda path, template: _FakeTokenizer("first"))
    second = _vocab._Builtin(lambda: tmp_path, "x.jinja", lambda path, template: _FakeTokenizer("second"))
    _vocab._build_atomically(first, tmp_path, "", final)
    _vocab._build_atomically(second, tmp_path, "", final)  # lost the race: its own folder is discarded
    assert (final / "tokenizer.json").read_text() == "first"
    assert sorted(p.name for p in final.parent.iterdir()) == ["fake-0123"]


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def broken(path: Path, template: str) -> Any:
        raise OSError("disk full")

    final = tmp_path / "tokenizers" / "broken-0123"
    with pytest.raises(OSError, match="disk full"):
        _vocab._build_atomically(_vocab._Builtin(lambda: tmp_path, "x.jinja", broken), tmp_path, "", final)
    assert list(final.parent.iterdir()) == []
