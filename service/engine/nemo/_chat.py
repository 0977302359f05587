"""NeMo AutoModel's ``format_chat_template`` re-created from its specification (nemo_reference.md §1.1-1.3).

One ``tokenizer.apply_chat_template`` call gives the ids; the assistant mask is then chosen the way NeMo
chooses it: the template's ``{% generation %}`` mask when NeMo's regex finds the keyword, else prefix arithmetic
over token renders of every conversation prefix (so role headers and the turn's trailing newline are
supervised, as in NeMo), else all ones. The mask steps run in NeMo's order: left-padding shift, zero under the
tokenizer's attention mask, keep the last run (train_on_last_turn_only), then punch reasoning holes.

``ChatCall`` makes every render through HF, exactly as NeMo's calls do (the reference); ``_nemo_fast`` answers
the same calls from one encode of the whole conversation where it can show the answers are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jinja2
import numpy as np

from feedline.proto import InvalidSample, LabelStrategy, TemplateError

from ...tokenizers._render import NEMO_GENERATION_TAG

__all__ = [
    "ChatCall",
    "MaskedIds",
    "find_reasoning_span",
    "format_chat_template",
    "is_render_prefix",
    "keep_last_run",
    "prefix_assistant_mask",
    "shift_for_left_padding",
    "template_errors",
    "window_offset",
]

Messages = Sequence[Mapping[str, Any]]
_UNTRUNCATED = "do_not_truncate"


@dataclass(frozen=True)
class ChatCall:
    """The arguments every ``apply_chat_template`` call NeMo makes for one sample shares.

    ``truncation``/``max_length`` are HF's (True or "do_not_truncate"); ``chat_template`` is None to let the
    tokenizer pick its own template, as NeMo does.
    """

    tokenizer: Any
    chat_template: str | None
    tools: list[dict[str, Any]] | None
    truncation: bool | str
    max_length: int | None

    def encode(self, messages: Messages, *, padding: str, assistant_mask: bool) -> Mapping[str, Any]:
        """The main call: padded and truncated as asked, with HF's generation mask when the template has one."""
        with template_errors():
            return self.tokenizer.apply_chat_template(  # type: ignore[no-any-return]
                list(messages),
                tools=self.tools,
                chat_template=self.chat_template,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=assistant_mask,
                padding=padding,
                truncation=self.truncation,
                max_length=self.max_length,
            )

    def ids(self, messages: Messages, *, truncate: bool = True) -> list[int]:
        """NeMo's ``_tokenize_chat``: one unpadded render, with this sample's truncation unless told otherwise."""
        if not messages:
            return []  # an empty prefix renders to nothing (HF refuses to render it)
        truncation = self.truncation if truncate else _UNTRUNCATED
        with template_errors():
            out = self.tokenizer.apply_chat_template(
                list(messages),
                tools=self.tools,
                chat_template=self.chat_template,
                tokenize=True,
                return_dict=True,
                padding=False,
                truncation=truncation,
                max_length=self.max_length if truncate else None,
            )
        return list(out["input_ids"])

    def text(self, messages: Messages) -> str:
        """The render alone (no tokenizer), through the same HF call with ``tokenize=False``."""
        with template_errors():
            return self.tokenizer.apply_chat_template(  # type: ignore[no-any-return]
                list(messages),
                tools=self.tools,
                chat_template=self.chat_template,
                tokenize=False,
            )

    def prefix_render(self, messages: Messages, content: list[int]) -> Callable[[int], list[int]]:
        """``n -> ids(messages[:n])`` for the prefix arithmetic: one render and encode per prefix, as NeMo."""
        return lambda n: self.ids(messages[:n])


@dataclass(frozen=True)
class MaskedIds:
    """What ``format_chat_template`` hands to ``_package_tokenized_example``: ids and NeMo's final 0/1 mask."""

    input_ids: np.ndarray
    mask: np.ndarray
    strategy: LabelStrategy
    warnings: tuple[str, ...] = ()


def format_chat_template(
    call: ChatCall,
    template: str,
    messages: Messages,
    *,
    padding: str,
    answer_only: bool,
    train_on_last_turn_only: bool,
    mask_reasoning_content: bool,
) -> MaskedIds:
    """Steps 3-8 of NeMo's format_chat_template for one conversation (``template`` is the text NeMo regexes)."""
    has_generation = bool(NEMO_GENERATION_TAG.search(template))
    has_reasoning = any(m["role"] == "assistant" and m.get("reasoning_content") for m in messages)
    warnings: list[str] = []
    if has_reasoning and "reasoning_content" not in template:
        warnings.append("reasoning_content is present but the chat template never mentions it")
    out = call.encode(messages, padding=padding, assistant_mask=has_generation)
    ids = np.asarray(out["input_ids"], dtype=np.int64)
    attention = np.asarray(out["attention_mask"], dtype=bool) if "attention_mask" in out else None
    content = ids[attention].tolist() if attention is not None else ids.tolist()  # NeMo's unpadded_full_ids
    side = getattr(call.tokenizer, "padding_side", None)
    if has_generation:
        mask, strategy = np.asarray(out["assistant_masks"], dtype=bool), LabelStrategy.GENERATION_TAGS
    elif answer_only:
        roles = [str(m["role"]) for m in messages]
        raw = prefix_assistant_mask(
            call.prefix_render(messages, content), roles, ids.shape[0], content, call.tokenizer.eos_token_id
        )
        mask, strategy = shift_for_left_padding(raw, side, attention), LabelStrategy.PREFIX_RENDER
    else:
        mask, strategy = np.ones(ids.shape[0], dtype=bool), LabelStrategy.ALL_TOKENS
    if attention is not None:
        mask = mask & attention
    if train_on_last_turn_only:
        mask = keep_last_run(mask)
    if mask_reasoning_content and has_reasoning:
        holes = reasoning_mask(call, messages, content, ids.shape[0], warnings)
        mask = mask & ~shift_for_left_padding(holes, side, attention)
    return MaskedIds(ids, mask, strategy, tuple(warnings))


def prefix_assistant_mask(
    render: Callable[[int], list[int]],
    roles: Sequence[str],
    length: int,
    full: Sequence[int],
    eos_token_id: int | None,
    *,
    seed_full_length: bool = True,
) -> np.ndarray:
    """NeMo's ``_build_multiturn_assistant_mask`` (§1.2) at token level.

    ``render(n)`` tokenizes ``messages[:n]`` unpadded. Assistant turn ``k`` spans
    ``[len(render(k)), len(render(k + 1)))`` clipped to ``length``: whatever the turn adds, header included.
    Prefix lengths are memoised, and the whole conversation's length is seeded from ``full`` (the unpadded ids
    of the main call), which saves one render. Every rendered prefix must be a token prefix of ``full``.
    """
    turns = [k for k, role in enumerate(roles) if role == "assistant"]
    if not turns:
        raise InvalidSample("at least one assistant message is required to build the assistant mask", field="messages")
    known: dict[int, int] = {0: 0}
    if seed_full_length:
        known[len(roles)] = len(full)

    def prefix_length(n: int) -> int:
        if n not in known:
            ids = render(n)
            if not is_render_prefix(ids, full, eos_token_id):
                raise TemplateError(_REWRITE_MESSAGE.format(n=n), field="messages")
            known[n] = len(ids)
        return known[n]

    mask = np.zeros(length, dtype=bool)
    for k in turns:
        mask[min(prefix_length(k), length) : min(prefix_length(k + 1), length)] = True
    return mask


_REWRITE_MESSAGE = (
    "the chat template rewrites earlier turns (e.g. Qwen3's template drops the <think> blocks of earlier "
    "assistant turns): the render of messages[:{n}] is not a token prefix of the whole conversation, so NeMo's "
    "prefix arithmetic cannot locate assistant turns. Provide a chat template that wraps assistant turns in "
    "{{% generation %}} ... {{% endgeneration %}}, or use label_policy 'assistant'"
)


def is_render_prefix(prefix: Sequence[int], full: Sequence[int], eos_token_id: int | None) -> bool:
    """NeMo's ``_is_consistent_render_prefix``: ``prefix`` starts ``full``, except that a prefix of more than one
    token whose last token is EOS may differ from ``full`` in that token only."""
    n = len(prefix)
    if n > len(full):
        return False
    if list(prefix) == list(full[:n]):
        return True
    return n > 1 and prefix[-1] == eos_token_id and list(prefix[:-1]) == list(full[: n - 1])


def shift_for_left_padding(mask: np.ndarray, padding_side: str | None, attention: np.ndarray | None) -> np.ndarray:
    """NeMo's ``_maybe_shift_mask_for_left_padding``: masks built on unpadded renders move right by the pad length
    when the tokenizer pads on the left; anything else returns ``mask`` itself."""
    if padding_side != "left" or attention is None:
        return mask
    pad = mask.shape[0] - int(np.count_nonzero(attention))
    if pad <= 0:
        return mask
    shifted = np.zeros_like(mask)
    shifted[pad:] = mask[: mask.shape[0] - pad]
    return shifted


def keep_last_run(mask: np.ndarray) -> np.ndarray:
    """NeMo's ``_mask_labels_to_last_turn``: only the final contiguous run of supervised positions survives."""
    on = np.flatnonzero(mask)
    if on.size == 0:
        return mask
    end = int(on[-1]) + 1
    gaps = np.flatnonzero(~mask[:end])
    start = int(gaps[-1]) + 1 if gaps.size else 0
    kept = np.zeros_like(mask)
    kept[start:end] = True
    return kept


def reasoning_mask(
    call: ChatCall, messages: Messages, content: list[int], length: int, warnings: list[str]
) -> np.ndarray:
    """NeMo's ``_build_reasoning_mask`` (§1.3): what changes when one turn's reasoning_content is emptied.

    Renders are untruncated when the sample is truncated; the retained window is then placed in that render as a
    prefix (right truncation) or a suffix (left truncation). The result is in unpadded coordinates.
    """
    truncating = call.truncation not in (False, None, _UNTRUNCATED)
    reference = call.ids(messages, truncate=False) if truncating else content
    holes = np.zeros(len(reference), dtype=bool)
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or not message.get("reasoning_content"):
            continue
        emptied = [*messages[:i], {**message, "reasoning_content": ""}, *messages[i + 1 :]]
        span = find_reasoning_span(reference, call.ids(emptied, truncate=False))
        if span is None:
            warnings.append(f"could not isolate reasoning_content tokens for assistant message {i}")
            continue
        holes[span[0] : span[1]] = True
    offset = window_offset(content, reference) if truncating else 0
    window = holes[offset : offset + len(content)][:length]
    out = np.zeros(length, dtype=bool)
    out[: window.shape[0]] = window
    return out


def find_reasoning_span(full: Sequence[int], masked: Sequence[int]) -> tuple[int, int] | None:
    """NeMo's ``_find_reasoning_span``: the tokens of ``full`` between the longest common prefix and suffix it
    shares with ``masked``; None when nothing of ``full`` differs."""
    limit = min(len(full), len(masked))
    start = 0
    while start < limit and full[start] == masked[start]:
        start += 1
    tail = 0
    while tail < limit - start and full[len(full) - 1 - tail] == masked[len(masked) - 1 - tail]:
        tail += 1
    end = len(full) - tail
    return (start, end) if end > start else None


def window_offset(retained: Sequence[int], reference: Sequence[int]) -> int:
    """Where the truncated ids sit inside the untruncated render: 0 for a prefix, else the suffix offset."""
    n = len(retained)
    if list(reference[:n]) == list(retained):
        return 0
    if n <= len(reference) and list(reference[len(reference) - n :]) == list(retained):
        return len(reference) - n
    raise TemplateError(
        "the truncated tokens are not a contiguous prefix or suffix of the untruncated render, so reasoning "
        "spans cannot be mapped onto them",
        field="messages",
    )


@contextmanager
def template_errors() -> Iterator[None]:
    """Translate what a template or HF raises while rendering into TemplateError, once."""
    try:
        yield
    except jinja2.TemplateError as exc:
        raise TemplateError(f"the chat template failed: {exc}") from exc
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise TemplateError(f"the chat template cannot render this conversation: {exc}") from exc
