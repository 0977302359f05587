"""The trainer integrations in examples/ run against a real feedline gRPC server, each on a tiny real model class.

Each checks the first step's loss, as the trainer computed it, against the loss of the same rows collated
locally in that trainer's own convention (HF's unshifted labels through feedline's engine with no server; for
NeMo AutoModel, NeMo's own format_chat_template and default_collater), on a model with the same initial
weights: a wrong default label format, a dropped column or a re-collated batch makes them differ.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from feedline.service import CollateOptions, Processor, collate
from feedline.service.server import Limits, ProcessorRegistry, ServingState

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def endpoint(qwen_processor: Processor, in_process: Any) -> str:
    """A real gRPC server on a loopback port, serving the built-in Qwen2.5 tokenizer (the trainers, and the DDP
    example's two ranks, reach it over the network like any client)."""
    return str(in_process(ServingState(ProcessorRegistry.of(qwen_processor), limits=Limits())).grpc_target)


def _example(name: str) -> ModuleType:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))  # the examples import their shared tiny_model module
    spec = importlib.util.spec_from_file_location(f"feedline_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows() -> list[dict[str, Any]]:
    return _example("tiny_model").chat_rows()


def hf_reference_loss(processor: Processor, rows: list[dict[str, Any]], seed: int = 0) -> float:
    """HF's convention: unshifted labels, the model shifts and averages over supervised tokens."""
    batch = collate(processor, rows, CollateOptions(label_format="unshifted")).tensors
    model = _example("tiny_model").tiny_causal_lm(seed)
    with torch.no_grad():
        return float(model(**{k: torch.from_numpy(v) for k, v in batch.items()}).loss)


def test_hf_trainer_with_remote_loader(endpoint: str, qwen_processor: Processor, tmp_path: Path) -> None:
    losses, first = _example("hf_trainer").train_with_loader(endpoint, 3, str(tmp_path))
    assert len(losses) == 3 and len(first) == 4
    rows = _rows()
    assert losses[0] == pytest.approx(hf_reference_loss(qwen_processor, [rows[i] for i in first]), rel=1e-5)


def test_hf_trainer_with_remote_collate_keeps_messages(
    endpoint: str, qwen_processor: Processor, tmp_path: Path
) -> None:
    losses, first_rows = _example("hf_trainer").train_with_collate(endpoint, 2, str(tmp_path))
    assert len(losses) == 2 and len(first_rows) == 4
    assert all(set(row) == {"messages"} for row in first_rows)  # the column survived remove_unused_columns
    assert losses[0] == pytest.approx(hf_reference_loss(qwen_processor, first_rows), rel=1e-5)


def test_trl_sft_trainer(endpoint: str, qwen_processor: Processor, tmp_path: Path) -> None:
    losses, first = _example("trl_sft").train(endpoint, 3, str(tmp_path), qwen_processor.tokenizer)
    assert len(losses) == 3
    rows = _rows()
    assert losses[0] == pytest.approx(hf_reference_loss(qwen_processor, [rows[i] for i in first]), rel=1e-5)


def test_lightning(endpoint: str, qwen_processor: Processor) -> None:
    losses, first = _example("lightning_module").train(endpoint, 3)
    assert len(losses) == 3
    rows = _rows()
    assert losses[0] == pytest.approx(hf_reference_loss(qwen_processor, [rows[i] for i in first]), rel=1e-5)


def test_ddp_loop_two_gloo_ranks_share_the_epoch(endpoint: str, qwen_processor: Processor, tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "ddp_loop.py"),
            "--endpoint",
            endpoint,
            "--world-size",
            "2",
            "--out",
            str(tmp_path),
        ],
        check=True,
        timeout=600,
        capture_output=True,
    )
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    rows = _rows()
    shards = [[i for batch in rec["batches"] for i in batch] for rec in records]
    assert not set(shards[0]) & set(shards[1])  # disjoint
    assert sorted(shards[0] + shards[1]) == list(range(len(rows)))  # together the whole epoch, once
    assert len(records[0]["batches"]) == len(records[1]["batches"]) == records[0]["per_epoch"]
    for rec in records:  # each rank's first loss is its own batch's, before any update
        first = [rows[i] for i in rec["batches"][0]]
        assert rec["losses"][0] == pytest.approx(hf_reference_loss(qwen_processor, first), rel=1e-5)


def test_nemo_automodel_config_builds_a_feedline_dataloader(
    endpoint: str, qwen_processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # scripts/test.sh installs nemo-automodel with --no-deps (its dependencies pin CUDA kernels): never skipped.
    from nemo_automodel.components.datasets.llm.formatting_utils import format_chat_template
    from nemo_automodel.components.datasets.utils import default_collater

    monkeypatch.setenv("FEEDLINE_ENDPOINT", endpoint)  # the config reads its endpoint from the environment
    example = _example("nemo_automodel_feedline")
    tokenizer = qwen_processor.tokenizer
    losses, first = example.train(3, tokenizer=tokenizer)
    assert len(losses) == 3
    # NeMo's own collation of the same rows (shuffle: false, so the first batch is rows 0-3).
    own = default_collater(
        [
            format_chat_template(tokenizer, row["messages"], tokenizer.eos_token_id, tokenizer.pad_token_id)
            for row in _rows()[:4]
        ]
    )
    width = first["labels"].shape[1]
    assert torch.equal(first["labels"], own["labels"][:, :width])
    assert (own["labels"][:, width:] == -100).all()
    model = _example("tiny_model").tiny_causal_lm(0)
    with torch.no_grad():
        reference = float(example.nemo_loss(model, {k: own[k] for k in ("input_ids", "attention_mask", "labels")}))
    assert losses[0] == pytest.approx(reference, rel=1e-5)
