"""The benchmark suite's own logic (no timings): the tagged template, the report, the CLI's refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.__main__ import BENCHES, main
from bench._corpus import TOOLS
from bench._report import write_markdown
from bench.bench_hf_assistant_mask import generation_template, hf_labels
from feedline.service import IGNORE_INDEX, CollateOptions, Processor, collate

CHATS = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"}]},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "6, of course."},
        ]
    },
]


def test_tagged_template_renders_the_same_text_and_gives_the_engines_labels(qwen_processor: Processor) -> None:
    assert qwen_processor.chat_template is not None
    tagged = generation_template(qwen_processor.chat_template)
    tagged_processor = Processor("qwen2.5", qwen_processor.tokenizer, chat_template=tagged)
    for chat in CHATS:
        assert tagged_processor.renderer.text(chat["messages"]) == qwen_processor.renderer.text(chat["messages"])
    reference = hf_labels(qwen_processor.tokenizer, tagged, CHATS)
    assert (reference["labels"] != IGNORE_INDEX).sum() > 0
    options = CollateOptions.from_mapping({"label_format": "unshifted"})
    with_tools = [{**chat, "tools": TOOLS} for chat in CHATS]  # hf_labels offers the bench's tools to every chat
    for processor in (qwen_processor, tagged_processor):
        tensors = collate(processor, with_tools, options).tensors
        for key, expected in reference.items():
            np.testing.assert_array_equal(tensors[key], expected, err_msg=key)


def test_generation_template_refuses_a_template_it_does_not_know() -> None:
    with pytest.raises(ValueError):
        generation_template("{% for m in messages %}{{ m.content }}{% endfor %}")


def _record(name: str, figures: Any = None, **extra: Any) -> dict[str, Any]:
    record = {
        "name": name,
        "quick": True,
        "command": "python -m bench --quick",
        "date": "today",
        "wall_s": 1.0,
        "loadavg_before": 1.0,
        "loadavg_after": 1.0,
        **extra,
    }
    if figures is not None:
        record["figures"] = figures
    return record


def test_report_has_every_section_and_says_what_failed_or_was_skipped(tmp_path: Path) -> None:
    records = {
        "text": _record(
            "text",
            {
                "rows": 3,
                "tokens": 30,
                "auto encoder": "fast",
                "tokens_per_s": {"raw tokenizer encode": 1e6, "engine, hf encoder": 5e5},
                "ratio over raw encode": {"engine, hf encoder": 0.5},
            },
        ),
        "wire": _record("wire", error="RuntimeError: no server"),
        "multimodal": _record("multimodal", {"skipped": "no run(quick) yet"}),
        "fastpath": _record("fastpath", {"rows": 3, "nested": {"a": 1}, "table": [{"x": 1, "y": 2.5}]}),
        "scaling": _record("scaling", {"unexpected": "shape"}),  # another version's figures: shown generically
    }
    for name, record in records.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    markdown = tmp_path / "BENCHMARKS.md"
    write_markdown(tmp_path, markdown, {})
    text = markdown.read_text()
    assert text.count("\n## ") == 2 + len(BENCHES)  # machine, summary, one per bench
    assert "| text: engine, hf encoder / raw tokenizer encode | **0.50x** |" in text
    assert "**Failed:** `RuntimeError: no server`" in text
    assert "Skipped: no run(quick) yet." in text
    assert "Not run yet: `python -m bench --only client`." in text
    assert "| unexpected | shape |" in text and "| x | y |" in text


def test_unknown_benchmark_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--only", "text,nonsense", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert not list(tmp_path.iterdir())


def _scaling_figures(efficiency: dict[str, float], cores: float) -> dict[str, Any]:
    """Figures in bench_scaling's shape: every configuration at 1,000 rows/s but 2 workers at ``cores`` times
    that, and rows per CPU-second ``efficiency[name]`` times the engine's."""
    from bench.bench_scaling import CONFIGS, EFFICIENCY, PINNED, PINNED_WITH_LOAD

    engine = 1000.0
    rate = {name: 1000.0 for name in (*CONFIGS, "engine")} | {"2 workers": 1000.0 * cores}
    figures: dict[str, Any] = {
        name: {
            "rows_per_s": rate[name],
            "tokens_per_s": rate[name] * 1000,
            "server_cores_used": 1.0,
            "load_cores_used": 0.2,
            "rows_per_server_cpu_s": engine * efficiency.get(name, 1.0),
        }
        for name in (*CONFIGS, "engine")
    }
    figures.update(
        {
            "batch_rows": 16,
            "seconds": 20.0,
            "rounds": 4,
            "cpus": 2,
            "load_streams": 16,
            "load_processes": 2,
            "engine rows per CPU s": engine,
            "engine best pass rows per CPU s": engine * 1.25,
            "ratio 2 workers / 1 worker": cores,
            "ratio 2 replicas / 1 replica": 1.0,
            f"ratio 2 workers / {PINNED}": cores,
            f"ratio 2 workers / {PINNED_WITH_LOAD}": cores,
            "worker target": 0.9,
            "cores target": 1.8,
        }
    )
    for name in EFFICIENCY:
        figures[f"ratio {name} rows per CPU s / engine"] = efficiency[name]
        figures[f"ratio {name} rows per CPU s / engine best pass"] = efficiency[name] / 1.25
    return figures


@pytest.mark.parametrize(
    ("efficiency", "cores", "says"),
    [
        (
            {"1 worker": 0.78, "1 worker on 1 CPU": 0.91, "1 worker, 1 collate thread": 0.88},
            1.95,
            ["met by 1 worker on 1 CPU (**not** by every configuration)", "target 1.8x: met"],
        ),
        (
            {"1 worker": 0.78, "1 worker on 1 CPU": 0.897, "1 worker, 1 collate thread": 0.88},
            1.7,
            ["**not met** (nearest: 1 worker on 1 CPU, 0.897x)", "target 1.8x: **not met**"],
        ),
        (
            {"1 worker": 0.95, "1 worker on 1 CPU": 0.96, "1 worker, 1 collate thread": 0.97},
            1.85,
            ["met by 1 worker, 1 worker on 1 CPU, 1 worker, 1 collate thread.", "target 1.8x: met"],
        ),
    ],
)
def test_scaling_report_states_each_target_against_the_side_by_side_engine(
    tmp_path: Path, efficiency: dict[str, float], cores: float, says: list[str]
) -> None:
    (tmp_path / "scaling.json").write_text(json.dumps(_record("scaling", _scaling_figures(efficiency, cores))))
    markdown = tmp_path / "BENCHMARKS.md"
    write_markdown(tmp_path, markdown, {})
    text = markdown.read_text()
    assert "| unexpected" not in text and "| configuration | rows/s |" in text  # rendered, not shown generically
    for phrase in says:
        assert phrase in text
    assert f"| service throughput: 2 workers / 1 worker and its load on 1 CPU | **{cores:.2f}x** |" in text
    assert "| rows per CPU-second at saturation, 1 worker / in-process engine (its best pass) | **" in text
