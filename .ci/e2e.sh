#!/usr/bin/env bash
# CI's short end-to-end run: the whole `aster train` pipeline on a shrunken tiny config,
# then a check that it wrote the summary the README promises.
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
aster train --config tiny-ci --output-dir "$out/run"
python - "$out/run/summary.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
for stage in ("sft", "rl_stage1", "rl_stage2"):
    acc = summary[stage]["accuracy"]
    assert 0.0 <= acc <= 1.0, (stage, acc)
    assert summary[stage]["tool_calls_mean"] >= 0
print("summary.json ok:", {k: v for k, v in summary.items() if k in ("sft", "rl_stage1", "rl_stage2")})
PY
