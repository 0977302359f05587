"""The nemo policy's fast path: NeMo's prefix arithmetic from one encode of the whole conversation.

NeMo finds assistant turn ``k`` as ``[len(tok(render(m[:k]))), len(tok(render(m[:k+1]))))``: one template render
and one tokenization per conversation prefix, so its cost grows with the number of turns times the chat length.
``FastChatCall`` makes the same calls' answers out of one tokenization of the whole render:

* each prefix is rendered as text only (the template, no tokenizer, through ``TemplateText``: HF's render with a
  sandbox that remembers its verdicts), and must be a character prefix of the whole render;
* its token count is then the index of the token that starts where the prefix text ends, provided that position
  is an edge of a special token (one that the tokenizer splits off before anything else, without stripping
  whitespace around it). Text on either side of such a token is tokenized independently, so the tokens of the
  prefix text are exactly the whole render's tokens up to that index: NeMo's render would give the same list.

Where that cannot be shown for a row (a prefix that is not a text prefix, a prefix ending inside ordinary text,
truncation that cuts, any error), ``NeedsReference`` sends the row through the reference path (the per-prefix
HF calls, exactly as NeMo makes them), and ``FAST_PATH`` counts it. The whole-conversation encode uses the
processor's encoder, whose ids are the tokenizer's own (``_encoders``); padding to ``max_length`` is HF's rule.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from feedline.proto import FeedlineError

from ._chat import ChatCall, MaskedIds, Messages, template_errors
from ._render import TemplateText

__all__ = ["FAST_PATH", "FastChatCall", "FastPathCounts", "NeedsReference", "boundary_tokens", "fast_or_reference"]


class NeedsReference(Exception):
    """The fast derivation cannot be shown equal to NeMo's calls for this row; the message says why."""


class FastPathCounts:
    """How many rows took the fast path, and how many went to the reference path for which reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


FAST_PATH = FastPathCounts()


def boundary_tokens(tokenizer: Any) -> dict[int, str]:
    """Special tokens the tokenizer splits off before normalising or pre-tokenizing, stripping nothing around
    them: ids to their text. Tokenization never crosses their edges."""
    if getattr(tokenizer, "split_special_tokens", False):
        return {}
    out = {}
    for token_id, added in tokenizer.added_tokens_decoder.items():
        if added.lstrip or added.rstrip or added.single_word or added.normalized or not added.content:
            continue
        out[int(token_id)] = str(added.content)
    return out


@dataclass(frozen=True)
class FastChatCall(ChatCall):
    """``ChatCall`` answered from one encode: ``encode`` keeps the whole render's tokens, ``prefix_render``
    derives every prefix's tokens from them. One instance serves one row."""

    encoder: Any = None
    boundaries: Mapping[int, str] = field(default_factory=dict)
    template_text: TemplateText | None = None
    _whole: dict[str, Any] = field(default_factory=dict)

    def text(self, messages: Messages) -> str:
        if self.template_text is None:
            return super().text(messages)
        with template_errors():
            return self.template_text(messages, self.tools, self.chat_template)

    def encode(self, messages: Messages, *, padding: str, assistant_mask: bool) -> Mapping[str, Any]:
        if assistant_mask:
            raise NeedsReference("generation tags: HF's own assistant mask")
        text = self.text(messages)
        ids, starts = self.encoder.encode_with_offsets(text)
        self._check_uncut(ids.shape[0])
        self._whole.update(text=text, ids=ids, starts=starts)
        return _hf_padded(self.tokenizer, ids.tolist(), padding, self.max_length)

    def ids(self, messages: Messages, *, truncate: bool = True) -> list[int]:
        if not messages:
            return []
        ids = self.encoder.encode_with_offsets(self.text(messages))[0]
        if truncate:
            self._check_uncut(ids.shape[0])
        return ids.tolist()  # type: ignore[no-any-return]

    def prefix_render(self, messages: Messages, content: list[int]) -> Callable[[int], list[int]]:
        whole = self._whole
        text, ids, starts = whole["text"], whole["ids"], whole["starts"]
        if len(content) != ids.shape[0]:
            raise NeedsReference("the encoded ids are not the content ids")

        def render(n: int) -> list[int]:
            if n == 0:
                return []
            prefix = self.text(messages[:n])
            if not text.startswith(prefix):
                raise NeedsReference("a prefix renders differently inside the whole conversation")
            return content[: self._token_edge(text, ids, starts, len(prefix))]

        return render

    def _token_edge(self, text: str, ids: np.ndarray, starts: np.ndarray, at: int) -> int:
        """The token index where character ``at`` starts a token at an edge of a boundary token."""
        if at in (0, len(text)):
            return 0 if at == 0 else int(ids.shape[0])
        j = int(np.searchsorted(starts, at, side="left"))
        if j >= ids.shape[0] or int(starts[j]) != at:
            raise NeedsReference("a prefix ends inside a token")
        after = self.boundaries.get(int(ids[j]))
        if after is not None and text.startswith(after, at):
            return j
        before = self.boundaries.get(int(ids[j - 1]))
        if before is not None and int(starts[j - 1]) + len(before) == at and text.startswith(before, at - len(before)):
            return j
        raise NeedsReference("a prefix ends inside ordinary text")

    def _check_uncut(self, n: int) -> None:
        if self.truncation in (False, None, "do_not_truncate"):
            return
        if self.max_length is None or n > self.max_length:
            raise NeedsReference("truncation cuts the sample")


def _hf_padded(tokenizer: Any, ids: list[int], padding: str, max_length: int | None) -> dict[str, list[int]]:
    """What the tokenizer's own call returns for ``ids`` that need no truncation: padded to ``max_length`` on
    its padding side when asked, with its attention mask if the model takes one."""
    pad = 0
    if padding == "max_length":
        if max_length is None or tokenizer.pad_token_id is None:
            raise NeedsReference("padding to the model's own maximum length")
        pad = max(0, max_length - len(ids))
    attention = [1] * len(ids)
    if pad:
        filler = [int(tokenizer.pad_token_id)] * pad
        if tokenizer.padding_side == "left":
            ids, attention = filler + ids, [0] * pad + attention
        else:
            ids, attention = ids + filler, attention + [0] * pad
    out = {"input_ids": ids}
    if "attention_mask" in tokenizer.model_input_names:
        out["attention_mask"] = attention
    return out


def fast_or_reference(
    run: Callable[[ChatCall], MaskedIds],
    call: ChatCall,
    encoder: Any,
    boundaries: Mapping[int, str],
    template_text: TemplateText | None = None,
) -> MaskedIds:
    """``run`` on a ``FastChatCall`` twin of ``call``, or on ``call`` itself where the fast derivation cannot be
    shown equal for this row (errors included: the reference path raises NeMo's own error). ``template_text``
    makes the fast path's text renders (HF's own call when None)."""
    fast = FastChatCall(
        **{f.name: getattr(call, f.name) for f in fields(ChatCall)},
        encoder=encoder,
        boundaries=boundaries,
        template_text=template_text,
    )
    try:
        out = run(fast)
    except NeedsReference as why:
        FAST_PATH.add(f"reference: {why}")
    except FeedlineError:
        FAST_PATH.add("reference: the row raises (the reference path raises NeMo's error)")
    else:
        FAST_PATH.add("fast")
        return out
    return run(call)
