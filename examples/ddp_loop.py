"""A plain PyTorch training loop under DistributedDataParallel, fed by feedline (CPU, gloo backend).

    feedline serve &
    python examples/ddp_loop.py --endpoint localhost:50051 --world-size 2 --out ddp_out

Each rank builds its own RemoteLoader with `rank` and `world_size`: the loader shards the samples the way a
DistributedSampler does (one seeded order per epoch, every sample once across ranks, the same number of
batches on every rank) and `set_epoch(epoch)` reshuffles. Under torchrun, take the two from
`torch.distributed.get_rank()` and `get_world_size()`. Each rank writes what it trained on to
`<out>/rank<N>.json` (losses and the sample indices of every batch).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_model import chat_rows, tiny_causal_lm
from torch.nn.parallel import DistributedDataParallel

from feedline.client import RemoteLoader


def run_rank(rank: int, world_size: int, endpoint: str, epochs: int, out: str, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = DistributedDataParallel(tiny_causal_lm(seed=0))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        batches: list[list[int]] = []
        loader = RemoteLoader(
            endpoint,
            "qwen2.5",
            samples=chat_rows(),
            batch_size=4,
            seed=0,
            rank=rank,
            world_size=world_size,
            on_report=lambda report: batches.append([s["row"] for s in report.samples]),
        )
        losses: list[float] = []
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for batch in loader:
                loss = model(**batch).loss  # labels unshifted (the default): the model shifts them
                optimizer.zero_grad()
                loss.backward()  # DDP averages the gradients across ranks
                optimizer.step()
                losses.append(float(loss.detach()))
        loader.close()
        record: dict[str, Any] = {"rank": rank, "losses": losses, "batches": batches, "per_epoch": len(loader)}
        Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default="localhost:50051")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default="ddp_out")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    init_file = str(Path(args.out, "rendezvous").resolve())
    if os.path.exists(init_file):
        os.unlink(init_file)
    mp.spawn(
        run_rank,
        args=(args.world_size, args.endpoint, args.epochs, args.out, init_file),
        nprocs=args.world_size,
        join=True,
    )
    for rank in range(args.world_size):
        record = json.loads(Path(args.out, f"rank{rank}.json").read_text())
        print(f"rank {rank}: " + " ".join(f"{loss:.3f}" for loss in record["losses"]))


if __name__ == "__main__":
    main()
