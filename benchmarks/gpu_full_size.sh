#!/usr/bin/env bash
# One prepared GPU benchmark: full-size random CXR-LLAVA-v2 on one device, every row through Engine.generate:
# bf16 static+CUDA graphs (the baseline), bf16 eager, bf16 reports/s at batch 8/32/64, torchao int4 static at
# batch 1 and 8 with its greedy agreement with bf16 (issue 17). No network, no carried weights.
# (H200: ~5 s build + <= 420 s budget of work, compilation included; hard stop at 560 s.)
# Usage (repo root, on the GPU machine):  bash benchmarks/gpu_full_size.sh [extra args for gpu_full_size.py]
# On CPU, to check the script:            PYTHON=.venv/bin/python bash benchmarks/gpu_full_size.sh --tiny --new-tokens 8 --batch 2 --batches 2,4
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

# The GPU machine's python has torch + transformers + accelerate but maybe not these: install them from
# wheels the lead carries in .gpu-wheels/ (offline, no dependency resolution).
need_wheel() {  # module, wheel name prefix
  if ! "$PY" -c "import $1" 2>/dev/null; then
    shopt -s nullglob
    local wheels=(.gpu-wheels/"$2"-*.whl)
    if (( ${#wheels[@]} )); then
      "$PY" -m pip install --quiet --no-deps --no-index "${wheels[@]}"
    else
      echo "warning: python module $1 missing and no .gpu-wheels/$2-*.whl to install" >&2
    fi
  fi
}
need_wheel bitsandbytes bitsandbytes
need_wheel torchao torchao
need_wheel safetensors safetensors
need_wheel PIL pillow

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
# Inductor's compile workers: use the machine's cores; keep caches inside the run.
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}"
export TOKENIZERS_PARALLELISM=false
exec timeout 560 "$PY" benchmarks/gpu_full_size.py "$@"
