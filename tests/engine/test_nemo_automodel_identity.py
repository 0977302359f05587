"""label_policy="nemo" against NeMo AutoModel itself: its ChatDataset reads the same rows from a JSONL file.

NeMo AutoModel 0.7 is installed by scripts/test.sh (with --no-deps: its pins pull CUDA kernels), so this runs in
every suite. Rows come from the family strategies (multi-turn, system, tools with dict arguments holding
non-ASCII text, tool results, unicode); every row NeMo accepts must give byte-identical input_ids and labels.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from feedline.service import CollateOptions, collate, load_processor
from tests.support.chat_formats.survey import sample_rows

NEMO = CollateOptions.from_mapping({"label_policy": "nemo"})


def _has_non_ascii_dict_arguments(row: dict[str, Any]) -> bool:
    """A tool call whose arguments are an object holding non-ASCII text (json.dumps defaults escape it)."""
    calls = [c for m in row["messages"] for c in m.get("tool_calls") or ()]
    return any(
        isinstance(c["function"]["arguments"], dict)
        and not json.dumps(c["function"]["arguments"], ensure_ascii=False).isascii()
        for c in calls
    )


@pytest.mark.parametrize(
    ("family", "builtin"),
    [("chatml_qwen2_5", "qwen2.5"), ("mistral_nemo", "mistral-nemo"), ("mistral_v3", "mistral-7b-v3")],
)
def test_nemo_policy_is_byte_identical_to_nemo_automodels_chat_dataset(
    family: str, builtin: str, tmp_path: Path
) -> None:
    from nemo_automodel.components.datasets.llm.chat_dataset import ChatDataset

    rows = sample_rows(family, 40)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    processor = load_processor(builtin, builtin)
    nemo = ChatDataset(str(path), copy.deepcopy(processor.tokenizer))
    compared = []
    for i, row in enumerate(rows):
        try:
            want = nemo[i]
        except Exception:  # noqa: BLE001 - NeMo refuses the row (its template raised): nothing to compare
            continue
        got = collate(processor, [row], NEMO).tensors
        for key in ("input_ids", "labels"):
            np.testing.assert_array_equal(got[key][0], np.asarray(want[key]), err_msg=f"row {i} {key}")
        compared.append(row)
    assert len(compared) >= len(rows) // 2, f"NeMo accepted only {len(compared)} of {len(rows)} rows"
    assert any(_has_non_ascii_dict_arguments(r) for r in compared), "no row with non-ASCII tool arguments compared"
