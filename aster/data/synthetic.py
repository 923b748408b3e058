"""The embedded tiny default's task: multi-step integer arithmetic that needs a stateful tool.

A problem chains `min_steps`..`max_steps` operations, each step naming a variable the next one
uses, one clause per line: ``a = 63 + 18`` / ``b = a // 33`` / ``c = b * 21`` / ``What is c?``.
The reference trajectory makes one ``code_interpreter`` call per step (``b = a // 33`` only
runs if ``a`` survived from the previous call: state matters), reads each printed value, and
ends with ``\\boxed{...}`` of the last one. The tool outputs are produced by actually running
the sandbox; the reference is checked against exact integer arithmetic. Three disjoint splits
come from one seed: SFT trajectories, RL prompts and eval prompts.

Two knobs make the task learnable by a 2-layer model in a few hundred SFT steps: no operator
appears twice in a problem (the operator names its clause), and `max_value` bounds every
intermediate value (the tiny config uses 99: every number is one token, so each copy from the
prompt or a tool output sits at a fixed distance). Measured with a teacher-forced probe: with
3-digit values the operands are still copied <10% right after 500 steps; with values <= 99
they are ~97% right after 350.

One clause per line, so that each clause tokenises exactly as the call that copies it. Written
as ``a = 63 + 18, b = a // 33`` (before 2026-12-07) the second clause's variable was `` b``
(space-prefixed) in the prompt but ``b`` in the code, and copying it needed a learned
`` b`` -> ``b`` match on top of the induction circuit: in held-out samples after SFT of the runs
that failed, the first clause was copied right 126-128 times of 128 and the second 6-31 times of
70-87 (the robustness grid's failures, docs/tiny-default.md). With lines, every clause is a
plain repeat of prompt tokens.

The teacher can be imperfect, as real distillation teachers are: with `early_answer_prob` a
reference trajectory stops after a random earlier step and answers with that intermediate
value (a wrong answer, premature termination). SFT then imitates a model that sometimes gives
up on the tool too soon, and RL's reward is what teaches it to finish the computation.
`samples_per_problem` writes several teacher samples per problem, each drawing its own ending,
so the model learns the teacher's rate rather than memorising one coin flip per problem.
Measured on the tiny model (eval at temperature 0.6): with one or two samples per problem
repeated over 7-10 epochs, a teacher rate of 0.3-0.4 gave only 3-9% early answers on held-out
problems; with 12-18 samples per problem in one epoch they roughly tracked it (31-48% at 0.4).
One sample each of 14,336 distinct problems (nothing repeats to memorise, 14x the operands to
learn to copy) was tried as the tiny default on 2026-12-07 and is not robust either: see
docs/tiny-default.md for the grid.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from aster.data.config import SyntheticTaskConfig
from aster.data.formats import CODE_INTERPRETER_TOOL, make_call
from aster.data.prompts import user_turn
from aster.sandbox import SandboxConfig, SandboxPool, format_tool_response

logger = logging.getLogger("aster")

VARIABLES = "abcdefgh"
OPS = ("+", "-", "*", "%", "//")
PROBLEMS_PER_SESSION = 256


@dataclass(frozen=True)
class Step:
    """`target = source op operand`; the first step's source is a number, not a variable."""

    target: str
    source: str
    op: str
    operand: int

    @property
    def code(self) -> str:
        return f"{self.target} = {self.source} {self.op} {self.operand}"


@dataclass(frozen=True)
class Problem:
    steps: tuple[Step, ...]
    answer: int

    @property
    def text(self) -> str:
        # one clause per line, so each tokenises exactly as the call that copies it (see the
        # module docstring: `, b = ...` made the copied `b` a different token from the code's)
        chain = "\n".join(s.code for s in self.steps)
        return f"{chain}\nWhat is {self.steps[-1].target}?"


def _apply(value: int, op: str, operand: int) -> int:
    return {"+": value + operand, "-": value - operand, "*": value * operand,
            "//": value // operand, "%": value % operand}[op]


def _operand_range(op: str, value: int, cfg: SyntheticTaskConfig) -> tuple[int, int]:
    """The operands (lo, hi) that keep `value op operand` in [0, cfg.max_value] and non-trivial;
    lo > hi when none does."""
    hi = cfg.max_operand
    if op == "+":
        hi = min(hi, cfg.max_value - value)
    elif op == "-":  # results stay >= 10: a small answer is too easy to guess
        hi = min(hi, value - 10)
    elif op == "*":
        hi = min(hi, cfg.max_value // max(1, value))
    elif value < 10:  # % and // of a small value are near-constant answers
        return 2, 1
    else:  # an operand below the value changes it
        hi = min(hi, value - 1 if op == "%" else value // 2)
    return 2, hi


def _pick_step(rng: random.Random, value: int, used: set[str],
               cfg: SyntheticTaskConfig) -> tuple[str, int]:
    """(operator, operand): an operator not used yet in this problem where one fits (each
    clause's operator then names it uniquely), the operand drawn from what keeps the value in
    range."""
    ranges = {op: _operand_range(op, value, cfg) for op in OPS}
    fits = [op for op, (lo, hi) in ranges.items() if lo <= hi]
    op = rng.choice([op for op in fits if op not in used] or fits)
    return op, rng.randint(*ranges[op])


def sample_problem(rng: random.Random, cfg: SyntheticTaskConfig) -> Problem:
    """One random problem; `answer` by exact integer arithmetic."""
    num_steps = rng.randint(cfg.min_steps, cfg.max_steps)
    value = rng.randint(10, min(cfg.max_operand, cfg.max_value))
    source = str(value)
    steps, used = [], set()
    for i in range(num_steps):
        op, operand = _pick_step(rng, value, used, cfg)
        used.add(op)
        steps.append(Step(VARIABLES[i], source, op, operand))
        value = _apply(value, op, operand)
        source = VARIABLES[i]
    return Problem(tuple(steps), value)


def sample_problems(cfg: SyntheticTaskConfig) -> tuple[list[Problem], list[Problem], list[Problem]]:
    """The SFT, RL and eval problems: distinct texts, deterministic from cfg.seed."""
    rng = random.Random(cfg.seed)
    wanted = cfg.num_sft + cfg.num_rl + cfg.num_eval
    seen: set[str] = set()
    problems: list[Problem] = []
    for _ in range(wanted * 50):
        problem = sample_problem(rng, cfg)
        if problem.text not in seen:
            seen.add(problem.text)
            problems.append(problem)
            if len(problems) == wanted:
                break
    if len(problems) < wanted:
        raise ValueError(f"data.synthetic: only {len(problems)} distinct problems for {wanted} "
                         "wanted; raise max_operand or max_steps")
    a, b = cfg.num_sft, cfg.num_sft + cfg.num_rl
    return problems[:a], problems[a:b], problems[b:]


def _think(text: str) -> str:
    return f"<think>\n{text}\n</think>"


def run_steps(problem: Problem, session) -> list[str]:
    """Run the problem's steps, one call each, in a sandbox `session`; the formatted outputs.

    Raises RuntimeError when a call fails or the last output is not the exact answer."""
    outputs = []
    for step in problem.steps:
        result = session.run(f"{step.code}\nprint({step.target})")
        outputs.append(format_tool_response(result))
        if not result.ok:
            raise RuntimeError(f"the sandbox failed on {step.code!r}: {outputs[-1].strip()}")
    if outputs[-1].strip() != str(problem.answer):
        raise RuntimeError(f"sandbox printed {outputs[-1].strip()!r} for {problem.text!r}, "
                           f"expected {problem.answer}")
    return outputs


def reference_trajectory(problem: Problem, outputs: list[str],
                         stop_after: int | None = None) -> dict:
    """The teacher's trajectory in the internal SFT form, from the sandbox `outputs` of
    `run_steps`: one call per step, then `\\boxed{}` of the last printed value.

    `stop_after=k` (1 <= k < len(steps)) is the imperfect teacher: it answers with the k-th
    step's value after k calls, a wrong answer; the record's `answer` stays the true one. The
    sandbox is deterministic, so the first k outputs are those the k calls alone print."""
    n = stop_after or len(problem.steps)
    messages = [{"role": "user", "content": user_turn(problem.text)}]
    for step, output in zip(problem.steps[:n], outputs[:n]):
        messages.append({"role": "assistant", "content": _think(f"Compute {step.target}."),
                         "tool_calls": [make_call(f"{step.code}\nprint({step.target})")]})
        messages.append({"role": "tool", "content": output})
    messages.append({"role": "assistant",
                     "content": _think(f"The answer is {problem.steps[n - 1].target}.")
                     + f"\n\n\\boxed{{{outputs[n - 1].strip()}}}"})
    return {"messages": messages, "tools": [CODE_INTERPRETER_TOOL], "answer": str(problem.answer)}


def early_stops(problem: Problem, rng: random.Random, cfg: SyntheticTaskConfig) -> list[int | None]:
    """For each of the problem's `samples_per_problem` teacher samples, the step after which
    the imperfect teacher answers (None: it finishes): probability `early_answer_prob` for a
    multi-step problem, after a uniformly drawn earlier step."""
    stops: list[int | None] = []
    for _ in range(cfg.samples_per_problem):
        early = rng.random() < cfg.early_answer_prob and len(problem.steps) > 1
        stops.append(rng.randint(1, len(problem.steps) - 1) if early else None)
    return stops


@dataclass
class SyntheticData:
    """The three splits: SFT trajectories (internal SFT form), RL and eval prompts."""

    sft: list[dict]
    rl: list[dict]
    eval: list[dict]


def _prompt(problem: Problem, split: str) -> dict:
    return {"problem": problem.text, "answer": str(problem.answer),
            "data_source": f"synthetic-{split}"}


def build_synthetic(cfg: SyntheticTaskConfig | None = None, sandbox_cfg=None) -> SyntheticData:
    """Generate the task: reference trajectories by running the sandbox, prompts held apart."""
    cfg = cfg or SyntheticTaskConfig()
    sft_problems, rl_problems, eval_problems = sample_problems(cfg)
    rng = random.Random(cfg.seed + 1)  # its own stream: the problems do not depend on it
    trajectories, early = [], 0
    with SandboxPool(sandbox_cfg or SandboxConfig()) as pool:
        for start in range(0, len(sft_problems), PROBLEMS_PER_SESSION):
            # one session runs a chunk of problems: every problem rebinds its variables before
            # reading them (its first step starts from a number), so it prints what it would in
            # a fresh session, and a session start (~10 ms) is paid once per chunk, not per
            # problem: 14,336 distinct problems take seconds, not minutes
            with pool.session() as session:
                for problem in sft_problems[start:start + PROBLEMS_PER_SESSION]:
                    outputs = run_steps(problem, session)
                    for stop in early_stops(problem, rng, cfg):
                        trajectories.append(reference_trajectory(problem, outputs, stop))
                        early += stop is not None
    logger.info("synthetic task: %d SFT trajectories (sandbox-run; %d answer early), %d RL and "
                "%d eval prompts", len(trajectories), early, len(rl_problems), len(eval_problems))
    return SyntheticData(sft=trajectories, rl=[_prompt(p, "rl") for p in rl_problems],
                         eval=[_prompt(p, "eval") for p in eval_problems])
