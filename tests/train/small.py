"""A shrunken tiny config for fast end-to-end tests (seconds, not minutes)."""

SMALL = ["data.synthetic.num_sft=16", "data.synthetic.num_rl=8", "data.synthetic.num_eval=4",
         "sft.epochs=1", "sft.global_batch_size=8", "sft.micro_batch_size=4",
         "rl.prompts_per_step=2", "rl.mini_batch_prompts=1", "rl.group_size=2",
         "rl.micro_batch_size=4", "rl.stage1.max_steps=2", "rl.stage2.max_steps=1",
         "rl.stage1.max_response_tokens=64", "rl.stage2.max_response_tokens=64",
         "rollout.max_response_tokens=64", "eval.k=1", "eval.max_tokens=64",
         "checkpoint.every_steps=1", "logging.tensorboard=false"]
TIMING_KEYS = ("time", "tokens_per_s", "mem_", "step_time", "wall", "gen_", "tool_s",
               "overhead")


def deterministic_part(records: list[dict]) -> list[dict]:
    """Metrics records without wall-clock and memory fields."""
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING_KEYS)}
            for r in records]
