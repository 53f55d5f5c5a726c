#!/usr/bin/env bash
# GPU check of the fused SE / CBAM / sampler kernels, for one H100 / H200, about 8 minutes:
#   1. correctness on CUDA: benchmarks/gpu_correctness.py (fast vs reference, fp32 / bf16,
#      NCHW / channels_last, all gradients, BatchNorm + attention node, sampler determinism,
#      backend "auto"'s measured choice leaving no trace) and, when pytest is installed, the
#      CUDA-parametrised cases of tests/kernels/;
#   2. the benchmark at the GPU shapes (N=128, C=256..2048 ResNet-50 stages, bf16, channels_last,
#      with the host (launch) time of every row;
#      sampler 64x64x112x112 fp32 and bf16; whole networks when visattn.models is present, with
#      SE / CBAM on the default ("auto": Triton kernels or formulas, whichever it measured
#      faster; the report lists what it measured) and on the Triton kernels pinned, which also
#      fuse the BatchNorm before them); then every Triton kernel alone at the four stages (time
#      and share of the copy bandwidth), then the torch.compile rows at the first stage;
#   3. optional (GPU_CHECK_COMPILE_MODELS=1, several more minutes): the networks under torch.compile.
# Run from the repository (any cwd): bash benchmarks/gpu_check.sh
# Everything is printed; files go to $OUT (or /tmp/visattn_gpu_check): check.txt (environment and
# correctness), bench.md, bench_kernels.md and bench_compile.md (the tables), log.txt (the whole
# output).
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
RES="${OUT:-/tmp/visattn_gpu_check}"
mkdir -p "$RES"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export VISATTN_CACHE_DIR="${VISATTN_CACHE_DIR:-/tmp/visattn_cache}"
export PYTHONUNBUFFERED=1
exec > >(tee "$RES/log.txt") 2>&1

if ! "$PY" -c 'import torch, triton; assert torch.cuda.is_available(), "no CUDA device"'; then
  echo "gpu_check: needs python3 with a CUDA build of torch, a visible GPU and triton (see above)"
  exit 1
fi
{
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__); print("device", torch.cuda.get_device_name())'
  nvidia-smi -L 2>/dev/null || true
} | tee "$RES/check.txt"

status=0
echo "== 1. correctness on CUDA =="
timeout 240 "$PY" benchmarks/gpu_correctness.py 2>&1 | tee -a "$RES/check.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
if "$PY" -c 'import pytest' 2>/dev/null; then
  timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_kernels_se_cbam.py \
    tests/kernels/test_kernels_norm_fusion.py tests/kernels/test_kernels_sampler.py -k "cuda or compile" 2>&1 | tail -25 | tee -a "$RES/check.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
  echo "pytest not installed: skipped tests/kernels (gpu_correctness.py covers the same checks)"
fi

echo "== 2. benchmark (bf16, channels_last, N=128) =="
timeout 260 "$PY" -m visattn.bench --device cuda --dtype bfloat16 --channels-last --batch 128 \
  --repeats 20 --models --model-batch 128 --model-steps 8 --output "$RES/bench.md" 2>&1 \
  | grep -v '^USDT'
echo "== 2b. each SE / CBAM kernel alone (four stages) =="
timeout 90 "$PY" -m visattn.bench --device cuda --dtype bfloat16 --channels-last --batch 128 \
  --repeats 20 --blocks "" --kernels --no-models --output "$RES/bench_kernels.md" 2>&1 \
  | grep -v '^USDT'
echo "== 3. torch.compile rows (first stage) =="
timeout 150 "$PY" -m visattn.bench --device cuda --dtype bfloat16 --channels-last --batch 128 \
  --repeats 20 --quick --compile --blocks se,cbam --no-models --output "$RES/bench_compile.md" \
  2>&1 | grep -v '^USDT'
if [ "${GPU_CHECK_COMPILE_MODELS:-0}" = "1" ]; then
  echo "== 4. whole networks under torch.compile (GPU_CHECK_COMPILE_MODELS=1; several minutes) =="
  timeout 900 "$PY" -m visattn.bench --device cuda --blocks se --quick --repeats 1 --models \
    --compile-models --model-batch 128 --model-steps 8 --output "$RES/bench_models_compile.md" \
    2>&1 | grep -v '^USDT'
fi
echo "gpu_check: done (correctness status $status); results in $RES"
exit $status
