#!/usr/bin/env bash
# There, on a CUDA machine without network (the device tool's image, with .whl/ carried from
# fetch_wheels.sh): the CUDA tests, then the GPU benchmark, everything written under $OUT.
# Device tool: carry [".whl"], command "bash benchmarks/gpu/device_checks.sh", timeout_s 590; the stages can
# also run in separate calls: "... device_checks.sh tests", then "... device_checks.sh bench".
# Each stage is bounded: the tests by 200 s, each of the benchmark's three parts by BENCH_SECONDS (110).
set -uo pipefail
cd "$(dirname "$0")/../.."
mkdir -p "${OUT:-gpu-out}" && out=$(cd "${OUT:-gpu-out}" && pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device_checks: no wheels in .whl/ (run benchmarks/gpu/fetch_wheels.sh here and carry .whl)"; exit 2; }
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'fla', fla.__version__)" \
    | tee -a "$out/gpu.txt"
stages=${*:-tests bench}
if [[ $stages == *tests* ]]; then  # dispatch to fla (and mamba_ssm where installed), bf16 training, compile, decoding
    timeout 200 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py tests/ops/test_gated_delta_rule.py \
        tests/ops/test_ssd.py 2>&1 | tee "$out/pytest_cuda.log"
fi
if [[ $stages == *bench* ]]; then  # the kernels first, then the models size by size, each written as it ends
    cd benchmarks
    for part in "kernels nano" "models nano" "models 125M"; do
        read -r what size <<< "$part"
        timeout "${BENCH_SECONDS:-110}" python3 bench_gpu.py --parts "$what" --sizes "$size" \
            --out "$out/bench_gpu_${what}_$size.json" --markdown "$out/bench_gpu.md" > "$out/bench_gpu_${what}_$size.log" 2>&1
        echo "bench_gpu $what $size: exit $?"; tail -n 3 "$out/bench_gpu_${what}_$size.log"
    done
    cat "$out/bench_gpu.md"
fi
