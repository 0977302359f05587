"""Realistic multi-turn chats built from real text shipped with Python (docstrings and source), seeded.

Prose comes from the standard library's module and function docstrings, code from its source files, so
lengths and token statistics resemble real instruction data without any download.
"""

from __future__ import annotations

import ast
import random
import sysconfig
from functools import lru_cache
from pathlib import Path

__all__ = ["chat_rows", "text_pool"]

_MODULES = ("json", "argparse", "logging", "pathlib", "typing", "asyncio", "email", "http", "unittest", "zipfile")


@lru_cache(maxsize=1)
def text_pool() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(prose paragraphs, code snippets) harvested from the standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    prose: list[str] = []
    code: list[str] = []
    for name in _MODULES:
        base = root / name
        files = sorted(base.rglob("*.py")) if base.is_dir() else [root / f"{name}.py"]
        for path in files[:40]:
            source = path.read_text(encoding="utf-8", errors="replace")
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) > 80:
                        prose.append(doc)
                    if isinstance(node, ast.FunctionDef):
                        snippet = ast.get_source_segment(source, node)
                        if snippet and 200 < len(snippet) < 3000:
                            code.append(snippet)
    return tuple(prose), tuple(code)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "description": "Search the standard library documentation.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["query"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "run_snippet",
            "description": "Run a Python snippet and return its output.",
            "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]},
        },
    },
]
"""The tool schemas offered in rows with tool calls."""


def chat_rows(n: int, *, seed: int = 0, max_turns: int = 6, tool_share: float = 0.0) -> list[dict]:
    """``n`` OpenAI-style rows with 1..max_turns exchanges, a long-tailed length mix, prose and code.

    A share ``tool_share`` of the rows offers ``TOOLS`` and answers some questions with a tool call (arguments
    as an object, sometimes with text before it), the tool's result and a final answer.
    """
    prose, code = text_pool()
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages: list[dict] = []
        tools = tool_share > 0 and rng.random() < tool_share  # no draw otherwise: other benches keep their rows
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": rng.choice(prose)[:400]})
        for _ in range(rng.randint(1, max_turns)):
            messages.append({"role": "user", "content": _piece(rng, prose, code, short=True)})
            if tools and rng.random() < 0.5:
                messages += _tool_exchange(rng, prose, code, len(messages))
            messages.append({"role": "assistant", "content": _piece(rng, prose, code, short=False)})
        rows.append({"messages": messages, "tools": TOOLS} if tools else {"messages": messages})
    return rows


def _tool_exchange(rng: random.Random, prose: tuple[str, ...], code: tuple[str, ...], at: int) -> list[dict]:
    """An assistant tool call and the tool's result."""
    call_id = f"call_{at}"
    if rng.random() < 0.5:
        call = {"name": "search_docs", "arguments": {"query": rng.choice(prose)[:60], "limit": rng.randint(1, 9)}}
    else:
        call = {"name": "run_snippet", "arguments": {"code": rng.choice(code)[:300]}}
    content = rng.choice(prose)[:120] if rng.random() < 0.3 else ""
    return [
        {
            "role": "assistant",
            "content": content,
            "tool_calls": [{"id": call_id, "type": "function", "function": call}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": rng.choice(prose)[:300]},
    ]


def _piece(rng: random.Random, prose: tuple[str, ...], code: tuple[str, ...], *, short: bool) -> str:
    parts = [rng.choice(prose)]
    if not short:
        parts += [rng.choice(prose) for _ in range(rng.choice((0, 0, 1, 2, 4)))]
        if rng.random() < 0.3:
            parts.append("```python\n" + rng.choice(code) + "\n```")
    text = "\n\n".join(parts)
    return text[: rng.randint(80, 600)] if short else text
