"""Train a tiny causal LM for a few steps on batches streamed from `feedline serve`.

    feedline serve &                      # or: bash scripts/serve.sh
    python examples/train_tiny_lm.py --endpoint localhost:50051 --steps 30

This hand-written model computes its loss with no shift of its own, so it asks for `label_format="shifted"`
(NeMo's convention): labels[t] is the target of the logits at input_ids[t], and the loss is a plain
cross-entropy over the positions that are not IGNORE_INDEX. (An HF model shifts by itself and takes the
default, `unshifted`: see hf_trainer.py.)
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from feedline.client import RemoteLoader

IGNORE_INDEX = -100


class TinyLM(nn.Module):
    """Embedding, one causal self-attention block, tied output projection."""

    def __init__(self, vocab: int, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.block = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=4 * dim, batch_first=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """Logits at the positions ``at`` only (the supervised ones: a 150k-word head is costly on a CPU)."""
        n = input_ids.shape[1]
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        hidden = self.block(self.embed(input_ids), src_mask=causal, src_key_padding_mask=attention_mask == 0)
        return hidden[at] @ self.embed.weight.T


def rows() -> list[dict]:
    facts = [
        ("What is the capital of France?", "Paris."),
        ("What colour is the sky?", "Blue."),
        ("How many legs does a spider have?", "Eight."),
        ("What is 2 + 2?", "Four."),
    ]
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in facts] * 4


def train(endpoint: str, steps: int, processor: str = "qwen2.5", vocab: int = 151_665) -> list[float]:
    torch.manual_seed(0)
    model = TinyLM(vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses: list[float] = []
    while len(losses) < steps:
        for batch in RemoteLoader(endpoint, processor, samples=rows(), batch_size=8, label_format="shifted"):
            supervised = batch["labels"] != IGNORE_INDEX  # labels[t] is the target of the logits at input_ids[t]
            logits = model(batch["input_ids"], batch["attention_mask"], supervised)
            loss = nn.functional.cross_entropy(logits, batch["labels"][supervised])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) >= steps:
                break
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default="localhost:50051")
    parser.add_argument("--processor", default="qwen2.5")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    losses = train(args.endpoint, args.steps, args.processor)
    for step, loss in enumerate(losses):
        print(f"step {step:3d}  loss {loss:.4f}")
    print(f"first {losses[0]:.3f} -> last {losses[-1]:.3f}")


if __name__ == "__main__":
    main()
