"""Text encoders with character offsets: the tokenizer's own (``hf``) and a verified tiktoken fast path (``fast``).

Both give ``encode_with_offsets(text) -> (ids, starts)``: int64 token ids and, for every token, the index (in
Python ``str`` characters) of the character that holds the token's first byte. The engine maps rendered-text
character spans to tokens with ``starts``.

The fast path is built from the loaded tokenizer itself, never from a hard-coded vocabulary or pattern:

* Eligibility is read from the tokenizer's backend: a byte-level BPE model (no unk, dropout, subword prefix or
  suffix, byte fallback) whose merge list is ordered by the rank of the merged token (tiktoken's merge priority is
  the token's rank); a normaliser that is NFC or none; a pre-tokenizer that is one ``Split`` regex (``Isolated``)
  followed by a regex-free ``ByteLevel``, or a ``ByteLevel`` with its built-in regex; a ``ByteLevel`` decoder; added
  tokens that match as plain substrings (no lstrip/rstrip/single_word, none a prefix of another).
* Then both encoders run on a built-in corpus (``_encoder_corpus``: many scripts, code, whitespace runs, digits,
  emoji, combining marks, every added-token string inside text); the fast path is used only if every id and every
  start agrees. ``select_encoder`` returns the encoder and a one-line reason that ``Processor.info()`` publishes.

At run time the fast encoder hands a text to the tokenizer's own encoder whenever its shortcut assumptions do not
hold for that text: text that NFC normalisation would change (the HF path maps offsets through the normaliser),
text that is not encodable as UTF-8 (lone surrogates), and, as a safety net, any output whose token bytes do not
add up to the text's bytes. Ids are therefore the tokenizer's own on every path.

Threads: tiktoken keeps its regex match caches in pools that only their first user (the thread that loaded the
processor) reaches without a lock; every other thread takes and returns a cache through a shared stack, about 6%
of the engine's CPU on a server's collate thread (perf, ``bench/CLIENT_NOTES.md``). A thread that will collate
for its whole life calls ``own_encoder_caches()`` once: the fast encoder then gives it a tiktoken copy of its
own (17 MiB and ~80 ms to build for Qwen2.5, on first use), so its caches are its own too.

Worker processes: both encoders pickle. Unpickling the fast encoder rebuilds tiktoken's tables from the ranks
(about 0.4 s for Qwen2.5, 8.6 MB pickled) and the HF fallback from its JSON; processes forked after
loading share the built encoder without any of that.
"""

from __future__ import annotations

import json
import tempfile
import threading
import unicodedata
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from feedline.proto import InvalidOptions

from ._encoder_corpus import verification_texts

__all__ = ["ENCODER_MODES", "Encoder", "HFEncoder", "TiktokenEncoder", "own_encoder_caches", "select_encoder"]

ENCODER_MODES = ("auto", "hf", "fast")

# The regex that `tokenizers`' ByteLevel pre-tokenizer applies when `use_regex` is true (GPT-2's pattern); it is
# part of that pre-tokenizer's definition, so a tokenizer that names ByteLevel(use_regex=true) names this pattern.
_BYTELEVEL_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

Encoded = tuple[np.ndarray, np.ndarray]

_THREAD = threading.local()
"""``copies``: on a thread that called ``own_encoder_caches``, its tiktoken copy of each fast encoder."""


def own_encoder_caches() -> None:
    """Give the calling thread its own tiktoken copy of every fast encoder it uses from now on (see the module
    docstring). For threads that live as long as the process and collate all the while, such as a server's
    collate pool (``ThreadPoolExecutor(initializer=own_encoder_caches)``); a copy lives as long as the thread
    and its encoder."""
    _THREAD.copies = weakref.WeakKeyDictionary()


class Encoder(Protocol):
    """What the engine needs from an encoder."""

    name: str

    def encode_with_offsets(self, text: str) -> Encoded: ...

    def encode_batch_with_offsets(self, texts: Sequence[str]) -> list[Encoded]: ...


class _Ineligible(Exception):
    """The fast path cannot reproduce this tokenizer (the message says why)."""


class HFEncoder:
    """The tokenizer's own Rust backend (no special tokens added), with the start character of every token."""

    name = "hf"

    def __init__(self, tokenizer: Any) -> None:
        self._split_special = bool(getattr(tokenizer, "split_special_tokens", False))
        self._backend = _untrimmed_backend(tokenizer.backend_tokenizer)

    def encode_with_offsets(self, text: str) -> Encoded:
        return self.encode_batch_with_offsets([text])[0]

    def encode_batch_with_offsets(self, texts: Sequence[str]) -> list[Encoded]:
        backend = self._backend
        # The backend is shared with the tokenizer, whose calls may leave padding, truncation or
        # split_special_tokens set from their own arguments; this encoder always runs with the loaded defaults.
        if backend.padding is not None:
            backend.no_padding()
        if backend.truncation is not None:
            backend.no_truncation()
        if backend.encode_special_tokens != self._split_special:
            backend.encode_special_tokens = self._split_special
        return [_hf_arrays(e) for e in backend.encode_batch(list(texts), add_special_tokens=False)]


def _hf_arrays(encoding: Any) -> Encoded:
    return np.array(encoding.ids, dtype=np.int64), np.array([o[0] for o in encoding.offsets], dtype=np.int64)


def _untrimmed_backend(backend: Any) -> Any:
    """The backend itself, or a copy without its post-processor when that trims offsets to non-space characters.

    With ``add_special_tokens=False`` a post-processor adds no token; trimming would only move a token's start
    off its first character, which is not what ``starts`` means.
    """
    if not _trims_offsets(_component(backend.post_processor)):
        return backend
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.post_processor = None
    return copy


def _trims_offsets(processor: Mapping[str, Any] | None) -> bool:
    if processor is None:
        return False
    return bool(processor.get("trim_offsets")) or any(_trims_offsets(p) for p in processor.get("processors", []))


@dataclass(frozen=True)
class FastSpec:
    """Everything the fast encoder is built from, read from a tokenizer once."""

    pat_str: str
    mergeable_ranks: dict[bytes, int]
    special_tokens: dict[str, int]
    nfc: bool
    notes: str


class TiktokenEncoder:
    """tiktoken over the tokenizer's own ranks, pattern and added tokens; starts from cumulative UTF-8 lengths."""

    name = "fast"

    def __init__(self, spec: FastSpec, fallback: HFEncoder) -> None:
        self.spec = spec
        self._fallback = fallback
        try:
            self._enc = self._new_encoding()
        except ValueError as exc:  # tiktoken's regex engine rejects the pattern
            raise _Ineligible(f"tiktoken cannot compile the pre-tokenizer pattern ({exc})") from exc
        self._allowed = frozenset(spec.special_tokens)
        size = max(self._enc.max_token_value + 1, 1)
        nbytes = np.zeros(size, dtype=np.int64)
        for token, rank in spec.mergeable_ranks.items():
            nbytes[rank] = len(token)
        for content, rank in spec.special_tokens.items():
            nbytes[rank] = len(content.encode("utf-8"))
        self._nbytes = nbytes
        self.separator = batch_separator(spec.special_tokens)

    def encode_with_offsets(self, text: str) -> Encoded:
        encoded = self.encode_core(text)
        return encoded if encoded is not None else self._fallback.encode_with_offsets(text)

    def encode_batch_with_offsets(self, texts: Sequence[str]) -> list[Encoded]:
        """Every text the fast path takes, in one tiktoken call joined by ``separator``; the others one by one.

        One call instead of one per text: the GIL is released once per batch rather than once per text (a
        thread coming back from tiktoken must win the GIL again, which under load costs a hand-off each time),
        and the per-text numpy work runs once. An added token splits text into parts that are pre-tokenized
        independently, so the joined ids are each text's own ids with the separator's id between them;
        ``split_joined`` checks that token by token and the texts go one by one if it does not hold.
        """
        out: list[Encoded | None] = [None] * len(texts)
        direct = [i for i, text in enumerate(texts) if not self.hands_over(text)]
        if self.separator is not None and len(direct) > 1:
            parts = self.split_joined([texts[i] for i in direct])
            for i, part in zip(direct, parts or (), strict=False):
                out[i] = part
        return [
            got if got is not None else self.encode_with_offsets(text) for got, text in zip(out, texts, strict=False)
        ]

    def split_joined(self, texts: Sequence[str]) -> list[Encoded] | None:
        """Encode ``texts`` joined by the separator and cut the result back into one (ids, starts) per text, or
        None where the separator did not come back as one token at each join (the caller then goes text by text).
        """
        assert self.separator is not None
        separator, separator_id = self.separator
        encoded = self._encode_direct(separator.join(texts))
        if encoded is None:
            return None
        ids, starts = encoded
        firsts = np.cumsum([0] + [len(text) + len(separator) for text in texts])  # each text's first character
        joins = firsts[1:-1] - len(separator)
        at = np.searchsorted(starts, joins)
        if at.size and (
            int(at[-1]) >= ids.size or not (np.array_equal(starts[at], joins) and np.all(ids[at] == separator_id))
        ):
            return None
        bounds = [0, *(at + 1).tolist()]
        ends = [*at.tolist(), ids.size]
        return [
            (ids[lo:hi], starts[lo:hi] - first) for lo, hi, first in zip(bounds, ends, firsts.tolist(), strict=False)
        ]

    def hands_over(self, text: str) -> bool:
        """Whether ``text`` goes to the tokenizer's own encoder by design: NFC normalisation would change it
        (the HF path maps offsets back through its normaliser), or it has no UTF-8 form (lone surrogates)."""
        if text.isascii():
            return False
        if self.spec.nfc and not unicodedata.is_normalized("NFC", text):
            return True
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    def encode_core(self, text: str) -> Encoded | None:
        """tiktoken's answer, or None where this text must go to the tokenizer's own encoder."""
        return None if self.hands_over(text) else self._encode_direct(text)

    def _encoding(self) -> Any:
        """tiktoken for this thread: its own copy on a thread that owns its caches, else the shared one."""
        copies: weakref.WeakKeyDictionary[TiktokenEncoder, Any] | None = getattr(_THREAD, "copies", None)
        if copies is None:
            return self._enc
        enc = copies.get(self)
        if enc is None:
            enc = copies[self] = self._new_encoding()
        return enc

    def _new_encoding(self) -> Any:
        import tiktoken

        spec = self.spec
        return tiktoken.Encoding(
            "feedline-fast",
            pat_str=spec.pat_str,
            mergeable_ranks=spec.mergeable_ranks,
            special_tokens=spec.special_tokens,
        )

    def _encode_direct(self, text: str) -> Encoded | None:
        """tiktoken's ids and their start characters, or None if the tokens' bytes do not add up to the text."""
        encoding = self._encoding()
        ids = encoding.encode_to_numpy(text, allowed_special=self._allowed, disallowed_special=()).astype(np.int64)
        lengths = self._nbytes[ids]
        ends = np.cumsum(lengths)
        data = None if text.isascii() else text.encode("utf-8")
        if (int(ends[-1]) if ends.size else 0) != (len(text) if data is None else len(data)):
            return None  # the pattern skipped some text: never drop it silently
        starts = ends - lengths
        if data is not None:  # byte offsets to character indices: count the first bytes of characters
            lead = (np.frombuffer(data, dtype=np.uint8) & 0xC0) != 0x80
            starts = (np.cumsum(lead) - 1)[starts]
        return ids, starts


def batch_separator(special_tokens: Mapping[str, int]) -> tuple[str, int] | None:
    """The added token (and its id) that joins a batch's texts for one tiktoken call, or None if there is none.

    The shortest one that no added token, itself included, can overlap across a join: then every join comes
    back as exactly that token and nothing on either side of it changes.
    """
    for separator in sorted(special_tokens, key=lambda token: (len(token), token)):
        if not any(_reaches_into(token, separator) for token in special_tokens):
            return separator, special_tokens[separator]
    return None


def _reaches_into(token: str, separator: str) -> bool:
    """Whether ``token`` can start in the text before ``separator`` and end inside it or past it."""
    return any(separator.startswith(token[k:]) or token[k:].startswith(separator) for k in range(1, len(token)))


def select_encoder(tokenizer: Any, mode: str = "auto") -> tuple[HFEncoder | TiktokenEncoder, str]:
    """The encoder to use for ``tokenizer`` and why.

    ``auto``: the fast path when the tokenizer is eligible and verified, else the tokenizer's own encoder.
    ``hf``: always the tokenizer's own encoder. ``fast``: the fast path, or InvalidOptions saying why it is not
    possible (an operator who forces it never silently gets the other path, nor a single different id).
    """
    if mode not in ENCODER_MODES:
        raise InvalidOptions(f"encoder mode must be one of {', '.join(ENCODER_MODES)}, not {mode!r}", field="encoder")
    hf = HFEncoder(tokenizer)
    if mode == "hf":
        return hf, "hf: chosen by the operator (encoder mode 'hf')"
    try:
        spec = fast_spec(tokenizer)
        fast = TiktokenEncoder(spec, hf)
        checked = verify_fast_encoder(fast, hf, verification_texts(sorted(spec.special_tokens)))
    except _Ineligible as exc:
        if mode == "fast":
            message = f"encoder mode 'fast' is not possible for this tokenizer: {exc}"
            raise InvalidOptions(message, field="encoder") from exc
        return hf, f"hf: fast path not used: {exc}"
    return fast, f"fast: tiktoken over the tokenizer's own {spec.notes}; {checked}"


def verify_fast_encoder(fast: TiktokenEncoder, hf: HFEncoder, texts: Sequence[str]) -> str:
    """Encode ``texts`` both ways; raise _Ineligible at the first different id or start, else summarise."""
    expected = hf.encode_batch_with_offsets(texts)
    tokens, direct = 0, []
    for index, (text, (want_ids, want_starts)) in enumerate(zip(texts, expected, strict=False)):
        got = fast.encode_core(text)
        if got is None:
            if fast.hands_over(text):
                continue
            raise _Ineligible(f"the pre-tokenizer pattern leaves part of verification text {index} unmatched")
        direct.append((text, got))
        ids, starts = got
        if not np.array_equal(ids, want_ids):
            raise _Ineligible(f"verification text {index} ({text[:40]!r}): {_first_difference(ids, want_ids, 'id')}")
        if not np.array_equal(starts, want_starts):
            raise _Ineligible(
                f"verification text {index} ({text[:40]!r}): {_first_difference(starts, want_starts, 'start')}"
            )
        tokens += int(ids.size)
    core = len(direct)
    summary = (
        f"identical ids and offsets on {core} verification texts ({tokens:,} tokens; {len(texts) - core} left to hf)"
    )
    return f"{summary}; {_verify_batching(fast, direct)}"


def _verify_batching(fast: TiktokenEncoder, direct: Sequence[tuple[str, Encoded]]) -> str:
    """Check that one joined call gives every text its own (already verified) ids and starts; if not, batches
    go text by text."""
    if fast.separator is None:
        return "batches encoded text by text (no added token can join them)"
    joined = fast.split_joined([text for text, _ in direct])
    if joined is None or not all(
        np.array_equal(ids, want[0]) and np.array_equal(starts, want[1])
        for (ids, starts), (_, want) in zip(joined, direct, strict=False)
    ):
        fast.separator = None
        return "batches encoded text by text (joined verification texts did not split back into their own tokens)"
    return f"batches encoded in one call, joined by {fast.separator[0]!r}"


def _first_difference(got: np.ndarray, want: np.ndarray, what: str) -> str:
    n = min(got.size, want.size)
    differ = np.flatnonzero(got[:n] != want[:n])
    at = int(differ[0]) if differ.size else n
    return (
        f"{what}s differ at token {at}: fast {got[at : at + 3].tolist()} vs hf {want[at : at + 3].tolist()}"
        f" ({got.size} vs {want.size} tokens)"
    )


def fast_spec(tokenizer: Any) -> FastSpec:
    """Read the fast path's inputs from a tokenizer, or raise _Ineligible naming the first obstacle."""
    backend = tokenizer.backend_tokenizer
    model = backend.model
    if type(model).__name__ != "BPE":
        raise _Ineligible(f"the model is {type(model).__name__}, not BPE")
    _check_bpe_flags(model)
    nfc = _normalizer_is_nfc(_component(backend.normalizer))
    pat_str = _pre_tokenizer_pattern(_component(backend.pre_tokenizer))
    decoder = _component(backend.decoder)
    if decoder is None or decoder.get("type") != "ByteLevel":
        raise _Ineligible(f"the decoder is {_kind(decoder)}, not ByteLevel")
    vocab, merged = _model_files(model)
    ranks = _byte_ranks(vocab)
    merges = _check_merge_order(merged, vocab)
    specials = _added_tokens(backend, tokenizer, nfc)
    special_ids = set(specials.values())
    by_rank = {rank: token for token, rank in ranks.items() if rank in special_ids}
    for content, rank in specials.items():
        if by_rank.get(rank, content.encode("utf-8")) != content.encode("utf-8"):
            raise _Ineligible(f"added token {content!r} has the id of a different regular token ({rank})")
    notes = (
        f"{len(ranks):,} byte-level BPE ranks ({merges:,} merges in rank order, "
        f"ignore_merges={bool(getattr(model, 'ignore_merges', False))}), "
        f"{'NFC' if nfc else 'no'} normaliser, pre-tokenizer regex and {len(specials)} added tokens"
    )
    return FastSpec(pat_str=pat_str, mergeable_ranks=ranks, special_tokens=specials, nfc=nfc, notes=notes)


def _component(part: Any) -> dict[str, Any] | None:
    """A backend component (normaliser, pre-tokenizer, decoder) as its JSON dict."""
    return None if part is None else json.loads(part.__getstate__())


def _kind(part: Mapping[str, Any] | None) -> str:
    return "none" if part is None else str(part.get("type"))


def _check_bpe_flags(model: Any) -> None:
    checks = (
        ("dropout", model.dropout not in (None, 0.0)),
        ("unk_token", model.unk_token not in (None, "")),
        ("continuing_subword_prefix", bool(model.continuing_subword_prefix)),
        ("end_of_word_suffix", bool(model.end_of_word_suffix)),
        ("byte_fallback", bool(model.byte_fallback)),
    )
    for name, bad in checks:
        if bad:
            raise _Ineligible(f"the BPE model sets {name}={getattr(model, name)!r}")


def _normalizer_is_nfc(normalizer: Mapping[str, Any] | None) -> bool:
    if normalizer is None:
        return False
    parts = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    if all(p.get("type") == "NFC" for p in parts):
        return bool(parts)
    raise _Ineligible(f"the normaliser is {_describe(normalizer)}, not NFC or none")


def _describe(part: Mapping[str, Any]) -> str:
    if part.get("type") == "Sequence":
        inner = part.get("normalizers") or part.get("pretokenizers") or []
        return "Sequence[" + ", ".join(str(p.get("type")) for p in inner) + "]"
    return str(part.get("type"))


def _pre_tokenizer_pattern(pre: Mapping[str, Any] | None) -> str:
    """The split regex: one Split(Isolated) + ByteLevel(use_regex=false), or ByteLevel(use_regex=true) alone."""
    if pre is None:
        raise _Ineligible("there is no pre-tokenizer (not byte-level)")
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    byte_level = parts[-1] if parts else {}
    if byte_level.get("type") != "ByteLevel":
        raise _Ineligible(f"the pre-tokenizer is {_describe(pre)}, not ending in ByteLevel")
    if byte_level.get("add_prefix_space"):
        raise _Ineligible("the ByteLevel pre-tokenizer adds a prefix space")
    if len(parts) == 1:
        if not byte_level.get("use_regex", True):
            raise _Ineligible("the ByteLevel pre-tokenizer splits nothing (use_regex=false and no Split)")
        return _BYTELEVEL_REGEX
    split = parts[0]
    if len(parts) != 2 or split.get("type") != "Split" or byte_level.get("use_regex", True):
        raise _Ineligible(f"the pre-tokenizer is {_describe(pre)}, not one Split regex then ByteLevel")
    pattern = split.get("pattern", {})
    if "Regex" not in pattern or split.get("behavior") != "Isolated" or split.get("invert"):
        raise _Ineligible(
            f"the Split pre-tokenizer is {split.get('behavior')} on {next(iter(pattern), '?')}"
            f"{' (inverted)' if split.get('invert') else ''}, not Isolated on a regex"
        )
    return str(pattern["Regex"])


@lru_cache(maxsize=1)
def _byte_decoder_table() -> dict[int, str]:
    """str.translate table: GPT-2 byte-level characters to latin-1 characters; any other char below 0x144 to a
    character latin-1 cannot encode (so a non-byte-level token fails loudly instead of mapping to a wrong byte)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = {cp: "\uffff" for cp in range(0x144)}
    table.update({ord(char): chr(byte) for byte, char in bytes_to_unicode().items()})  # type: ignore[no-untyped-call]
    return table


def _byte_ranks(vocab: Mapping[str, int]) -> dict[bytes, int]:
    table = _byte_decoder_table()
    try:
        ranks = {token.translate(table).encode("latin-1"): rank for token, rank in vocab.items()}
    except UnicodeEncodeError as exc:
        raise _Ineligible(f"the vocabulary is not byte-level (token {exc.object!r})") from exc
    if len(set(ranks.values())) != len(ranks):
        raise _Ineligible("two vocabulary entries share one id")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise _Ineligible(f"{len(missing)} of the 256 single bytes have no token (first: 0x{missing[0]:02x})")
    return ranks


def _model_files(model: Any) -> tuple[dict[str, int], list[str]]:
    """The BPE vocabulary and, for every merge in priority order, the token it makes.

    Read from the model's own vocab.json and merges.txt (several times cheaper than parsing its JSON). In a
    merges.txt line the two parts are separated by one space; byte-level tokens never contain a space (the
    byte 0x20 is written as "Ġ"), so dropping the space gives the merged token.
    """
    with tempfile.TemporaryDirectory() as folder:
        files = {Path(f).name: Path(f) for f in model.save(folder)}
        vocab = json.loads(files["vocab.json"].read_text(encoding="utf-8"))
        merged = files["merges.txt"].read_text(encoding="utf-8").replace(" ", "").split("\n")
    return vocab, [line for line in merged if line and not line.startswith("#version")]


def _check_merge_order(merged: Sequence[str], vocab: Mapping[str, int]) -> int:
    """tiktoken merges any adjacent pair at the rank of the token it makes; the BPE merge list must be in that order.

    `tokenizers` itself guarantees that both parts and the merged token are in the vocabulary; several merges
    may make the same token. Merges whose parts rank above the token they make (the transformers tiktoken
    converter writes every split of a token) are merges tiktoken also performs at that same rank.
    """
    ids = [vocab.get(token) for token in merged]
    if None in ids:
        raise _Ineligible("a merge makes a token that is not in the vocabulary")
    results = np.asarray(ids, dtype=np.int64)
    out_of_order = np.flatnonzero(np.diff(results) < 0)
    if out_of_order.size:
        at = int(out_of_order[0]) + 1
        raise _Ineligible(
            f"merge priority is not the token rank (merge {at} makes id {results[at]} after id {results[at - 1]})"
        )
    return int(results.size)


def _added_tokens(backend: Any, tokenizer: Any, nfc: bool) -> dict[str, int]:
    """The added tokens the tokenizer splits out of text before pre-tokenizing, as tiktoken special tokens."""
    split_special = bool(getattr(tokenizer, "split_special_tokens", False))
    matched: dict[str, int] = {}
    normalized: dict[str, bool] = {}
    for rank, token in sorted(backend.get_added_tokens_decoder().items()):
        if token.special and split_special:
            continue  # split_special_tokens: the tokenizer encodes these strings as ordinary text
        for flag in ("lstrip", "rstrip", "single_word"):
            if getattr(token, flag):
                raise _Ineligible(f"added token {token.content!r} sets {flag}, which plain splitting cannot match")
        if not token.content:
            raise _Ineligible("an added token is empty")
        if token.content in matched:
            raise _Ineligible(f"added token {token.content!r} has two ids")
        matched[token.content] = int(rank)
        normalized[token.content] = bool(token.normalized)
    _check_added_matching(matched, normalized if nfc else {})
    return matched


def _check_added_matching(tokens: Mapping[str, int], normalized: Mapping[str, bool]) -> None:
    """tiktoken finds added tokens leftmost-first in arbitrary order, HF leftmost-longest: they agree unless one
    token is a prefix of another. With a normaliser, HF splits the non-normalised tokens first and the normalised
    ones afterwards; that equals one pass unless a token of one kind can overlap a token of the other."""
    contents = sorted(tokens)
    for a, b in zip(contents, contents[1:], strict=False):  # sorted order puts a prefix right before its extensions
        if b.startswith(a):
            raise _Ineligible(f"added token {a!r} is a prefix of {b!r}")
    raw = [t for t in contents if not normalized.get(t, False)]
    norm = [t for t in contents if normalized.get(t, False)]
    for a in raw:
        for b in norm:
            if _can_overlap(a, b):
                raise _Ineligible(f"added tokens {a!r} and {b!r} can overlap and are matched in different passes")


def _can_overlap(a: str, b: str) -> bool:
    if a in b or b in a:
        return True
    return any(a.endswith(b[:k]) or b.endswith(a[:k]) for k in range(1, min(len(a), len(b))))
