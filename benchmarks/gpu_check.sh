#!/usr/bin/env bash
# Issue 15 item 2 in one run on a machine with a CUDA GPU and PyTorch: the `gpu` tests
# (training on the GPU with its precision, TF32, NVML readings) and benchmarks/gpu.py
# (every preset at the source shapes, eager and compiled). Prepared for the device machine:
#     run  command="bash benchmarks/gpu_check.sh"  timeout_s=540
# It uses the python3 that holds PyTorch there (no venv, no install) and writes
# gpu-check.log, bench-gpu.json and bench-gpu-compiled.json to $OUT (runs/ without it).
set -uo pipefail
out=${OUT:-runs}
mkdir -p "$out"
export PYTHONPATH="$PWD:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    "$python" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'
    timeout 120 "$python" -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -o addopts=""
    timeout 150 "$python" benchmarks/gpu.py --out "$out/bench-gpu.json"
    timeout 240 "$python" benchmarks/gpu.py --compile --steps 20 --out "$out/bench-gpu-compiled.json"
} 2>&1 | tee "$out/gpu-check.log"
