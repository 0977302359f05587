"""Collate and pack options: small frozen values, validated once, with errors that name the option."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from feedline.proto import InvalidOptions, LabelFormat, LabelPolicy

__all__ = ["CollateOptions", "PackOptions"]

_TRUNCATION_ALIASES: dict[Any, str] = {
    "none": "none",
    "do_not_truncate": "none",
    False: "none",
    None: "none",
    "right": "right",
    True: "right",
    "longest_first": "right",
    "only_first": "right",
    "left": "left",
}
_PADDING_ALIASES: dict[Any, str] = {
    "longest": "longest",
    True: "longest",
    "max_length": "max_length",
    "none": "none",
    "do_not_pad": "none",
    False: "none",
}
_PACK_OVERLONG = ("error", "drop", "truncate")
_PACK_LAYOUTS = ("padded", "thd")
_CHOICES = {
    "on_zero_labels": ("error", "skip"),
    "overlong": ("error", "drop"),
    "on_sample_error": ("error", "skip"),
    "pixel_dtype": ("float32", "bfloat16", "float16"),
}


@dataclass(frozen=True)
class PackOptions:
    """How samples are packed into rows.

    pack_size: token slots per row (after the shift, including per-document ``pad_to_multiple`` padding).
    window: samples considered together by the packer (bounds memory and latency; larger packs tighter).
    seed: orders the packs of each window. overlong: a sample longer than a row is an "error", dropped, or
    truncated on the right; dropped and truncated samples are listed in the plan. pad_to_multiple: pad every
    document to a multiple (2 x context-parallel size). layout: "padded" ([B, pack_size]) or "thd".
    """

    pack_size: int = 4096
    window: int = 1000
    seed: int = 0
    overlong: str = "error"
    pad_to_multiple: int = 1
    layout: str = "padded"

    def __post_init__(self) -> None:
        for name, low in (("pack_size", 2), ("window", 1), ("seed", 0), ("pad_to_multiple", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidOptions(f"must be an integer >= {low}", field=f"packing.{name}")
        if self.pad_to_multiple > self.pack_size:
            raise InvalidOptions("must not exceed pack_size", field="packing.pad_to_multiple")
        if self.overlong not in _PACK_OVERLONG:
            raise InvalidOptions(f"must be one of {list(_PACK_OVERLONG)}", field="packing.overlong")
        if self.layout not in _PACK_LAYOUTS:
            raise InvalidOptions(f"must be one of {list(_PACK_LAYOUTS)}", field="packing.layout")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PackOptions:
        """Build from JSON-like input; unknown keys are errors naming the key."""
        if not isinstance(data, Mapping):
            raise InvalidOptions("packing must be an object", field="packing")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidOptions(f"unknown option(s) {unknown}; known: {sorted(known)}", field=f"packing.{unknown[0]}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CollateOptions:
    """Everything that changes which tokens a request produces (part of every request, so any replica answers).

    truncation: "none" keeps samples whole (an over-long one then follows ``overlong``), "right"/"left" cut
    to ``max_length``. padding: "longest" pads a batch to its longest row, "max_length" to ``max_length``,
    "none" leaves rows ragged (only meaningful for one-sample batches and the offline CLI).

    label_format left unset (None) follows the policy's convention, decided here and nowhere else:
    ``unshifted`` for the default policy (HF models shift labels themselves, so ``model(**batch).loss`` is
    right), ``shifted`` for ``label_policy="nemo"`` (NeMo's recipes expect pre-shifted labels). After
    construction ``label_format`` always holds the resolved value.
    """

    label_policy: LabelPolicy = LabelPolicy.ASSISTANT
    label_format: LabelFormat = None  # type: ignore[assignment]  # None: the policy's convention (resolved below)
    max_length: int | None = None
    truncation: str = "none"
    padding: str = "longest"
    pad_to_multiple_of: int | None = None
    train_on_last_turn_only: bool = False
    mask_reasoning_content: bool = False
    answer_only: bool = True
    on_zero_labels: str = "error"
    overlong: str = "error"
    on_sample_error: str = "error"  # "skip": a row that fails (bad media, template error) is reported, not fatal
    pixel_dtype: str = "float32"
    packing: PackOptions | None = None
    # Whether label_format was chosen rather than derived: a later label_policy re-derives only a derived one.
    label_format_given: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Accept the string values too (CollateOptions(label_format="unshifted")), as from_mapping does.
        object.__setattr__(self, "label_policy", _enum(LabelPolicy, self.label_policy, "label_policy"))
        given = self.label_format is not None
        fmt = _enum(LabelFormat, self.label_format, "label_format") if given else _policy_format(self.label_policy)
        object.__setattr__(self, "label_format", fmt)
        object.__setattr__(self, "label_format_given", given)
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 2):
            raise InvalidOptions("must be an integer >= 2", field="max_length")
        if self.pad_to_multiple_of is not None and (
            not isinstance(self.pad_to_multiple_of, int) or self.pad_to_multiple_of < 1
        ):
            raise InvalidOptions("must be a positive integer", field="pad_to_multiple_of")
        if self.truncation != "none" and self.max_length is None:
            raise InvalidOptions("truncation needs max_length", field="truncation")
        if self.padding == "max_length" and self.max_length is None:
            raise InvalidOptions("padding='max_length' needs max_length", field="padding")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise InvalidOptions(f"must be one of {list(choices)}", field=name)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, base: CollateOptions | None = None) -> CollateOptions:
        """Build options from JSON-like input over ``base`` (a processor's defaults); unknown keys are errors."""
        current = base or cls()
        if not data:
            return current
        if not isinstance(data, Mapping):
            raise InvalidOptions("options must be an object", field="options")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidOptions(f"unknown option(s) {unknown}; known: {sorted(known)}", field=unknown[0])
        values = {k: _coerce(k, v) for k, v in data.items()}
        if values.get("label_format") is None and not current.label_format_given:
            values["label_format"] = None  # re-derived from the (possibly new) label_policy
        if "packing" in values:
            values["packing"] = PackOptions.from_mapping(values["packing"]) if values["packing"] else None
        return dataclasses.replace(current, **values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (enums as their string values); ``from_mapping(to_dict())`` gives equal options."""
        out = dataclasses.asdict(self)
        del out["label_format_given"]
        out["label_policy"] = self.label_policy.value
        # None when derived: a processor's defaults then keep following whatever label_policy a request sets.
        out["label_format"] = self.label_format.value if self.label_format_given else None
        out["packing"] = self.packing.to_dict() if self.packing else None
        return out


def _policy_format(policy: LabelPolicy) -> LabelFormat:
    """The label format a policy implies when none is chosen: NeMo's recipes shift, HF models shift themselves."""
    return LabelFormat.SHIFTED if policy is LabelPolicy.NEMO else LabelFormat.UNSHIFTED


def _coerce(name: str, value: Any) -> Any:
    if name == "label_policy":
        return _enum(LabelPolicy, value, name)
    if name == "label_format":
        return None if value is None else _enum(LabelFormat, value, name)
    if name == "truncation":
        return _alias(_TRUNCATION_ALIASES, value, name)
    if name == "padding":
        return _alias(_PADDING_ALIASES, value, name)
    if name in ("train_on_last_turn_only", "mask_reasoning_content", "answer_only"):
        if not isinstance(value, bool):
            raise InvalidOptions("must be true or false", field=name)
        return value
    if name in ("max_length", "pad_to_multiple_of"):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidOptions("must be an integer or null", field=name)
        return value
    return value


def _enum(kind: type[LabelPolicy] | type[LabelFormat], value: Any, name: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise InvalidOptions(f"must be one of {[m.value for m in kind]}", field=name) from None


def _alias(table: dict[Any, str], value: Any, name: str) -> str:
    try:
        return table[value]
    except (KeyError, TypeError):
        choices = sorted({v for v in table.values()})
        raise InvalidOptions(f"must be one of {choices}", field=name) from None
