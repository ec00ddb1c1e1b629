"""Throughput of the data path: batched augmentation (pad-4 crop + flip + normalise) over CIFAR-10 train.

Run: LAKD_DATA=../shared/data python benchmarks/bench_loader.py [--threads 2] [--batch-size 128] [--epochs 3]
Prints one JSON line per epoch and a summary; with --out, writes the summary JSON there.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from lakd.data import Batching, BatchLoader, load_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    splits = load_splits(args.dataset, args.data_root, synthetic_size=50000)
    load_s = time.perf_counter() - start
    loader = BatchLoader(splits.train, Batching(args.batch_size, splits.mean, splits.std, shuffle=True, augment=True,
                         drop_last=True))
    rates = []
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        t = time.perf_counter()
        n = 0
        for x, _ in loader:
            n += x.shape[0]
        rate = n / (time.perf_counter() - t)
        rates.append(rate)
        print(json.dumps({"epoch": epoch, "images": n, "img_per_s": round(rate)}))
    summary = {"benchmark": "loader", "dataset": args.dataset, "train_images": len(splits.train),
               "batch_size": args.batch_size, "threads": args.threads, "load_s": round(load_s, 2),
               "img_per_s_median": round(sorted(rates)[len(rates) // 2]), "torch": torch.__version__,
               "cpu": platform.processor() or platform.machine()}
    print(json.dumps(summary))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
