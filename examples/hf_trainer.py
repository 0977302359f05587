"""Train with the Hugging Face `Trainer` on batches streamed from `feedline serve`.

    feedline serve &
    python examples/hf_trainer.py --endpoint localhost:50051 --steps 8

Two ways, both shown here:
- `RemoteLoader` behind `get_train_dataloader` (recommended): the Trainer iterates feedline's batches as they
  come (tokenized, labelled and padded on the service), calls `set_epoch` on it each epoch, and uses
  `len(loader)` for its schedule. The Trainer never sees the raw rows, so `remove_unused_columns` cannot drop
  `messages`.
- `RemoteCollate` as `data_collator`: the Trainer samples rows and the service collates them. The Trainer
  drops every dataset column its model's `forward` does not name, `messages` included, so this needs
  `remove_unused_columns=False` (without it the collator receives empty rows).

Labels arrive in the HF convention (`unshifted`, the default): the model shifts them itself, so
`model(**batch).loss` is right with no label options.
"""

from __future__ import annotations

import argparse
from typing import Any

from tiny_model import chat_rows, recording_loader, tiny_causal_lm
from transformers import Trainer, TrainingArguments

from feedline.client import RemoteCollate, RemoteLoader


class FeedlineTrainer(Trainer):
    """A Trainer whose training batches come from a RemoteLoader."""

    def __init__(self, *args: Any, feedline_loader: RemoteLoader, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feedline_loader = feedline_loader

    def get_train_dataloader(self) -> RemoteLoader:
        return self.feedline_loader


class _StepLosses(Trainer):
    """Records the loss of every step as the Trainer computes it (for the example's printout and its test)."""

    losses: list[float]

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        self.losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
        return loss


class RecordingFeedlineTrainer(FeedlineTrainer, _StepLosses):
    pass


class RecordingTrainer(_StepLosses):
    pass


def _args(out: str, steps: int, batch_size: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # keep `messages` for RemoteCollate (RemoteLoader does not need it)
    )


def train_with_loader(
    endpoint: str, steps: int, out: str, rows: list[dict[str, Any]] | None = None, seed: int = 0
) -> tuple[list[float], list[int]]:
    """Train ``steps`` steps; returns each step's loss and the sample indices of the first batch."""
    rows = rows or chat_rows()
    loader, firsts = recording_loader(endpoint, rows, seed)
    trainer = RecordingFeedlineTrainer(
        model=tiny_causal_lm(seed), args=_args(out, steps, 4), train_dataset=rows, feedline_loader=loader
    )
    trainer.losses = []
    trainer.train()
    loader.close()
    return trainer.losses, firsts[0]


class _FirstRows:
    """A collate_fn that remembers the rows of its first batch (to check them in the test) and delegates."""

    def __init__(self, collate_fn: Any) -> None:
        self.collate_fn = collate_fn
        self.first: list[dict[str, Any]] | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> Any:
        self.first = list(rows) if self.first is None else self.first
        return self.collate_fn(rows)


def train_with_collate(
    endpoint: str, steps: int, out: str, rows: list[dict[str, Any]] | None = None, seed: int = 0
) -> tuple[list[float], list[dict[str, Any]]]:
    """The same with the Trainer's own sampler and RemoteCollate as its data_collator; returns each step's loss
    and the rows of the first batch as the collator received them."""
    rows = rows or chat_rows()
    collator = _FirstRows(RemoteCollate(endpoint, "qwen2.5"))
    trainer = RecordingTrainer(
        model=tiny_causal_lm(seed), args=_args(out, steps, 4), train_dataset=rows, data_collator=collator
    )
    trainer.losses = []
    trainer.train()
    assert collator.first is not None
    return trainer.losses, collator.first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default="localhost:50051")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--output-dir", default="hf_trainer_out")
    args = parser.parse_args()
    losses, _ = train_with_loader(args.endpoint, args.steps, args.output_dir)
    print("RemoteLoader:  " + " ".join(f"{loss:.3f}" for loss in losses))
    losses, _ = train_with_collate(args.endpoint, args.steps, args.output_dir)
    print("RemoteCollate: " + " ".join(f"{loss:.3f}" for loss in losses))


if __name__ == "__main__":
    main()
