"""Train with TRL's `SFTTrainer` on batches streamed from `feedline serve`.

    feedline serve &
    python examples/trl_sft.py --endpoint localhost:50051 --steps 8

feedline does what SFTTrainer's dataset preparation and collator would do (chat template, assistant-only
labels, padding), so the trainer is told to skip its own: `dataset_kwargs={"skip_prepare_dataset": True}`
and `remove_unused_columns=False`, and its training batches come from a RemoteLoader behind
`get_train_dataloader`. Labels are in the HF convention (`unshifted`, the default), which SFTTrainer's loss
and its token-accuracy metric expect. SFTTrainer still wants the tokenizer (`processing_class`) for its
bookkeeping and for saving; it is the one the service serves.
"""

from __future__ import annotations

import argparse
from typing import Any

from datasets import Dataset
from tiny_model import chat_rows, recording_loader, tiny_causal_lm
from trl import SFTConfig, SFTTrainer

from feedline.client import RemoteLoader


class FeedlineSFTTrainer(SFTTrainer):
    """SFTTrainer whose training batches come from a RemoteLoader; records each step's loss."""

    def __init__(self, *args: Any, feedline_loader: RemoteLoader, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feedline_loader = feedline_loader
        self.step_losses: list[float] = []

    def get_train_dataloader(self) -> RemoteLoader:
        return self.feedline_loader

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        self.step_losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
        return loss


def train(
    endpoint: str, steps: int, out: str, tokenizer: Any, rows: list[dict[str, Any]] | None = None, seed: int = 0
) -> tuple[list[float], list[int]]:
    """Train ``steps`` steps; returns each step's loss and the sample indices of the first batch."""
    rows = rows or chat_rows()
    loader, firsts = recording_loader(endpoint, rows, seed)
    config = SFTConfig(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},  # feedline tokenizes, labels and pads
    )
    trainer = FeedlineSFTTrainer(
        model=tiny_causal_lm(seed),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        feedline_loader=loader,
    )
    trainer.train()
    loader.close()
    return trainer.step_losses, firsts[0]


def main() -> None:
    from feedline.service import load_processor  # the service install: the tokenizer the server uses

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default="localhost:50051")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--output-dir", default="trl_sft_out")
    args = parser.parse_args()
    tokenizer = load_processor("qwen2.5", "qwen2.5").tokenizer
    losses, _ = train(args.endpoint, args.steps, args.output_dir, tokenizer)
    print(" ".join(f"{loss:.3f}" for loss in losses))


if __name__ == "__main__":
    main()
