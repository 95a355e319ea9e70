"""Decode tokens/s of the rollout engines on one model, measured as interleaved pairs in one process.

    python bench/engines.py                                   # hf vs vllm, shipped tiny model, 32 tokens
    python bench/engines.py --engines hf vllm --model DIR --lengths 32 128 --prompts 64 --n 8 --reps 3

Needs vLLM for the vllm engine (``bash scripts/test_vllm_cpu.sh`` builds a venv with it; run this with
``.venv-vllm/bin/python``). Rows are sampled past eos (``ignore_eos``) at temperature 1, so every row has
exactly the token limit and both engines do the same work. Each repetition times every engine once, in
turn; the figures are medians over repetitions after one warm-up call per engine, and the ratio is
taken against the first engine named.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from entry import run_main  # the sibling bench script (this directory is on sys.path)
from rlfold.core.registry import ENGINES
from rlfold.models.loading import load_model_and_tokenizer
from rlfold.rollout import EngineContext, SamplingParams, requests_for
from rlfold.tasks import TASKS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", nargs="+", default=["hf", "vllm"])
    ap.add_argument("--model", default="tiny-arith")
    ap.add_argument("--lengths", type=int, nargs="+", default=[32])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model_and_tokenizer(args.model, torch.float32)
    ctx = EngineContext(model=model, tokenizer=tok, model_path=args.model, dtype=torch.float32)
    engines = {name: ENGINES.get(name)(ctx) for name in args.engines}
    prompts = TASKS.get("arith")(held_out_size=8).train[: args.prompts]
    reqs = requests_for(prompts)
    print(f"model {args.model}, {len(reqs)} prompts x {args.n} samples, torch threads {torch.get_num_threads()}")
    print(f"{'new tokens':>10} " + " ".join(f"{n + ' tok/s':>14}" for n in args.engines)
          + " " + " ".join(f"{n + '/' + args.engines[0]:>14}" for n in args.engines[1:]))
    for length in args.lengths:
        params = SamplingParams(temperature=1.0, max_new_tokens=length, n=args.n, ignore_eos=True)
        for e in engines.values():
            e.generate(reqs, params, 0)  # warm-up
        rates: dict[str, list[float]] = {n: [] for n in engines}
        for rep in range(args.reps):
            for name, e in engines.items():
                t0 = time.perf_counter()
                batch = e.generate(reqs, params, rep + 1)
                rates[name].append(float(batch.response_mask.sum()) / (time.perf_counter() - t0))
        med = {n: statistics.median(r) for n, r in rates.items()}
        first = med[args.engines[0]]
        print(f"{length:>10} " + " ".join(f"{med[n]:>14.0f}" for n in args.engines)
              + " " + " ".join(f"{med[n] / first:>14.2f}" for n in args.engines[1:]))


if __name__ == "__main__":
    run_main(main)
