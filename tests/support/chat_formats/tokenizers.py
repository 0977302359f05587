"""Real tokenizers for the families: a packaged vocabulary, the family's added tokens, bos/eos and its template.

Bases are feedline's built-in vocabularies (service/_vocab.py) plus Mistral 7B v0.1's SentencePiece model, the
Llama-2-style 32k vocabulary, which mistral-common ships (``mistral-v1``). A family tokenizer is built once per
machine and saved under the feedline cache (``tests-families/<name>-<hash>``), keyed by everything that shapes it,
so later sessions load it in about a second; within a process it is built or loaded once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from .registry import Family, family

__all__ = ["family_tokenizer"]

_BUILDER = "1"  # bump when the build below changes


@cache
def family_tokenizer(name: str) -> Any:
    """The tokenizer of family ``name``, with its template as ``chat_template`` (shared: do not mutate)."""
    from transformers import AutoTokenizer

    fam = family(name)
    final = _cache_root() / f"{fam.name}-{_key(fam)}"
    if not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            _build(fam).save_pretrained(scratch)
            os.rename(scratch, final)
        except OSError:
            if not final.is_dir():
                raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return AutoTokenizer.from_pretrained(final)


def _cache_root() -> Path:
    from feedline.service.tokenizers.builtin._vocab import cache_dir

    return cache_dir() / "tests-families"


def _key(fam: Family) -> str:
    import tokenizers
    import transformers

    parts = [
        _BUILDER,
        fam.base,
        repr(fam.added),
        repr((fam.bos, fam.eos)),
        fam.template,
        transformers.__version__,
        tokenizers.__version__,
    ]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def _base(name: str) -> Any:
    if name == "mistral-v1":
        from feedline.service.tokenizers.builtin._mistral import build_sentencepiece, mistral_data_file

        return build_sentencepiece(mistral_data_file("tokenizer.model.v1"), "")
    from feedline.service.tokenizers.builtin import builtin_tokenizer

    return builtin_tokenizer(name)


def _build(fam: Family) -> Any:
    from tokenizers import AddedToken

    tok = _base(fam.base)
    vocab = tok.get_vocab()
    missing = [t for t in dict.fromkeys(fam.added + tuple(t for t in (fam.bos, fam.eos) if t)) if t not in vocab]
    if missing:
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    if fam.bos is not None:
        tok.bos_token = fam.bos
    if fam.eos is not None:
        tok.eos_token = fam.eos
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.chat_template = fam.template
    return tok
