"""A teacher run by an aster rollout engine (hf, vllm): aster's own agent loop and sandbox.

Items are rolled out `cfg.concurrency` at a time with `aster.rollout.run_rollouts` (token-in /
token-out, the tool turns rendered by the model's chat template) and each trajectory is turned
back into the SFT internal form by aster.data.trajectory.
"""

from __future__ import annotations

import zlib
from dataclasses import replace

from aster.data.prompts import prompt_messages
from aster.data.synth_result import SynthResult
from aster.data.trajectory import ConversionError, TrajectoryConverter
from aster.rollout.config import RolloutConfig
from aster.rollout.loop import run_rollouts


def teacher_rollout_config(cfg, rollout_cfg=None):
    """The agent-loop settings for synthesis: `rollout_cfg` (tool timeout, output limit) with
    the SynthConfig's sampling, tool-call limit and response budget."""
    return replace(rollout_cfg or RolloutConfig(), temperature=cfg.temperature, top_p=cfg.top_p,
                   top_k=-1, max_tool_calls=cfg.max_tool_calls,
                   max_response_tokens=cfg.max_tokens, max_concurrency=cfg.concurrency)


class EngineTeacher:
    """Runs (prompt, sample) items through `engine` (an aster.rollout Engine) and `pool`."""

    def __init__(self, cfg, engine, tokenizer, pool, rollout_cfg=None):
        self.cfg, self.engine, self.tokenizer, self.pool = cfg, engine, tokenizer, pool
        self.rollout_cfg = teacher_rollout_config(cfg, rollout_cfg)
        self.converter = TrajectoryConverter(tokenizer)

    def _seed(self, chunk: list) -> int:
        # per chunk, from its first key: samples of one prompt in different chunks differ
        prompt, sample = chunk[0]
        return zlib.crc32(f"{self.cfg.seed}:{prompt['problem']}:{sample}".encode())

    def _result(self, item, messages: list[dict], traj):
        prompt, sample = item
        try:
            example = self.converter.example(traj, messages, prompt.get("answer"))
        except ConversionError as exc:
            return SynthResult(prompt, sample, traj.finish_reason, reason=str(exc),
                               text=traj.text)
        return SynthResult(prompt, sample, traj.finish_reason, example=example)

    def run(self, todo: list):
        """Yield the results of each chunk of `cfg.concurrency` items as it finishes."""
        for start in range(0, len(todo), self.cfg.concurrency):
            chunk = todo[start:start + self.cfg.concurrency]
            messages = [prompt_messages(p["problem"]) for p, _ in chunk]
            prompts = [{"messages": m, "answer": p.get("answer")}
                       for m, (p, _) in zip(messages, chunk)]
            trajs = run_rollouts(self.engine, self.pool, prompts, self.rollout_cfg,
                                 tokenizer=self.tokenizer, seed=self._seed(chunk))
            yield [self._result(item, m, t) for item, m, t in zip(chunk, messages, trajs)]
