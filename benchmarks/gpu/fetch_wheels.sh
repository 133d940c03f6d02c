#!/usr/bin/env bash
# Here, with PyPI reachable: download into .whl/ (git-ignored) the wheels the GPU checks need and the
# device tool's CUDA image lacks. That image has Python 3.12, PyTorch, Triton, einops, numpy, safetensors,
# tokenizers, tqdm, matplotlib, scipy and pytest; missing are tyro (the benchmarks' CLI) with two of its
# needs, and fla-core (flash-linear-attention's kernels, pure Python on Triton). mamba_ssm is not
# fetched: it has no wheel on PyPI, only a source build of CUDA extensions.
# Usage: bash benchmarks/gpu/fetch_wheels.sh        then run benchmarks/gpu/device_checks.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 fla-core==0.6.0
ls -l .whl
