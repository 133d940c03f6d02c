#!/usr/bin/env bash
# There, on a CUDA machine without network (the device tool's image, with .whl/ carried from
# fetch_wheels.sh): the CUDA tests, then the GPU benchmark, everything written under $OUT as it ends.
# Device tool: carry [".whl"], command "bash benchmarks/gpu/device_checks.sh", timeout_s 600.
# Stages, all by default, or any of them named: tests, kernels, nano, 125M (the last two: the variants
# at that size). Each is bounded by STAGE_SECONDS (150; the tests by TEST_SECONDS, 240); a stage cut by the
# call's limit loses only itself (the kernel tests run first, compiling last).
# At most 7 files come back: gpu.txt, pytest_cuda.log, bench.log, bench_gpu.md and a JSON per benchmark stage.
set -uo pipefail
cd "$(dirname "$0")/../.."
mkdir -p "${OUT:-gpu-out}" && out=$(cd "${OUT:-gpu-out}" && pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device_checks: no wheels in .whl/ (run benchmarks/gpu/fetch_wheels.sh here and carry .whl)"; exit 2; }
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'fla', fla.__version__)" \
    | tee -a "$out/gpu.txt"
stages=${*:-tests kernels nano 125M}
bounded() { timeout "${STAGE_SECONDS:-150}" "$@"; }
for stage in $stages; do
    case $stage in
        tests)  # dispatch to fla (and mamba_ssm where installed), bf16 training, compile, decoding
            STAGE_SECONDS=${TEST_SECONDS:-240} bounded python3 -m pytest -q -m cuda -p no:cacheprovider \
                tests/ops/test_gated_delta_rule.py tests/ops/test_ssd.py tests/test_cuda.py > "$out/pytest_cuda.log" 2>&1 ;;
        kernels)
            (cd benchmarks && bounded python3 bench_gpu.py --parts kernels --sizes nano --out "$out/bench_kernels.json" \
                --markdown "$out/bench_gpu.md") >> "$out/bench.log" 2>&1 ;;
        nano | 125M)
            (cd benchmarks && bounded python3 bench_gpu.py --parts models --sizes "$stage" --out "$out/bench_$stage.json" \
                --markdown "$out/bench_gpu.md") >> "$out/bench.log" 2>&1 ;;
        *) echo "device_checks: unknown stage '$stage' (tests, kernels, nano, 125M)"; exit 2 ;;
    esac
    echo "== $stage: exit $?"
done
tail -n 3 "$out"/*.log
cat "$out/bench_gpu.md" 2>/dev/null
