"""`feedline collate` and `feedline mask` on real files: per-row errors never lose the other rows."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from feedline.proto import IGNORE_INDEX
from feedline.service._cli_offline import add_offline_commands


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="feedline")
    add_offline_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def test_collate_writes_one_line_per_row_and_reports_bad_rows(tmp_path: Path, qwen_processor, capsys) -> None:
    rows = [_chat("hi", "hello"), {"messages": [{"role": "wizard", "content": "x"}]}, _chat("2+2?", "4")]
    src = tmp_path / "rows.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code = _run(["collate", "--processor", "qwen2.5", "--input", str(src), "--output", str(out), "--no-progress"])
    assert code == 1  # some rows failed
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert records[1]["error"]["field"] == "messages[0].role" and records[1]["error"]["sample"] == 1
    assert records[3]["error"]["sample"] == 3
    ok = records[2]
    assert ok["label_strategy"] == "turn_markers"
    assert len(ok["input_ids"]) == len(ok["labels"]) == len(ok["attention_mask"])
    supervised = [label for label in ok["labels"] if label != IGNORE_INDEX]
    assert len(supervised) == ok["num_label_tokens"]
    assert qwen_processor.tokenizer.decode(supervised) == "4<|im_end|>"
    assert "2 errors" in capsys.readouterr().err


def test_collate_loss_mask_format(tmp_path: Path) -> None:
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps(_chat("hi", "hello")) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert (
        _run(["collate", "--input", str(src), "--output", str(out), "--label-format", "loss_mask", "--no-progress"])
        == 0
    )
    record = json.loads(out.read_text())
    assert "labels" not in record and sum(record["loss_mask"]) == record["num_label_tokens"] > 0


def test_mask_marks_supervised_spans(tmp_path: Path, capsys) -> None:
    src = tmp_path / "conv.json"
    src.write_text(json.dumps(_chat("Name a colour", "Blue")), encoding="utf-8")
    assert _run(["mask", "--input", str(src), "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "[[Blue<|im_end|>]]" in out
    assert "strategy: turn_markers" in out and "supervised tokens: 2" in out


def test_mask_json_counts_match_collate(tmp_path: Path, qwen_processor, capsys) -> None:
    from feedline.service import CollateOptions, collate

    row = _chat("q " * 40, "answer " * 30)
    src = tmp_path / "conv.json"
    src.write_text(json.dumps(row), encoding="utf-8")
    assert _run(["mask", "--input", str(src), "--json", "--max-length", "90", "--truncation", "right"]) == 0
    report = json.loads(capsys.readouterr().out)
    batch = collate(qwen_processor, [row], CollateOptions(max_length=90, truncation="right"))
    assert report["num_label_tokens"] == batch.reports[0].num_label_tokens
    assert sum(t["supervised"] for t in report["tokens"]) == report["num_label_tokens"]
    assert sum(t["kind"] == "truncated" for t in report["tokens"]) > 0
    assert any("truncation cuts" in w for w in report["warnings"])


def test_collate_label_format_follows_the_label_policy(tmp_path: Path) -> None:
    """No --label-format: HF's unshifted labels by default, NeMo's shifted ones with --label-policy nemo."""
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps(_chat("Name a colour", "Blue")) + "\n", encoding="utf-8")
    records = {}
    for policy in ("assistant", "nemo"):
        out = tmp_path / f"{policy}.jsonl"
        assert (
            _run(["collate", "--input", str(src), "--output", str(out), "--label-policy", policy, "--no-progress"]) == 0
        )
        records[policy] = json.loads(out.read_text())
    hf, nemo = records["assistant"], records["nemo"]
    hf_targets = [label for label in hf["labels"] if label != IGNORE_INDEX]
    assert [t for t, label in zip(hf["input_ids"], hf["labels"], strict=True) if label != IGNORE_INDEX] == hf_targets
    assert nemo["input_ids"] == hf["input_ids"][:-1]  # shifted: cut by one, labels[t] is input t+1's token
    nemo_targets = [label for label in nemo["labels"] if label != IGNORE_INDEX]
    assert [hf["input_ids"][t + 1] for t, label in enumerate(nemo["labels"]) if label != IGNORE_INDEX] == nemo_targets
