"""Matrix-product throughput of this CPU in float32 and bf16, at the shapes of the tiny model's GRPO update.

    python bench/matmul_rate.py              # one thread
    python bench/matmul_rate.py --threads 2

Why rlfold's float32 CPU path cannot be much faster than a plain transformers model: the products of an update
already run at this rate, in both libraries (docs/speed.md). Shapes are (rows, inner, columns) of
128 rows x 39 positions = 5000 tokens through the 128-wide hidden and 384-wide MLP layers, plus one weight
gradient (inner = tokens) and one decode step (128 rows).
"""

from __future__ import annotations

import argparse
import time

import torch

SHAPES = [(5000, 128, 384), (5000, 384, 128), (128, 5000, 384), (5000, 128, 128), (128, 128, 384)]


def rate(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of ``[m, k] @ [k, n]`` in ``dtype``: the mean of ``repeats`` products after one warm-up."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), GFLOP/s")
    print(f"{'shape (m, k, n)':>20} {'float32':>9} {'bfloat16':>9} {'ratio':>6}")
    for shape in SHAPES:
        f32, b16 = rate(*shape, torch.float32, args.repeats), rate(*shape, torch.bfloat16, args.repeats)
        print(f"{str(shape):>20} {f32:>9.1f} {b16:>9.1f} {b16 / f32:>6.1f}")


if __name__ == "__main__":
    main()
