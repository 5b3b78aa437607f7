#!/usr/bin/env bash
# The prepared GPU check: everything worth measuring on a GPU machine, in one run of under 8 minutes.
#
#   bench/gpu.sh --prepare   on a machine with the package registries: wheels for what a bare GPU image
#                            lacks (deepspeed, built pure-Python, and pydantic's, for CPython 3.12) and the
#                            tiny run's shards, into .gpu/ (git-ignored; carry it to the GPU machine)
#   bench/gpu.sh             on the GPU machine: installs .gpu/wheels under /tmp/site (never Ray), then
#                            python -m bench.train (GPT-1, context 512, bf16, micro-batch 16 and 32,
#                            compile off and on, ZeRO 0, 1 and 2) and python -m bench.gpu_check (gpt1 train
#                            on the tiny shards, stopped by SIGTERM, resumed, exported) and python -m
#                            bench.eval --race (fine-tuning GPT-1 on RACE-shaped examples, 512 tokens x 4
#                            choices, old path against ours); writes $OUT/train-gpu.txt (bench/results/
#                            when OUT is unset)
#   bench/gpu.sh --dry-run   the same steps on this machine's CPU at toy sizes, with the project's venv
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-gpu}
case "$mode" in gpu | --prepare | --dry-run) ;; *) echo "usage: bench/gpu.sh [--prepare | --dry-run]" >&2; exit 2 ;; esac
if [ -x .venv/bin/python ] && [ "$mode" != gpu ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
export PYTHONUNBUFFERED=1

if [ "$mode" = --prepare ]; then
    rm -rf .gpu/wheels && mkdir -p .gpu/wheels
    version() { "$PY" -c "from importlib.metadata import version; print(version('$1'))"; }
    "$PY" -m pip wheel -q --no-deps -w .gpu/wheels "deepspeed==$(version deepspeed)"
    pins=()
    for name in pydantic pydantic-core annotated-types typing-inspection hjson; do pins+=("$name==$(version "$name")"); done
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/wheels "${pins[@]}"
    "$PY" -m launch.cli shards build configs/tiny.yaml --set run.out_dir=.gpu/runs >/dev/null
    du -sh .gpu/wheels .gpu/runs
    exit 0
fi

if [ "$mode" = gpu ]; then
    [ -d .gpu/wheels ] || { echo "error: no .gpu/wheels: run bench/gpu.sh --prepare first, and carry .gpu" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    results=${OUT:-bench/results}/train-gpu.txt
    bench=(--micro-batch 16,32 --compile off,on --zero 0,1,2)
    check=()
    race=(--race 512)
else
    [ -d .gpu/runs ] || "$PY" -m launch.cli shards build configs/tiny.yaml --set run.out_dir=.gpu/runs >/dev/null
    results=${OUT:-/tmp}/train-gpu-dry-run.txt
    bench=(--preset debug --seq-len 64 --micro-batch 2,4 --compile off,on --zero 0,1,2 --steps 2 --warmup 1)
    check=(--dry-run)
    race=(--race 32 --preset debug --seeds 0)
fi

mkdir -p "$(dirname "$results")"
{
    echo "# bench/gpu.sh ${mode}, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    echo
    echo "## python -m bench.train ${bench[*]}"
    "$PY" -m bench.train "${bench[@]}"
    echo
    echo "## python -m bench.gpu_check ${check[*]}"
    "$PY" -m bench.gpu_check "${check[@]}"
    echo
    echo "## python -m bench.eval ${race[*]}"
    "$PY" -m bench.eval "${race[@]}"
} | tee "$results"
echo "written: $results"
