"""A tiny real model class for the integration examples: Qwen2ForCausalLM with random weights.

The architecture and loss are the real transformers ones; only the sizes are small, so a few training steps
run in seconds on a CPU. The vocabulary is the built-in Qwen2.5 tokenizer's, so every streamed id is valid.
"""

from __future__ import annotations

from typing import Any

QWEN25_VOCAB = 151_665  # len() of the Qwen2.5 tokenizer feedline serves by default (added tokens included)


def tiny_causal_lm(seed: int = 0, vocab_size: int = QWEN25_VOCAB) -> Any:
    """A one-layer Qwen2ForCausalLM, initialised from ``seed`` (the same seed gives the same weights)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def chat_rows(n: int = 32) -> list[dict[str, Any]]:
    """Short question/answer conversations in the OpenAI messages format feedline takes."""
    facts = [
        ("What is the capital of France?", "Paris."),
        ("What colour is the sky?", "Blue, on a clear day."),
        ("How many legs does a spider have?", "Eight."),
        ("What is 2 + 2?", "Four."),
        ("Name a prime number.", "Seven is prime."),
        ("What do bees make?", "Honey, from nectar."),
    ]
    return [
        {
            "messages": [
                {"role": "system", "content": f"You are assistant number {i}."},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
        }
        for i, (q, a) in ((i, facts[i % len(facts)]) for i in range(n))
    ]


def recording_loader(endpoint: str, rows: list[dict[str, Any]], seed: int = 0) -> tuple[Any, list[list[int]]]:
    """A RemoteLoader over ``rows`` (batches of 4) and the list its reports fill: each batch's sample rows."""
    from feedline.client import RemoteLoader

    firsts: list[list[int]] = []
    loader = RemoteLoader(
        endpoint,
        "qwen2.5",
        samples=rows,
        batch_size=4,
        seed=seed,
        on_report=lambda report: firsts.append([s["row"] for s in report.samples]),
    )
    return loader, firsts
