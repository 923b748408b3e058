"""HFEngine.generate on a GRPO-shaped batch, on the main thread and in a worker thread.

    python bench/bench_generate.py [--threads 2] [--prompts 16] [--group 8] [--tokens 128]

The agent loop's TurnBatcher calls the engine from a worker thread; this times the same call
both ways (tiny model, the real chat template with its tool prompt, G samples per prompt,
no stop tokens so every row decodes `--tokens` tokens). Prints wall and process CPU seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()

    from aster.backend import select_backend
    from aster.config import load_config
    from aster.rollout.chat import encode_prompt, prompt_messages
    from aster.rollout.engine import SamplingParams
    from aster.rollout.hf_engine import HFEngine
    from aster.tiny_model import build_tiny_model, load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    cfg = load_config("tiny", [])
    model_dir = build_tiny_model(tempfile.mkdtemp(prefix="aster-bench-gen-") + "/m",
                                 cfg.model.tiny, seed=0)
    # the engine's model as the trainer loads it (the CPU backend's decode attention)
    attn = select_backend("cpu").attn_implementation()
    model, tokenizer = load_model_and_tokenizer(model_dir, attn_implementation=attn)
    engine = HFEngine(model, max_batch_size=cfg.rollout.max_concurrency)
    prompts = [encode_prompt(tokenizer, prompt_messages(f"What is {i} * {3 * i + 7} + {i * i}?"))
               for i in range(args.prompts) for _ in range(args.group)]
    params = [SamplingParams(max_new_tokens=args.tokens, temperature=1.0, seed=i)
              for i in range(len(prompts))]
    engine.generate(prompts[:args.group], params[:args.group])  # warm-up
    worker = ThreadPoolExecutor(max_workers=1)
    print(f"{len(prompts)} requests, prompt tokens {min(map(len, prompts))}-"
          f"{max(map(len, prompts))}, {args.tokens} new tokens each, torch threads "
          f"{args.threads}")
    for rep in range(args.reps):
        for where in ("main", "worker"):
            wall, cpu = time.perf_counter(), time.process_time()
            if where == "main":
                engine.generate(prompts, params)
            else:
                worker.submit(engine.generate, prompts, params).result()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"rep {rep} {where:6s}: {wall:6.2f} s wall, {cpu:6.2f} s CPU")


if __name__ == "__main__":
    main()
