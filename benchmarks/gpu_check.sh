#!/usr/bin/env bash
# One prepared GPU check (about 5 minutes on one H100/H200): the CUDA tests, the LRP/gradient cost ratio on the
# device, and the end-to-end pipeline on 3D batches with the GPU's busy share sampled in steady state.
# Run from the repository root:
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]
# Writes logs and JSON to RESULTS_DIR (default: gpu_results/). On a machine without a CUDA device it says so
# and exits 0 without measuring anything: the GPU numbers in BENCHMARKS.md stay "not yet measured".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_results}"
N="${GPU_CHECK_SCANS:-96}"          # scans for the steady-state run (128^3 phantoms)
mkdir -p "$OUT"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv && .venv/bin/pip install -q torch && .venv/bin/pip install -q -e '.[test]'
fi
PY=.venv/bin/python
if ! command -v nvidia-smi > /dev/null 2>&1 || ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: SKIPPED - no CUDA device visible on this machine (nvidia-smi or torch.cuda missing);"
  echo "gpu_check: nothing measured, the GPU numbers stay 'not yet measured'."
  exit 0
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY -c "import torch; print('device:', torch.cuda.get_device_name())" | tee "$OUT/device.txt"
# Worker processes: the pipeline's own plan (every core but one on a GPU node).

# 1. Tests that exercise CUDA (they skip on a CPU-only machine).
timeout 120 $PY -m pytest -q -p no:cacheprovider -m "not slow" -k "cuda or device" tests/ 2>&1 | tee "$OUT/tests.txt"
# 2. LRP against one input-gradient pass, on the device.
timeout 90 $PY benchmarks/lrp_speed.py --device cuda --models cnn3d --no-memory --json "$OUT/lrp_speed.json" 2>&1 \
  | tee "$OUT/lrp_speed.txt"
# 2b. evaluate's batched region perturbation against one forward per step, on the device.
timeout 60 $PY benchmarks/evaluate_speed.py --device cuda --scans 1 --steps 20 --batch 32 \
  --json "$OUT/evaluate_speed.json" 2>&1 | tee "$OUT/evaluate_speed.txt"
# 3. The pipeline against the naive script, both on the device (16 scans, best of 2).
timeout 240 $PY benchmarks/pipeline_speed.py --device cuda --n 16 --repeats 2 --batch-size auto \
  --data "$OUT/bench_data" --json "$OUT/pipeline_speed.json" 2>&1 | tee "$OUT/pipeline_speed.txt"
# 4. The pipeline alone over $N scans, GPU utilisation sampled every 100 ms meanwhile.
nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader,nounits -lms 100 > "$OUT/utilization.csv" &
SMI=$!
timeout 240 $PY benchmarks/pipeline_speed.py --device cuda --memory "$N" --batch-size auto \
  --data "$OUT/bench_data" --json "$OUT/steady.json" 2>&1 | tee "$OUT/steady.txt"
kill "$SMI" 2> /dev/null
# Steady state: the samples between the first and the last busy one, less the first and last 10% of them
# (start-up and draining), averaged. nvidia-smi's utilization.gpu is the share of time a kernel was running.
$PY - "$OUT/utilization.csv" <<'EOF' | tee "$OUT/busy.txt"
import sys
values = [float(line.rsplit(",", 1)[1]) for line in open(sys.argv[1]) if "," in line]
busy = [i for i, v in enumerate(values) if v > 0]
if not busy:
    print("device busy share: no busy sample (the runs did not use the GPU?)")
    sys.exit(0)
window = values[busy[0]:busy[-1] + 1]
cut = len(window) // 10
steady = window[cut:len(window) - cut] or window
print(f"device busy share in steady state: {sum(steady) / len(steady):.0f}% over {len(steady)} samples "
      f"(goal >= 80%); scans/s of that run in steady.txt")
EOF
