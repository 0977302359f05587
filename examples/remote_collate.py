"""Keep your DataLoader and move only the collation to feedline: swap `collate_fn` for RemoteCollate.

python examples/remote_collate.py --endpoint localhost:50051
"""

from __future__ import annotations

import argparse

from torch.utils.data import DataLoader

from feedline.client import RemoteCollate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default="localhost:50051")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    dataset = [
        {
            "messages": [
                {"role": "user", "content": f"Count to {i}."},
                {"role": "assistant", "content": " ".join(map(str, range(1, i + 1)))},
            ]
        }
        for i in range(1, 33)
    ]
    # Before: DataLoader(dataset, batch_size=8, collate_fn=my_local_tokenize_and_pad)
    loader = DataLoader(
        dataset,
        batch_size=8,
        shuffle=True,
        num_workers=args.workers,
        collate_fn=RemoteCollate(args.endpoint, "qwen2.5", max_length=512, truncation="right"),
    )
    for step, batch in enumerate(loader):
        supervised = int((batch["labels"] != -100).sum())
        print(f"batch {step}: input_ids {tuple(batch['input_ids'].shape)}, supervised tokens {supervised}")


if __name__ == "__main__":
    main()
