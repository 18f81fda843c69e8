#!/usr/bin/env bash
# One prepared GPU check (about 5 minutes on one H100): the CUDA tests, the LRP cost ratio and the
# end-to-end pipeline on the device. Run from the repository root on a machine with a CUDA GPU:
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]
# Writes its logs and JSON results to RESULTS_DIR (default: gpu_results/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_results}"
mkdir -p "$OUT"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 && .venv/bin/pip install -q -e '.[test]'
fi
PY=.venv/bin/python
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name())"
# Tests that exercise CUDA (they skip on a CPU-only machine).
timeout 120 $PY -m pytest -q -p no:cacheprovider -m "not slow" -k "cuda or device" tests/ 2>&1 | tee "$OUT/tests.txt"
timeout 90 $PY benchmarks/lrp_speed.py --device cuda --json "$OUT/lrp_speed.json" 2>&1 | tee "$OUT/lrp_speed.txt"
timeout 150 $PY benchmarks/pipeline_speed.py --device cuda --json "$OUT/pipeline_speed.json" 2>&1 \
  | tee "$OUT/pipeline_speed.txt"
