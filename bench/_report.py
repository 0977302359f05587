"""BENCHMARKS.md from the suite's JSON: the machine, the command, one table per comparison."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "machine", "write_markdown"]

ROOT = Path(__file__).resolve().parents[1]
_PACKAGES = ("torch", "transformers", "tokenizers", "tiktoken", "numpy", "grpcio", "protobuf", "pillow", "matplotlib")


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, OS, interpreter, library versions, commit."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kb = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0)
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu": model,
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "loadavg": os.getloadavg()[0],
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int) or abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}" if abs(x) >= 1 else f"{x:.3g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_num(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio(x: float) -> str:
    return f"**{x:.2f}x**"


def _pct(x: float) -> str:
    return f"{x:.1%}"


# ---------------------------------------------------------------------------------------------- one section each


def _text(f: Mapping[str, Any]) -> str:
    rows = [
        [name, rate / 1e6, _ratio(f["ratio over raw encode"][name]) if name in f["ratio over raw encode"] else "1"]
        for name, rate in f["tokens_per_s"].items()
    ]
    return f"{f['rows']:,} chats, {f['tokens']:,} tokens, one thread, best of the round-robin repeats.\n\n" + _table(
        ["variant", "Mtok/s", "vs raw encode"], rows
    )


def _hf_mask(f: Mapping[str, Any]) -> str:
    ratios = f["ratio over transformers"]
    rows = [
        [
            name,
            rate / 1e6,
            _ratio(ratios[name]) if name in ratios else "1",
            ", ".join(f["label strategies"].get(name, [])) or "assistant mask",
        ]
        for name, rate in f["tokens_per_s"].items()
    ]
    same = "identical" if f["identical input_ids, labels, attention_mask"] else "NOT identical"
    return (
        f"{f['rows']:,} chats, {f['tokens']:,} tokens ({f['supervised_tokens']:,} supervised). input_ids, "
        f"labels and attention_mask: **{same}** on every path, every batch (checked in the run).\n\n"
        + _table(["path", "Mtok/s", "vs transformers", "labels from"], rows)
    )


def _packing(f: Mapping[str, Any]) -> str:
    floors = list(f["encode_only_cpu_s"])
    rows = [
        [
            size,
            p["packs"],
            p["dropped"],
            f"{p['fill']:.4f}",
            f"{p['sequential_fill']:.4f}",
            p["plan_ms"],
            p["materialise_ms"],
            _pct(p["pack_over_tokenize"]),
            *(_pct(p[f"pack_over_{k.replace(' ', '_')}"]) for k in floors),
        ]
        for size, p in f["pack_sizes"].items()
    ]
    lengths = f["tokens_per_chat"]
    return (
        f"{f['chats']:,} chats, {f['tokens']:,} tokens (per chat: mean {lengths['mean']:.0f}, p99 "
        f"{lengths['p99']:.0f}, max {lengths['max']}); engine tokenization {f['tokenize_cpu_s']:.2f} CPU s "
        f"(encoder {f['encoder']}). Fill = real tokens / slots; sequential = NeMo's THD first-fit on the same "
        "lengths. Cost = plan + materialise, as a share of tokenization and of encode-only time.\n\n"
        + _table(
            [
                "pack size",
                "packs",
                "dropped",
                "fill",
                "sequential fill",
                "plan ms",
                "materialise ms",
                "cost / tokenize",
                *(f"cost / {k}" for k in floors),
            ],
            rows,
        )
    )


def _wire(f: Mapping[str, Any]) -> str:
    rows = [
        [
            f"{r['batch_mb']} MB",
            r["raw_gbs"],
            r["raw_cpu_bound_gbs"],
            r["protobuf_gbs"],
            r["protobuf_cpu_bound_gbs"],
            _ratio(r["raw_over_protobuf_cpu"]),
            r["decode_ms"],
            r["decode_gbs"],
        ]
        for r in f["sizes"]
    ]
    return (
        f"One gRPC stream over loopback, 1 MiB frames, {f['total_mb_per_run']} MB per run, median of "
        f"{f['repeats']}. Wall = what this run got on the shared cores; CPU-bound = bytes / the busier side's CPU "
        "seconds (the rate with a core each for client and server). Client decode = reassembling the frames and "
        f"decoding the batch. memcpy reference in the same process: {f['memcpy_gbs']:.1f} GB/s. Earlier analysis: "
        "bench/WIRE_NOTES.md.\n\n"
        + _table(
            [
                "batch",
                "GB/s (wall)",
                "GB/s (CPU-bound)",
                "protobuf-parsed GB/s (wall)",
                "protobuf-parsed GB/s (CPU-bound)",
                "raw / protobuf (CPU-bound)",
                "client decode ms",
                "decode GB/s",
            ],
            rows,
        )
    )


def _multimodal(f: Mapping[str, Any]) -> str:
    rows = [
        [
            r["size"],
            r["processor_images_per_s"],
            r["engine_images_per_s"],
            r["processor_batches_per_s"],
            r["engine_batches_per_s"],
            _pct(r["overhead"]),
            _pct(r["overhead_median"]),
            _pct(r["overhead_cpu"]),
        ]
        for r in f["sizes"]
    ]
    return (
        f"Processor {f['processor']}, batches of {f['batch']} single-image rows (random-noise PNGs, base64 in "
        f"the JSON), {f['repeats']} interleaved repeats. Processor alone = apply_chat_template + base64 decode + "
        "PIL open + RGB + one processor call per batch; engine = `collate` on the same rows (validation, "
        "decode, render, one processor call, labels, batch). Overhead = engine / processor alone - 1, from the "
        "fastest repeats, the medians and CPU time (target: under 10%). Analysis: bench/MULTIMODAL_NOTES.md.\n\n"
        + _table(
            [
                "size",
                "processor img/s",
                "engine img/s",
                "processor batch/s",
                "engine batch/s",
                "overhead",
                "overhead (median)",
                "overhead (CPU)",
            ],
            rows,
        )
    )


def _nemo(f: Mapping[str, Any]) -> str:
    from bench.bench_nemo import TOKENIZERS

    with_nemo = all("fast / NeMo speed" in f[name] for name in TOKENIZERS)
    rows = [
        [
            name,
            f[name]["rows"],
            f[name]["tokens"],
            *f[name]["us_per_row"].values(),
            *([_ratio(f[name]["fast / NeMo speed"])] if with_nemo else []),
            _ratio(f[name]["fast / reference speed"]),
            f[name]["identical on every row"] and f[name].get("identical to NeMo on every row", True),
            ", ".join(f"{k}: {v}" for k, v in f[name]["rows by path"].items()),
        ]
        for name in TOKENIZERS
    ]
    sides = list(f[TOKENIZERS[0]]["us_per_row"])
    met = "met" if f["target met"] else "**not met**"
    against = "NeMo AutoModel's own format_chat_template" if with_nemo else "the reference"
    return (
        '`label_policy="nemo"`: the fast path (one encode of the whole conversation, prefixes rendered as '
        "text only, through a sandbox that remembers its attribute verdicts) against NeMo AutoModel's own "
        "`format_chat_template` (where nemo-automodel imports) and against the reference path (NeMo's calls "
        "re-created: one render + encode per prefix), CPU per row, best of round-robin repeats. Every row is "
        "compared (ids, mask, attention; against the reference also strategy and warnings); the bench fails on "
        "any difference.\n\n"
        + _table(
            [
                "tokenizer",
                "rows",
                "tokens",
                *[f"{s} us/row" for s in sides],
                *(["fast / NeMo"] if with_nemo else []),
                "fast / reference",
                "identical",
                "rows by path",
            ],
            rows,
        )
        + f"\n\nTarget (issue 19): at least {f['target']:.0f}x {against}: {met}."
    )


def _client(f: Mapping[str, Any]) -> str:
    from bench.bench_client import SIDES, TARGET_SIDES

    base = f["local, 0 workers"]["trainer_cpu_ms_per_batch"]
    rows = [
        [
            side,
            f[side]["trainer_cpu_ms_per_batch"],
            _pct(f[side]["trainer_cpu_ms_per_batch"] / base),
            f[side]["other_processes_cpu_ms_per_batch"],
            f[side]["total_cpu_ms_per_batch"],
            f[side]["samples_per_s"],
            f[side]["mb_per_batch"],
            f[side]["first_batch_s"],
        ]
        for side in SIDES
    ]
    imp = f["client import"]
    met = "met" if f["target met"] else "**not met**"
    hf_base = "local, 0 workers, hf encoder"
    remote = "; ".join(
        f"{side} {_pct(f[side]['trainer_cpu_ms_per_batch'] / base)} (receiver process "
        f"{f[side]['receiver_cpu_ms_per_batch']:.2f} ms/batch, in 'other processes'), against the "
        f"local path on HF's encoder {_pct(f[f'ratio trainer CPU {side} / {hf_base}'])}"
        for side in TARGET_SIDES
    )
    engine = f["local, 0 workers"].get("total_cpu_us_per_row")
    per_row = (
        ""
        if engine is None
        else (
            "Total CPU per row, every process counted (trainer, receiver, server, DataLoader workers), against the "
            "in-process engine (local, 0 workers):\n\n"
            + _table(
                ["path", "total CPU us/row", "vs in-process engine"],
                [
                    [side, f[side]["total_cpu_us_per_row"], _ratio(f[side]["total_cpu_us_per_row"] / engine)]
                    for side in SIDES
                    if "total_cpu_us_per_row" in f[side]
                ],
            )
            + f"\n\nTarget (issue 19): both RemoteLoader modes at most {f.get('row target', 1.15):.2f}x: "
            + ("met" if f.get("row target met") else "**not met**")
            + ". 'local, 2 workers' runs the engine's own work, no service, in forked processes beside the "
            f"trainer: its {_ratio(f['local, 2 workers']['total_cpu_us_per_row'] / engine)} is what running "
            "processes side by side costs on this shared machine, a floor the service paths share too. "
            "Where the rest goes (py-spy profiles of "
            "the server and the receiver): bench/CLIENT_NOTES.md, 'Total CPU per row: the profile of what "
            "remains', and the latest budget of a batch, process by process and thread by thread, in its "
            "ninth-session section.\n\n"
        )
    )
    return (
        per_row
        + f"{f['batches']} batches of {f['batch_size']} chats per side, encoder {f['encoder']} on both sides"
        + (f", {f['repeats']} round-robin repeats, each side's least total CPU kept" if "repeats" in f else "")
        + ". Trainer CPU = `time.process_time()` of the trainer process from its first batch to its last; other "
        "processes = DataLoader workers (`RUSAGE_CHILDREN`, their whole life: they start and end with the epoch), "
        "or the server (/proc, the whole epoch) and the loader's receiver process (/proc, from the first batch; "
        "it lives as long as the loader, so its start is reported apart"
        + (
            f": {f['remote, samples']['receiver_start_cpu_ms']:.0f} and "
            f"{f['remote, dataset']['receiver_start_cpu_ms']:.0f} CPU ms once per loader in samples and dataset mode"
            if "receiver_start_cpu_ms" in f["remote, samples"]
            else ""
        )
        + "). The in-process sides are RemoteLoader with `offload=False`. Analysis: bench/CLIENT_NOTES.md.\n\n"
        + _table(
            [
                "side",
                "trainer CPU ms/batch",
                "vs local 0 workers",
                "other processes CPU ms/batch",
                "total CPU ms/batch",
                "samples/s",
                "MB/batch",
                "first batch s",
            ],
            rows,
        )
        + f"\n\nTarget (issue 6): RemoteLoader's trainer CPU at most {f['target']:.0%} of the local 0-worker "
        f"path's: {met} ({remote}).\n\n"
        + _wire_bytes(f.get("wire bytes"))
        + f"`import feedline.client`: {imp['importtime_ms']:.0f} ms (`-X importtime`, cumulative, best of 3); a "
        "fresh "
        f"interpreter with the import {imp['interpreter_wall_ms']:.0f} ms wall against "
        f"{imp['bare_interpreter_wall_ms']:.0f} ms bare; torch/transformers/fastapi imported by it: "
        f"{imp['heavy_modules_imported']}."
    )


def _wire_bytes(sizes: Mapping[str, Mapping[str, float]] | None) -> str:
    """The server's blob per batch, padded (HTTP, requests without `ragged`) against ragged (feedline's clients)."""
    if not sizes:
        return ""
    rows = [[name, s["padded_kb_per_batch"], s["ragged_kb_per_batch"], _ratio(s["ratio"])] for name, s in sizes.items()]
    return (
        "Bytes per batch on the wire (the server's blob, same tensors after the client pads): padded int64 against "
        "the ragged form feedline's clients ask for (each row's tokens, narrowed):\n\n"
        + _table(["batches", "padded KB", "ragged KB", "fewer bytes"], rows)
        + "\n\n"
    )


def _scaling(f: Mapping[str, Any]) -> str:
    from bench.bench_scaling import CONFIGS, EFFICIENCY, PINNED, PINNED_WITH_LOAD

    rows = [
        [
            name,
            f[name]["rows_per_s"],
            f[name]["tokens_per_s"] / 1e6,
            f[name]["server_cores_used"],
            f[name].get("load_cores_used", 0.0),
            f[name]["rows_per_server_cpu_s"],
            _ratio(f[name]["rows_per_s"] / f[PINNED]["rows_per_s"]),
            _ratio(f[name]["rows_per_s"] / f["1 worker"]["rows_per_s"]),
        ]
        for name in CONFIGS
        if name in f
    ]
    one_thread_rate = f["1 worker, 1 collate thread"]["rows_per_s"] / f["1 worker"]["rows_per_s"]
    efficiency = "; ".join(
        f"{name} {_ratio(f[f'ratio {name} rows per CPU s / engine'])} "
        f"({_ratio(f[f'ratio {name} rows per CPU s / engine best pass'])} of the best pass)"
        for name in EFFICIENCY
    )
    worker_met = [name for name in EFFICIENCY if f[f"ratio {name} rows per CPU s / engine"] >= f["worker target"]]
    nearest = max(EFFICIENCY, key=lambda name: f[f"ratio {name} rows per CPU s / engine"])
    cores = f[f"ratio 2 workers / {PINNED_WITH_LOAD}"]
    return (
        f"Real `feedline serve` processes, {f['batch_rows']} chats per batch, {f['load_streams']} CollateStream "
        f"streams from {f['load_processes']} load processes, {f['seconds']:.0f} s per configuration in "
        f"{f['rounds']} windows taken in turns with the others and with the in-process engine; 1 replica is "
        f"the 1-worker server. **This machine has {f['cpus']} cores**, shared by the servers and the load "
        'processes (and by anything else running): "cores used" is CPU per second of load ("load cores" '
        "includes each load process's start, about 0.3 CPU-seconds, while the servers wait). "
        f'"{PINNED}" is pinned to one CPU (affinity), so it sizes itself for one, and its load is free to use '
        f'the other; "{PINNED_WITH_LOAD}" is the same server with its load processes pinned to its CPU, as the '
        "2-worker server shares its two with its load. Analysis: bench/WIRE_NOTES.md section 2, "
        "bench/CLIENT_NOTES.md.\n\n"
        f"The in-process engine (`collate` in the bench process, one thread, the same 32 batches) did "
        f"{f['engine rows per CPU s']:.0f} rows per CPU-second over its windows, taken in turns with the servers' "
        f"(its best single pass, as earlier runs measured it: {f['engine best pass rows per CPU s']:.0f}). Rows per "
        f"CPU-second at saturation against it: {efficiency}; one collate thread gives {_ratio(one_thread_rate)} "
        "the rows/s of the default two. Target (issue 19) at least "
        f"{f['worker target']}x: "
        + (
            f"met by {', '.join(worker_met)}"
            + ("" if len(worker_met) == len(EFFICIENCY) else " (**not** by every configuration)")
            if worker_met
            else f"**not met** (nearest: {nearest}, {f[f'ratio {nearest} rows per CPU s / engine']:.3f}x)"
        )
        + f". 2 workers against {PINNED_WITH_LOAD}: {_ratio(cores)} (against {PINNED}, its load on the "
        f"other CPU: {_ratio(f[f'ratio 2 workers / {PINNED}'])}); target {f['cores target']}x: "
        + ("met" if cores >= f["cores target"] else "**not met**")
        + ".\n\n"
        + _table(
            [
                "configuration",
                "rows/s",
                "Mtok/s",
                "server cores used",
                "load cores",
                "rows per server CPU s",
                f"vs {PINNED}",
                "vs 1 worker",
            ],
            rows,
        )
    )


def _datasets(f: Mapping[str, Any]) -> str:
    head = [
        "rows",
        "format",
        "open cold / warm s",
        "dataset CPU ms/batch start / middle / end",
        "block decode ms/batch (amortized)",
        "engine CPU ms/batch",
        "dataset / engine (worst)",
        "random row us",
    ]
    served = [
        "rows",
        "format",
        "first batch (cold open) s",
        "server CPU ms/batch start / middle / end",
        "first batch resuming at 90% s",
        "server RSS growth MB",
    ]
    mixing = [
        "rows",
        "format",
        "window rows",
        "batch pairs within 1,000 storage rows",
        "full permutation",
        "source mix TV distance",
        "full permutation",
    ]
    split, serve, hf, mixed = [], [], [], []
    for n, r in f["sizes"].items():
        for kind, x in r["in process"].items():
            if "shuffle" in x:
                ours, full = x["shuffle"], x["shuffle, full permutation"]
                near, tv = "batch pairs within 1000 storage rows", "source mix TV distance, runs of 1024"
                mixed.append(
                    [n, kind, x["order window rows"], ours[near], full[near], f"{ours[tv]:.3f}", f"{full[tv]:.3f}"]
                )
            split.append(
                [
                    n,
                    kind,
                    f"{x['open cold s']:.3f} / {x['open warm s']:.3f}",
                    " / ".join(f"{x[f'dataset CPU ms/batch, {p}']:.3f}" for p in ("start", "middle", "end")),
                    f"{x.get('block decode amortized ms/batch', 0.0):.3f}",
                    f"{x['engine CPU ms/batch, middle']:.2f}",
                    _pct(x["dataset / engine, worst"]),
                    x["random row us"],
                ]
            )
        for kind, x in r["server"].items():
            serve.append(
                [
                    n,
                    kind,
                    x["first batch (cold open) s"],
                    " / ".join(f"{x[f'server CPU ms/batch, {p}']:.1f}" for p in ("start", "middle", "end")),
                    x["first batch, resume at 90% s"],
                    x["server RSS growth MB"],
                ]
            )
        if "hf datasets" in r:
            h = r["hf datasets"]
            hf.append([n, h["open s"], h["RSS growth MB"], h["random row us"], h["random batch of 8 ms"]])
    separate = [
        f"{int(n):,} rows: `{r['run']['command']}`, {r['run']['date']}, {r['run']['wall_s']:.0f} s wall, load "
        f"average {r['run']['loadavg_before']:.1f} before and {r['run']['loadavg_after']:.1f} after"
        for n, r in f["sizes"].items()
        if "run" in r
    ]
    return (
        ("Sizes from a separate run: " + "; ".join(separate) + ".\n\n" if separate else "")
        + f"Batches of {f['batch_size']} short chats; per-batch figures are means over {f['span_batches']} "
        "batches at each place of the epoch. In this process (CPU time, the same rows):\n\n"
        + _table(head, split)
        + (
            "\n\nShuffle quality of the epoch order (first 2^20 positions, seed 1) against a full permutation "
            "(`bench_datasets.shuffle_quality`): where rows come from blocks (Parquet row groups, Arrow record "
            "batches) the order shuffles within windows of blocks that fit the block cache. Near pairs: two rows "
            "of one batch within 1,000 rows of each other in storage. Source mix: storage cut into 100 equal "
            "parts (a corpus concatenated from 100 sources); mean total-variation distance of each run of 1,024 "
            "positions from equal shares (0 = perfectly even, 1 = one source per run):\n\n" + _table(mixing, mixed)
            if mixed
            else ""
        )
        + "\n\nA real `feedline serve` per size (its CPU from /proc covers gRPC, dataset and engine; RSS growth "
        "over all requests to that format, after the others):\n\n"
        + _table(served, serve)
        + (
            "\n\nHF `datasets` on the same saved directory (`load_from_disk`, `ds[i]`, `ds[list]`):\n\n"
            + _table(["rows", "open s", "RSS growth MB", "random row us", "random batch of 8 ms"], hf)
            if hf
            else ""
        )
        + "\n\n"
        + _datasets_targets(f)
    )


def _datasets_targets(f: Mapping[str, Any]) -> str:
    """Issue 18's targets: the per-batch ratio over every size, the rest at 10^7 rows (the issue's size) and at
    any larger size measured (else at the largest)."""
    sizes = sorted(f["sizes"].items(), key=lambda item: int(item[0]))
    large = [item for item in sizes if int(item[0]) >= 10_000_000] or sizes[-1:]
    parts = []
    for n, r in large:
        warm = max(x["open warm s"] for x in r["in process"].values())
        cold = ", ".join(f"{kind} {x['open cold s']:.2f} s" for kind, x in r["in process"].items())
        rss = max(x["server RSS growth MB"] for x in r["server"].values())
        parts.append(
            f"at {int(n):,} rows, open under 1 s plus a small cost per file: {warm:.3f} s at most once a file's row "
            f"index exists (JSONL line offsets, Arrow record batch table; first open ever, index built: {cold}); "
            f"server RSS growth under 100 MB: at most {rss:.0f} MB over every format's requests"
        )
    return (
        "Targets (issue 18): dataset work at most 10% of the engine's per batch at every size: worst "
        f"{_pct(f['dataset / engine CPU per batch, worst'])}; "
        + "; ".join(parts)
        + ". 64 concurrent ranks with no health failure: tests/server/test_dataset_service.py (asserted in CI)."
    )


def _generic(f: Any) -> str:
    """Any other bench's figures: scalars as a key/value table, lists of records as tables."""
    if not isinstance(f, Mapping):
        return f"`{json.dumps(f, default=str)}`"
    scalars = [[k, v] for k, v in f.items() if not isinstance(v, (Mapping, list))]
    parts = [_table(["figure", "value"], scalars)] if scalars else []
    for key, value in f.items():
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            header = list(value[0])
            parts.append(f"{key}:\n\n" + _table(header, [[v.get(h, "") for h in header] for v in value]))
        elif isinstance(value, Mapping):
            parts.append(f"{key}:\n\n" + _generic(value))
    return "\n\n".join(parts)


# name -> (title, what is compared, its own command, renderer)
_SECTIONS: dict[str, tuple[str, str, str, Callable[[Mapping[str, Any]], str]]] = {
    "text": (
        "Text engine vs raw tokenizer encode",
        "The engine (render + encode with offsets + labels) against the tokenizer encoding the same rendered "
        "text alone: the ceiling for an HF tokenizer.",
        "python -m bench.bench_text",
        _text,
    ),
    "hf_assistant_mask": (
        "Text engine vs transformers' own path",
        "`apply_chat_template(..., return_assistant_tokens_mask=True)` with a `{% generation %}` "
        "version of the same template, labels from its mask, against the engine producing the "
        "same tensors.",
        "python -m bench.bench_hf_assistant_mask",
        _hf_mask,
    ),
    "nemo": ("The nemo label policy: fast path vs NeMo's calls", "", "python -m bench.bench_nemo", _nemo),
    "fastpath": (
        "Fast text path",
        "bench_fastpath's figures (see bench/FASTPATH_NOTES.md).",
        "python -m bench.bench_fastpath",
        _generic,
    ),
    "multimodal": ("VLM engine vs the processor alone", "", "python -m bench.bench_multimodal", _multimodal),
    "wire": ("Wire: GB/s against batch size, client decode time", "", "python -m bench.bench_wire", _wire),
    "client": (
        "End to end: trainer-process CPU per batch, RemoteLoader vs an in-process DataLoader",
        "",
        "python -m bench.bench_client",
        _client,
    ),
    "scaling": ("Scaling: worker processes and replicas", "", "python -m bench.bench_scaling", _scaling),
    "packing": ("Packing: fill ratio and cost at 4096/8192/16384", "", "python -m bench.bench_packing", _packing),
    "datasets": (
        "Dataset mode from 10^5 rows up: open, first batch, memory, cost per batch",
        "JSONL, Parquet shards, a saved HF dataset and S3 (moto) through a real server, beside HF "
        "`datasets` random access (bench/bench_datasets.py's docstring says what is measured).",
        "python -m bench.bench_datasets",
        _datasets,
    ),
}


def _summary(records: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    """Headline ratios, one line each, from whichever benches have figures."""
    rows: list[list[Any]] = []

    def fig(name: str) -> Mapping[str, Any] | None:
        return records.get(name, {}).get("figures")

    if (f := fig("text")) and "ratio over raw encode" in f:
        for name, r in f["ratio over raw encode"].items():
            rows.append([f"text: {name} / raw tokenizer encode", _ratio(r)])
    if (f := fig("hf_assistant_mask")) and "ratio over transformers" in f:
        for name, r in f["ratio over transformers"].items():
            rows.append([f"labels: {name} / transformers apply_chat_template (identical tensors)", _ratio(r)])
    if (f := fig("nemo")) and "target met" in f:
        for name, r in f.items():
            if isinstance(r, Mapping) and "fast / NeMo speed" in r:
                rows.append(
                    [
                        f"nemo policy ({name}): fast path / NeMo AutoModel (identical outputs)",
                        _ratio(r["fast / NeMo speed"]),
                    ]
                )
            elif isinstance(r, Mapping) and "fast / reference speed" in r:
                rows.append(
                    [
                        f"nemo policy ({name}): fast path / NeMo's calls (identical outputs)",
                        _ratio(r["fast / reference speed"]),
                    ]
                )
    if (f := fig("fastpath")) and "ratio collate fast / raw hf encode" in f:
        rows.append(["fast path: collate fast / raw hf encode", _ratio(f["ratio collate fast / raw hf encode"])])
    if (f := fig("multimodal")) and "sizes" in f:
        for r in f["sizes"]:
            rows.append([f"VLM {r['size']}: engine overhead over the processor alone (CPU)", _pct(r["overhead_cpu"])])
    if (f := fig("wire")) and "sizes" in f:
        last = f["sizes"][-1]
        rows.append(
            [
                f"wire: {last['batch_mb']} MB batches, raw frames / protobuf-parsed (CPU-bound GB/s)",
                _ratio(last["raw_over_protobuf_cpu"]),
            ]
        )
        rows.append(
            [
                f"wire: {last['batch_mb']} MB batches, GB/s wall (CPU-bound)",
                f"{last['raw_gbs']:.2f} ({last['raw_cpu_bound_gbs']:.2f})",
            ]
        )
    if (f := fig("client")) and "local, 0 workers" in f:
        for side in ("local, 2 workers", "remote, samples", "remote, dataset", "remote collate"):
            if f"ratio total CPU per row {side} / engine" in f:
                rows.append(
                    [
                        f"total CPU per row (all processes): {side} / in-process engine",
                        _ratio(f[f"ratio total CPU per row {side} / engine"]),
                    ]
                )
        for side in (
            "local, 2 workers",
            "remote, samples",
            "remote, dataset",
            "remote, samples, in-process",
            "remote, dataset, in-process",
        ):
            for base in ("local, 0 workers", "local, 0 workers, hf encoder"):
                rows.append([f"trainer CPU per batch: {side} / {base}", _pct(f[f"ratio trainer CPU {side} / {base}"])])
        for case, sizes in f.get("wire bytes", {}).items():
            rows.append([f"wire bytes per batch, padded / ragged: {case}", _ratio(sizes["ratio"])])
    if (f := fig("scaling")) and "engine best pass rows per CPU s" in f:
        from bench.bench_scaling import EFFICIENCY, PINNED, PINNED_WITH_LOAD

        for pin in (PINNED_WITH_LOAD, PINNED):
            rows.append([f"service throughput: 2 workers / {pin}", _ratio(f[f"ratio 2 workers / {pin}"])])
        rows.append(
            [
                "service throughput: 2 workers / 1 worker (free to use both CPUs)",
                _ratio(f["ratio 2 workers / 1 worker"]),
            ]
        )
        rows.append(["service throughput: 2 replicas / 1 replica", _ratio(f["ratio 2 replicas / 1 replica"])])
        for name in EFFICIENCY:
            rows.append(
                [
                    f"rows per CPU-second at saturation, {name} / in-process engine (its best pass)",
                    f"{_ratio(f[f'ratio {name} rows per CPU s / engine'])} "
                    f"({_ratio(f[f'ratio {name} rows per CPU s / engine best pass'])})",
                ]
            )
    if (f := fig("datasets")) and "dataset / engine CPU per batch, worst" in f:
        rows.append(
            [
                "dataset mode: dataset work / engine work per batch, worst size and format",
                _pct(f["dataset / engine CPU per batch, worst"]),
            ]
        )
    if (f := fig("packing")) and "pack_sizes" in f:
        for size, p in f["pack_sizes"].items():
            rows.append(
                [f"packing {size}: fill (sequential first-fit)", f"{p['fill']:.4f} ({p['sequential_fill']:.4f})"]
            )
    return rows


def _section(name: str, record: Mapping[str, Any] | None, plots: Mapping[str, Path], markdown: Path) -> str:
    title, what, command, render = _SECTIONS[name]
    parts = [f"## {title}"]
    if what:
        parts.append(what)
    if record is None:
        parts.append(f"Not run yet: `python -m bench --only {name}`.")
        return "\n\n".join(parts)
    mode = "quick" if record["quick"] else "full"
    parts.append(
        f"{mode.capitalize()} run, {record['date']}, {record['wall_s']:.0f} s wall, load average "
        f"{record['loadavg_before']:.1f} before and {record['loadavg_after']:.1f} after. "
        f"On its own: `{command}{' --quick' if record['quick'] else ''}`."
    )
    figures = record.get("figures")
    if "error" in record:
        parts.append(f"**Failed:** `{record['error']}`")
    elif isinstance(figures, Mapping) and "skipped" in figures:
        parts.append(f"Skipped: {figures['skipped']}.")
    else:
        try:
            parts.append(render(figures))
        except (KeyError, TypeError, ZeroDivisionError):  # figures from another version of the bench
            parts.append(_generic(figures))
    if name in plots:
        parts.append(f"![{title}]({os.path.relpath(plots[name], markdown.parent)})")
    return "\n\n".join(parts)


def write_markdown(out: Path, markdown: Path, plots: Mapping[str, Path]) -> None:
    """Regenerate ``markdown`` from ``out/*.json`` (the figures of the latest run of each bench)."""
    records = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.stem in _SECTIONS}
    info_path = out / "machine.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else machine()
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    lines = [
        "# feedline benchmarks",
        "",
        "Generated by `python -m bench` from `bench/results/*.json` (`bench/_report.py` writes this file; edit that, "
        "not this). Every comparison is measured side by side in one run, on the real built-in tokenizers and "
        "processors, and reported as a ratio: absolute rates on a shared machine move from run to run, the ratios "
        "much less.",
        "",
        "## Machine and command",
        "",
        f"- Command: `{info.get('command', 'python -m bench')}` (commit {info['commit']}"
        f"{', with uncommitted changes' if info['dirty'] else ''})",
        f"- CPU: {info['cpu']}, **{info['nproc']} cores** (`nproc`), {info['memory_gib']} GiB memory; "
        f"load average {info['loadavg']:.1f} at the start (other jobs share these cores)",
        f"- {info['os']}, Python {info['python']}; {versions}",
        "",
        "## Summary",
        "",
        _table(["comparison", "ratio"], _summary(records)),
    ]
    for name in _SECTIONS:
        lines += ["", _section(name, records.get(name), plots, markdown)]
    markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")
