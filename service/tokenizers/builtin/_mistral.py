"""Mistral tokenizers rebuilt from the vocabularies that `mistral-common` ships.

Tekken files (Mistral-NeMo, Pixtral) go through transformers' own tekken converter. SentencePiece models are
converted here: SentencePiece's BPE merges the adjacent pair whose joined piece has the highest SCORE, so the
merges are listed in descending score of the piece they produce. Listing them by piece id instead (transformers'
generic extractor) puts the whitespace-run pieces, scored -1e9, first and gets most Mistral encodings wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["build_sentencepiece", "build_tekken", "mistral_data_file"]

_SPACE = "\u2581"  # SentencePiece's visible space
# ModelProto.SentencePiece.Type values.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4


def mistral_data_file(file_name: str) -> Path:
    """A tokenizer file inside the installed `mistral-common` package."""
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / file_name


def build_tekken(vocab_file: Path, template: str) -> PreTrainedTokenizerFast:
    """A fast tokenizer converted from a tekken JSON file, with `template` attached."""
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    return convert_tekken_tokenizer(str(vocab_file), chat_template=template)


def _sentencepiece_tables(model_file: Path) -> tuple[dict[str, int], list[tuple[str, str]], list[tuple[str, bool]]]:
    """Vocabulary, score-ordered merges, and the pieces matched whole (control: special; user-defined: not)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # generated protobuf module
    proto.ParseFromString(model_file.read_bytes())
    pieces = proto.pieces
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    whole = [(p.piece, p.type != _USER_DEFINED) for p in pieces if p.type in (_UNKNOWN, _CONTROL, _USER_DEFINED)]
    mergeable = {p.piece: (-p.score, i) for i, p in enumerate(pieces) if p.type == _NORMAL}
    merges = [
        (piece[:cut], piece[cut:])
        for piece in sorted(mergeable, key=mergeable.__getitem__)
        for cut in range(1, len(piece))
        if piece[:cut] in mergeable and piece[cut:] in mergeable
    ]
    return vocab, merges, whole


def build_sentencepiece(model_file: Path, template: str) -> PreTrainedTokenizerFast:
    """A fast tokenizer equivalent to a Mistral SentencePiece BPE model (byte fallback, `<s>` prepended)."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab, merges, whole = _sentencepiece_tables(model_file)
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="first", split=False)
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace(_SPACE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    backend.add_tokens([AddedToken(piece, special=special, normalized=False) for piece, special in whole])
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # unannotated upstream
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = template
    return tokenizer
