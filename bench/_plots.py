"""PNG plots from the suite's JSON (matplotlib, no display needed)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["draw_all"]


def _wire(f: Mapping[str, Any], ax: Any) -> None:
    sizes = [r["batch_mb"] for r in f["sizes"]]
    ax.plot(sizes, [r["raw_gbs"] for r in f["sizes"]], "o-", label="raw frames, wall")
    ax.plot(sizes, [r["raw_cpu_bound_gbs"] for r in f["sizes"]], "o--", label="raw frames, CPU-bound")
    ax.plot(sizes, [r["protobuf_gbs"] for r in f["sizes"]], "s-", label="protobuf-parsed, wall")
    ax.plot(sizes, [r["decode_gbs"] for r in f["sizes"]], "^:", label="client decode alone")
    ax.set(xscale="log", xlabel="batch size (MB)", ylabel="GB/s", title="Wire: GB/s vs batch size")
    ax.set_ylim(bottom=0)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.legend(fontsize=8)


def _packing(f: Mapping[str, Any], ax: Any) -> None:
    sizes = list(f["pack_sizes"])
    ax.plot(sizes, [f["pack_sizes"][s]["fill"] for s in sizes], "o-", label="feedline (best-fit, window 1000)")
    ax.plot(
        sizes, [f["pack_sizes"][s]["sequential_fill"] for s in sizes], "s--", label="sequential first-fit (NeMo THD)"
    )
    ax.set(
        xlabel="pack size (tokens)",
        ylabel="fill (real tokens / slots)",
        ylim=(0.75, 1.0),
        title="Packing fill vs pack size",
    )
    ax.legend(loc="lower right")


def _scaling(f: Mapping[str, Any], ax: Any) -> None:
    from bench.bench_scaling import CONFIGS, PINNED

    names = [n for n in CONFIGS if n in f]
    bars = ax.bar(
        [n.replace(" on ", "\non ").replace(", ", "\n").replace(" and ", "\nand ") for n in names],
        [f[n]["rows_per_s"] for n in names],
        color=["#ddd", "#bbb", "#888", "#a84", "#4a7", "#47a"][: len(names)],
    )
    ax.bar_label(bars, [f"{f[n]['rows_per_s'] / f[PINNED]['rows_per_s']:.2f}x" for n in names])
    ax.tick_params(axis="x", labelsize=7)
    ax.set(ylabel="rows/s", title=f"Service throughput ({f['cpus']} cores shared with the load)")


def _client(f: Mapping[str, Any], ax: Any) -> None:
    from bench.bench_client import SIDES as sides

    trainer = [f[s]["trainer_cpu_ms_per_batch"] for s in sides]
    others = [f[s]["other_processes_cpu_ms_per_batch"] for s in sides]
    labels = [s.replace(", ", "\n") for s in sides]
    ax.bar(labels, trainer, label="trainer process", color="#c44")
    ax.bar(labels, others, bottom=trainer, label="workers / server / receiver", color="#bbb")
    ax.set(ylabel="CPU ms per batch", title=f"CPU per batch of {f['batch_size']} chats")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend()


_PLOTS: dict[str, Callable[[Mapping[str, Any], Any], None]] = {
    "wire": _wire,
    "packing": _packing,
    "scaling": _scaling,
    "client": _client,
}


def draw_all(out: Path) -> dict[str, Path]:
    """One PNG per bench that has figures in ``out``; returns name -> path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = {}
    for name, draw in _PLOTS.items():
        path = out / f"{name}.json"
        figures = json.loads(path.read_text()).get("figures") if path.exists() else None
        if not isinstance(figures, Mapping) or "skipped" in figures:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4))
        try:
            draw(figures, ax)
        except KeyError:  # figures from another version of the bench
            plt.close(fig)
            continue
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)
        drawn[name] = out / f"{name}.png"
    return drawn
