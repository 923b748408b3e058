"""Which stages a command runs, and what a stage run alone needs from the stages before it.

A stage config (configs/qwen3-4b-rl-stage2.yaml: `run.stages: [filter, rl_stage2]`) runs the
same stages alone as it runs inside the one-command pipeline: a command's `--stage` narrows the
config's stages and never replaces them, and stage 2 started without stage 1 in its run must be
given stage 1's records (or a prompt file already filtered) instead of silently training on
every prompt. See docs/recipe.md, "Stages run alone"."""

from __future__ import annotations

from pathlib import Path

from aster.errors import AsterUserError

RL_STAGES = ("rl_stage1", "filter", "rl_stage2")
RECORDS = Path("rollouts") / "rl_stage1.jsonl"
FILTERED = Path("rollouts") / "stage2_prompts.json"


class StageInputError(AsterUserError):
    """A stage run alone lacks what an earlier stage would have produced."""


def rl_stages(stages: list[str], wanted: str | None) -> list[str]:
    """`aster rl`'s stages: the config's RL stages (rl_stage1, filter, rl_stage2), narrowed to
    `wanted` (rl_stage2 keeps the filter in front of it)."""
    own = [s for s in stages if s in RL_STAGES]
    if not any(s != "filter" for s in own):
        raise StageInputError(f"run.stages={stages} has no RL stage; use a config that has one "
                              "(qwen3-4b-rl-stage1, qwen3-4b-rl-stage2) or add "
                              "run.stages=[rl_stage1]")
    if wanted is None:
        return own
    if wanted not in own:
        raise StageInputError(f"--stage {wanted}: this config's run.stages={stages} has no "
                              f"{wanted} (--stage narrows the config's stages); use the "
                              f"config of that stage or run.stages=[{wanted}]")
    return [s for s in own if s == wanted or (wanted == "rl_stage2" and s == "filter")]


def stage1_records(cfg, run_dir: Path) -> Path:
    """The stage-1 rollout records stage 2's filter reads: rl.stage2.filter_records, else the
    run's own."""
    given = cfg.rl.stage2.filter_records
    return Path(given) if given else run_dir / RECORDS


def _needs_records(cfg) -> bool:
    stages = cfg.run.stages
    if "rl_stage2" not in stages or not cfg.rl.stage2.filter_all_correct:
        return False
    before = stages[:stages.index("rl_stage2")]
    return "rl_stage1" not in before


NO_RECORDS = ("stage 2 without stage 1 in its run has no stage-1 records to drop the prompts "
              "answered G/G; give them with --filter-records RUN/rollouts/rl_stage1.jsonl "
              "(rl.stage2.filter_records), or a prompt file already filtered with "
              "data.rl_path=FILE rl.stage2.filter_all_correct=false")


def check_stage_inputs(cfg, output_dir: str | None, resume: bool) -> None:
    """Before anything is written: stage 2 run without stage 1 has stage-1 records (given, or
    in the run directory being resumed) or was told its prompts are already filtered."""
    if not _needs_records(cfg):
        return
    run_dir = Path(output_dir or cfg.run.output_dir or "")
    resumed = resume and bool(output_dir or cfg.run.output_dir)
    if resumed and (run_dir / FILTERED).is_file():
        return  # the filter already ran in this run
    if "filter" not in cfg.run.stages[:cfg.run.stages.index("rl_stage2")]:
        raise StageInputError("run.stages has rl_stage2 without filter before it while "
                              "rl.stage2.filter_all_correct=true; add filter to run.stages, or "
                              "set rl.stage2.filter_all_correct=false for a prompt file "
                              "already filtered")
    given = cfg.rl.stage2.filter_records
    if given:
        if not Path(given).is_file():
            raise StageInputError(f"rl.stage2.filter_records={given!r}: no such file; run "
                                  "stage 1 first or give --filter-records RUN/rollouts/"
                                  "rl_stage1.jsonl, or a prompt file already filtered with "
                                  "data.rl_path=FILE rl.stage2.filter_all_correct=false")
        return
    if not (resumed and (run_dir / RECORDS).is_file()):
        raise StageInputError(NO_RECORDS)


def check_records_match(records: list[dict], num_prompts: int, path: Path) -> None:
    """Records index the prompt list stage 1 trained on; an index past this run's list means
    another prompt file (or data.max_rows) than stage 1's."""
    top = max((r["prompt"] for r in records), default=-1)
    if top >= num_prompts:
        raise StageInputError(f"{path}: the records name prompt {top} but data.rl_path holds "
                              f"{num_prompts} prompts; give the data.rl_path (and "
                              "data.max_rows) stage 1 ran on")
