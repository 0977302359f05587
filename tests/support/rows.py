"""Rows and option sets shared by the server, client and CLI tests: every input shape, unicode included."""

from __future__ import annotations

from typing import Any

ROWS: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]},
    {
        "messages": [
            {"role": "system", "content": "You answer in French."},
            {"role": "user", "content": "Hello, how are you today?"},
            {"role": "assistant", "content": "Très bien, merci ! Et vous ?"},
            {"role": "user", "content": "Fine."},
            {"role": "assistant", "content": "Parfait."},
        ]
    },
    {"conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue 🎨"}]},
    {"prompt": "Translate: chat =", "completion": " cat"},
]

OPTION_CASES: list[dict[str, Any]] = [
    {},
    {"label_format": "unshifted", "padding": "max_length", "max_length": 64, "truncation": "right"},
    {"label_format": "loss_mask", "pad_to_multiple_of": 16, "train_on_last_turn_only": True},
]
