#!/usr/bin/env bash
# The GPU run, as one device command (repository root; carry bench-out/gpu-bundle):
#   bash benchmarks/effect/gpu_run.sh [CONFIG]      (CONFIG defaults to benchmarks/effect/gpu.yaml)
# Installs thresher without dependencies into /tmp/site (the machine's image has torch, transformers,
# tokenizers, pyarrow, xxhash, pyyaml and matplotlib), records the card, runs the experiment and copies
# results.json, results.md, loss_vs_tokens.png and the log to $OUT (or ./bench-out/gpu-run without it).
set -euo pipefail
cfg=${1:-benchmarks/effect/gpu.yaml}
py=${PYTHON:-python3}
out=${OUT:-bench-out/gpu-run}
mkdir -p "$out"
"$py" -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/thresher-site . >/dev/null
export PYTHONPATH=/tmp/thresher-site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU";
  "$py" -P -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } \
  | tee "$out/card.txt"
exp=/tmp/thresher-gpu-exp   # -P below: import the installed thresher, not ./thresher
start=$(date +%s)
"$py" -P -m thresher experiment "$cfg" --output "$exp" 2>&1 | tee "$out/log.txt"
echo "wall $(( $(date +%s) - start )) s" | tee -a "$out/card.txt"
cp "$exp/results.json" "$exp/results.md" "$exp/loss_vs_tokens.png" "$out/"
