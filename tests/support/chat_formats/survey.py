"""Per family: how many generated rows the template renders, the default policy labels, and the check accepts.

Run ``python -m tests.support.chat_formats.survey [--rows N] [FAMILY ...]``. Rows come from the same hypothesis
strategy as the property test, derandomized (the same rows on every run). "labelled": the engine returned the row
with at least one supervised token; "correct": ids equal ``apply_chat_template``'s and the supervised tokens are
exactly the independent check's. The last column is the first reason seen for a row that was not correct.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings

from .conversations import conversations
from .engine import engine_date, family_processor, label_with_engine
from .oracle import check_labels, render
from .registry import FAMILIES, family
from .tokenizers import family_tokenizer

__all__ = ["FamilyResult", "main", "survey_family"]


@dataclass
class FamilyResult:
    name: str
    rows: int = 0
    rendered: int = 0
    labelled: int = 0
    correct: int = 0
    reason: str = ""

    def note(self, reason: str) -> None:
        if not self.reason:
            self.reason = " ".join(reason.split())[:110]


def sample_rows(name: str, count: int) -> list[dict[str, Any]]:
    """``count`` rows (fewer if hypothesis finds fewer distinct ones) from the family's strategy, deterministically."""
    rows: list[dict[str, Any]] = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(conversations(family(name)))
    def collect(row: dict[str, Any]) -> None:
        rows.append(row)

    collect()
    return rows


def survey_family(name: str, count: int) -> FamilyResult:
    result = FamilyResult(name)
    tokenizer = family_tokenizer(name)
    date = engine_date(family_processor(name))
    for row in sample_rows(name, count):
        result.rows += 1
        try:
            render(tokenizer, row["messages"], row.get("tools"), date=date)
        except Exception as exc:  # noqa: BLE001 - a row the template refuses is reported, not counted
            result.note(f"template: {exc}")
            continue
        result.rendered += 1
        try:
            sample = label_with_engine(name, row)
        except Exception as exc:  # noqa: BLE001 - the engine's refusal is the figure being measured
            result.note(f"engine: {exc}")
            continue
        if not sample.supervised.any():
            result.note("engine: no supervised tokens")
            continue
        result.labelled += 1
        try:
            check_labels(sample.input_ids, sample.supervised, row, name, date)
        except AssertionError as exc:
            result.note(f"check: {exc}")
            continue
        result.correct += 1
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", help="family names (default: all)")
    parser.add_argument("--rows", type=int, default=50, help="rows per family (default 50)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    names = args.families or list(FAMILIES)
    print(f"{'family':18} {'classes':8} {'rows':>4} {'rendered':>8} {'labelled':>8} {'correct':>7}  first problem")
    totals = FamilyResult("all")
    for name in names:
        r = survey_family(name, args.rows)
        classes = ",".join(str(c) for c in family(name).classes) or "-"
        print(f"{name:18} {classes:8} {r.rows:4} {r.rendered:8} {r.labelled:8} {r.correct:7}  {r.reason}", flush=True)
        totals.rows += r.rows
        totals.rendered += r.rendered
        totals.labelled += r.labelled
        totals.correct += r.correct
    print(f"{'total':18} {'':8} {totals.rows:4} {totals.rendered:8} {totals.labelled:8} {totals.correct:7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
