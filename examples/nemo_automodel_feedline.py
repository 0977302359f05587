"""NeMo AutoModel with feedline as its collator: the recipe's dataloader config points at the service.

    feedline serve &
    FEEDLINE_ENDPOINT=localhost:50051 python examples/nemo_automodel_feedline.py --steps 4

`nemo_automodel_sft.yaml` holds the `dataset` and `dataloader` sections of an llm_finetune recipe config. NeMo
resolves them as it does for any recipe (`RecipeConfig(...).dataloader`, then `DataloaderConfig.build` with
the recipe's tokenizer and data-parallel rank): its StatefulDataLoader and DistributedSampler do the
sampling, and `FeedlineCollator` sends each batch of rows to feedline, which renders, labels and pads them
exactly as NeMo's own `format_chat_template` and `default_collater` would (`label_policy: nemo`: shifted
labels, NeMo's pad id). The loop here is a few steps of what the recipe's train step does with a batch:
logits, NeMo's `MaskedCrossEntropy` summed over supervised tokens, divided by their number.

NeMo AutoModel 0.7.0 cannot be installed with its dependencies next to a CPU torch: it pins
`quack-kernels==0.6.4`, which pulls `nvidia-cutlass-dsl` (CUDA libraries), `transformers==5.18.0` and
`protobuf` 6; this example needs only `pip install --no-deps nemo-automodel==0.7.0 torchdata`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from tiny_model import chat_rows, tiny_causal_lm

from feedline.client import RemoteCollate

CONFIG = Path(__file__).with_name("nemo_automodel_sft.yaml")


class FeedlineCollator(RemoteCollate):
    """RemoteCollate under NeMo's collator contract: NeMo builds a collator class once, passing the recipe's
    tokenizer as a keyword. The service tokenizes with its own copy of that tokenizer, so it is only kept."""

    def __init__(self, tokenizer: Any = None, *, endpoints: str, processor: str = "qwen2.5", **options: Any) -> None:
        super().__init__(endpoints, processor, **options)
        self.recipe_tokenizer = tokenizer


def chat_dataset(num_rows: int = 32) -> list[dict[str, Any]]:
    """The dataset target of the config: raw rows, nothing tokenized (feedline does that per batch)."""
    return chat_rows(num_rows)


def build_dataloader(config: Path = CONFIG, tokenizer: Any = None, dp_rank: int = 0, dp_world_size: int = 1) -> Any:
    """The training dataloader exactly as NeMo's recipe builds it from the config."""
    from nemo_automodel.components.config.loader import load_yaml_config
    from nemo_automodel.recipes._typed_config import RecipeConfig

    loader_config = RecipeConfig(load_yaml_config(str(config))).dataloader
    return loader_config.build(tokenizer=tokenizer, dp_rank=dp_rank, dp_world_size=dp_world_size)


def nemo_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """NeMo's train-step loss: MaskedCrossEntropy summed over the (already shifted) labels, per label token."""
    from nemo_automodel.components.loss.masked_ce import MaskedCrossEntropy

    labels = batch["labels"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return MaskedCrossEntropy(reduction="sum")(logits, labels) / (labels != -100).sum()


def train(steps: int, tokenizer: Any = None, seed: int = 0) -> tuple[list[float], dict[str, torch.Tensor]]:
    """``steps`` training steps; returns each step's loss and the first batch."""
    model = tiny_causal_lm(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses: list[float] = []
    first: dict[str, torch.Tensor] = {}
    for batch in build_dataloader(tokenizer=tokenizer):
        first = first or {k: v.clone() for k, v in batch.items()}
        loss = nemo_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if len(losses) == steps:
            break
    return losses, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    losses, _ = train(args.steps)
    print(" ".join(f"{loss:.3f}" for loss in losses))


if __name__ == "__main__":
    main()
