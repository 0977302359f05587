"""What happened to the samples, brought to the trainer: per-batch reports, running counts, a summary warning.

Every batch carries the service's per-sample reports (status ``ok``/``skipped``/``dropped``, tokens cut by
truncation, labels found). The loader keeps the latest batch's reports, counts across the run (kept in its
``state_dict``, so a resumed run continues the counts), calls the user's callback, and logs one warning per
iteration when any sample was truncated, dropped or skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BatchReport", "ReportCounts", "with_rows"]

_LOGGER = logging.getLogger("feedline.client")
_KEYS = ("batches", "samples", "truncated", "dropped", "skipped")


@dataclass(frozen=True)
class BatchReport:
    """The reports of one delivered batch: its index in the epoch, and one dict per row the batch was made from.

    A row's dict has ``index`` (position in the batch), ``status`` (``ok``, ``skipped``, ``dropped``),
    ``truncated`` (tokens cut), ``num_tokens``, ``num_label_tokens``, ``strategy``, ``warnings``, ``error``;
    in samples mode with a sized ``samples`` also ``row``, the sample's index in ``samples``.
    """

    epoch: int
    batch_index: int
    samples: tuple[Mapping[str, Any], ...]

    @property
    def truncated(self) -> int:
        return sum(1 for r in self.samples if r.get("status") == "ok" and r.get("truncated"))

    @property
    def dropped(self) -> int:
        return sum(1 for r in self.samples if r.get("status") == "dropped")

    @property
    def skipped(self) -> int:
        return sum(1 for r in self.samples if r.get("status") == "skipped")


class ReportCounts:
    """Running counts over every batch delivered (across epochs), and the callback and warning built on them."""

    def __init__(self, callback: Callable[[BatchReport], None] | None = None) -> None:
        self.callback = callback
        self.totals = dict.fromkeys(_KEYS, 0)
        self._since_summary = dict.fromkeys(_KEYS, 0)

    def observe(self, report: BatchReport) -> None:
        step = {
            "batches": 1,
            "samples": len(report.samples),
            "truncated": report.truncated,
            "dropped": report.dropped,
            "skipped": report.skipped,
        }
        for key, value in step.items():
            self.totals[key] += value
            self._since_summary[key] += value
        if self.callback is not None:
            self.callback(report)

    def summarise(self, epoch: int) -> None:
        """One warning for what this iteration lost or cut, if anything (then the per-iteration tally restarts)."""
        seen, self._since_summary = self._since_summary, dict.fromkeys(_KEYS, 0)
        if seen["truncated"] or seen["dropped"] or seen["skipped"]:
            _LOGGER.warning(
                "feedline epoch %d: of %d samples in %d batches, %d were truncated, %d dropped and %d skipped "
                "(loader.report_counts has the run's totals, loader.last_report each batch's reports)",
                epoch,
                seen["samples"],
                seen["batches"],
                seen["truncated"],
                seen["dropped"],
                seen["skipped"],
            )

    def state(self) -> dict[str, int]:
        return dict(self.totals)

    def restore(self, state: Mapping[str, int] | None) -> None:
        self.totals = {key: int((state or {}).get(key, 0)) for key in _KEYS}
        self._since_summary = dict.fromkeys(_KEYS, 0)


def with_rows(reports: Sequence[Mapping[str, Any]], rows: Sequence[int] | None) -> tuple[Mapping[str, Any], ...]:
    """Each report with ``row``, the index in ``samples`` of the row it describes, where the loader knows it."""
    if rows is None:
        return tuple(reports)
    return tuple({**r, "row": rows[r["index"]]} if 0 <= r.get("index", -1) < len(rows) else r for r in reports)
