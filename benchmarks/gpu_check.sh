#!/usr/bin/env bash
# GPU check for a session lent a CUDA machine (about 1-2 minutes; stopped at 290 s):
#   IRT_R DeiT-S 224 px batch 64 training images/s (bf16 autocast, and float32 for comparison), extraction
#   images/s (model alone and embed.extract end to end), peak GPU memory, and a 200-iteration run on generated
#   products whose held-out Recall@1 must rise. Prints a table; exit code 1 if Recall@1 did not rise.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]        # OUTDIR default: $OUT/gpu_check if $OUT is set, else /tmp/gpu_check
#
# Runs from a plain checkout (no install needed): PYTHONPATH=src, with .venv/bin/python when there is one, else
# python3 (the device machines' python3 holds torch, timm, safetensors, pillow, pyyaml, tqdm; faiss is not needed).
# The Python part is benchmarks/gpu_check.py; `python benchmarks/gpu_check.py --cpu-smoke` tests it on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=python3
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then PY=.venv/bin/python; fi
OUTDIR="${1:-${OUT:+$OUT/gpu_check}}"
OUTDIR="${OUTDIR:-/tmp/gpu_check}"
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "(nvidia-smi not available)"
"$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"

set +e
timeout 290 "$PY" benchmarks/gpu_check.py --out "$OUTDIR/work" --json "$OUTDIR/gpu_check.json" 2>&1 \
  | tee "$OUTDIR/gpu_check.log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" = 124 ]; then echo "gpu_check: stopped after 290 s" >&2; fi
rm -rf "$OUTDIR/work"  # generated images and runs (the table and JSON stay)
exit "$rc"
