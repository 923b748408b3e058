"""Evaluation split over ranks: 2 gloo ranks return the samples and scores one rank does, each
rank having generated half of the problems x samples."""

from __future__ import annotations

import json
import os

import pytest

from aster.backend import DistInfo
from aster.eval import EvalConfig, evaluate
from aster.eval_split import rank_share
from aster.rollout.engine import Engine, GenerationOutput
from tests.train.ranks import fork_ranks, free_port

BENCHMARKS = {"a": [{"problem": f"What is {i} mod 3?", "answer": str(i % 3)} for i in range(5)],
              "b": [{"problem": f"Pick {i}.", "answer": "1"} for i in range(3)]}
CFG = EvalConfig(k=4, pass_k=[1, 4], max_tokens=64, seed=7)


class SeededEngine(Engine):
    """Answers as a function of the request's seed alone (a stand-in for sampling that is
    reproducible per request, as vLLM's per-request seeds are); counts what it generated."""

    name = "seeded"

    def __init__(self, tokenizer):
        self.tokenizer, self.generated = tokenizer, 0

    def generate(self, prompts, params):
        params = self._per_request(params, len(prompts))
        self.generated += len(prompts)
        out = []
        for p in params:
            text = f"<think>\nguess\n</think>\n\n\\boxed{{{p.seed % 3}}}"
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            ids.append(self.tokenizer.eos_token_id)
            out.append(GenerationOutput(ids, [-0.1] * len(ids), "stop"))
        return out

    def load_weights(self, weights) -> None:
        raise NotImplementedError


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from aster.tiny_model import build_tiny_model

    return AutoTokenizer.from_pretrained(build_tiny_model(tmp_path_factory.mktemp("tiny")))


def _rank_main(rank, world, port, out_dir, tokenizer):
    import torch.distributed as tdist

    code = 1
    try:
        tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                 world_size=world)
        engine = SeededEngine(tokenizer)
        summary, rows = evaluate(engine, None, BENCHMARKS, CFG, tokenizer,
                                 dist=DistInfo(rank=rank, local_rank=rank, world_size=world))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump({"summary": summary, "rows": rows, "generated": engine.generated}, fh)
        tdist.destroy_process_group()
        code = 0
    finally:
        os._exit(code)


def test_two_ranks_give_one_rank_s_samples_and_scores_each_generating_half(tmp_path, tokenizer):
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # forked below
    engine = SeededEngine(tokenizer)
    summary, rows = evaluate(engine, None, BENCHMARKS, CFG, tokenizer)
    total = sum(len(p) for p in BENCHMARKS.values()) * CFG.k
    assert engine.generated == total == len(rows)
    assert 0 < summary["accuracy"] < 1  # the seeds differ per sample: a real mix of scores

    assert fork_ranks(_rank_main, 2, free_port(), str(tmp_path), tokenizer) == 0
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["rows"] == rows and ranks[1]["rows"] == []
    assert ranks[0]["summary"] == ranks[1]["summary"] == summary
    assert [r["generated"] for r in ranks] == [total // 2, total // 2]


def test_the_shares_cover_every_pair_once():
    shares = [rank_share(5, 3, r, 4) for r in range(4)]
    flat = sorted(p for share in shares for p in share)
    assert flat == [(i, s) for i in range(5) for s in range(3)]
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
