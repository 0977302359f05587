"""Train with PyTorch Lightning on batches streamed from `feedline serve`.

    feedline serve &
    python examples/lightning_module.py --endpoint localhost:50051 --steps 8

The LightningModule's `train_dataloader` returns a RemoteLoader; `training_step` is `model(**batch).loss`
(labels in the HF convention, `unshifted`, the default). Lightning only wraps `DataLoader` objects in a
DistributedSampler, so under DDP give the loader `rank=trainer.global_rank` and
`world_size=trainer.world_size` yourself (see ddp_loop.py).
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning as L
import torch
from tiny_model import chat_rows, recording_loader, tiny_causal_lm

from feedline.client import RemoteLoader


class FeedlineLM(L.LightningModule):
    """A causal LM trained on feedline batches; records each step's loss."""

    def __init__(self, loader: RemoteLoader, seed: int = 0) -> None:
        super().__init__()
        self.model = tiny_causal_lm(seed)
        self.loader = loader
        self.step_losses: list[float] = []

    def train_dataloader(self) -> RemoteLoader:
        return self.loader

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.step_losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def train(
    endpoint: str, steps: int, rows: list[dict[str, Any]] | None = None, seed: int = 0
) -> tuple[list[float], list[int]]:
    """Train ``steps`` steps; returns each step's loss and the sample indices of the first batch."""
    rows = rows or chat_rows()
    loader, firsts = recording_loader(endpoint, rows, seed)
    module = FeedlineLM(loader, seed)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    loader.close()
    return module.step_losses, firsts[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default="localhost:50051")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    losses, _ = train(args.endpoint, args.steps)
    print(" ".join(f"{loss:.3f}" for loss in losses))


if __name__ == "__main__":
    main()
