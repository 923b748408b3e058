"""Every token budget of an evaluation from one generation (`eval.budgets`).

The agent loop samples each (trajectory, turn) with its own seed, and an engine's sampling of
a turn's first n tokens does not depend on how many it may sample (max_new_tokens only decides
where it stops; the hf engine draws one number per token from the request's own generator). So
a run at a smaller budget B samples, turn by turn, exactly the prefix the largest-budget run
sampled, and stops where the loop's rules stop it at B:

- a turn that would run past B (the budget left when it starts is B minus every token so far,
  tool-output tokens included) is cut there: finish ``length``, scored 0;
- a tool turn that would reach B is not appended: finish ``length`` after the turn that
  called the tool (its calls did run);
- otherwise the trajectory is the large run's, up to its own end.

`cut_at_budget` rebuilds that trajectory from the large run's turn records; tests check it
against a separate run at B on the tiny model.
"""

from __future__ import annotations

from dataclasses import replace

from aster.reward import extract_answer, score


def cut_at_budget(traj, budget: int, tokenizer):
    """The trajectory a run with max_response_tokens=`budget` would have returned, from
    `traj` generated at a budget >= `budget` (a Trajectory with its `turns` records)."""
    pos, calls, tool_errors, exec_errors = 0, 0, 0, 0
    for k, turn in enumerate(traj.turns):
        left = budget - pos
        if turn.sampled > left:  # this turn hits the budget: cut inside it
            return _cut(traj, tokenizer, k, budget, pos, (calls, tool_errors, exec_errors))
        if k == len(traj.turns) - 1:
            return traj  # the large run ended here, within the budget: the same trajectory
        calls, tool_errors = calls + turn.calls, tool_errors + turn.tool_errors
        exec_errors += turn.exec_errors
        end = pos + turn.sampled
        if end + turn.tool >= budget:  # the tool turn would reach the budget: not appended
            return _cut(traj, tokenizer, k, end, pos, (calls, tool_errors, exec_errors))
        pos = end + turn.tool
    return traj


def _cut(traj, tokenizer, k: int, end: int, turn_start: int, counts):
    """`traj` ended with `length` after `end` response tokens, in or after turn k."""
    ids = traj.response_ids[:end]
    final = tokenizer.decode(ids[turn_start:], skip_special_tokens=False)
    eos = tokenizer.eos_token
    if eos and final.endswith(eos):
        final = final[:-len(eos)]
    calls, tool_errors, exec_errors = counts
    cut = replace(traj, response_ids=ids, loss_mask=traj.loss_mask[:end],
                  rollout_logprobs=traj.rollout_logprobs[:end], num_tool_calls=calls,
                  tool_errors=tool_errors, exec_errors=exec_errors, num_turns=k + 1,
                  finish_reason="length", final_text=final, turns=traj.turns[:k + 1],
                  text=tokenizer.decode(ids, skip_special_tokens=False))
    cut.answer = extract_answer(final)
    if traj.ground_truth is not None:
        cut.reward = score(final, traj.ground_truth, truncated=True)
    return cut
