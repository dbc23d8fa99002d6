#!/usr/bin/env bash
# The GPU checks of one lent-device session, prepared so that its minutes go to measuring: build
# hyperkd._C against the machine's own PyTorch, run the GPU tests, then the benchmarks behind the
# GPU targets (docs/siren.md, docs/kd-methods.md), every log and results row under $OUT.
#
#   bash bench/gpu_session.sh build test siren-narrow    # first call
#   bash bench/gpu_session.sh siren-wide kd              # next call, on the still-warm machine
#
# Stages: build; test (the gpu-marked tests); siren-narrow (the SIREN grid at widths 64 and 128,
# where the targets are ratios to eager and torch.compile); siren-wide (280 and 680, where they
# are TFLOP/s); kd (every layer-wise KD op family's suite, both networks, B = 16/64/128); makd (the
# affinity ops' default grid: the eight variants covering every component, B = 128, D = 64 and
# 16,384); hyper (bench_hyper.GPU_ROWS: VGG-19-bn and RepVGG-A2 with bf16 W and state, chained and
# unchained, against eager; then the W-bound kernels' share of the measured bandwidth,
# hyper_bandwidth.py, fp32 and bf16). Each stage appends to
# $OUT/<stage>.log; each benchmark appends its rows to $OUT/<suite>.jsonl (with the default $OUT,
# the results data itself; from elsewhere, `cat` them onto bench/results/<suite>.jsonl). A stage's torch.compile
# baselines compile afresh per case, which is most of a benchmark stage's minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
mkdir -p "$OUT"
STAGES="build, test, siren-narrow, siren-wide, kd, makd, hyper"
[ $# -gt 0 ] || { echo "usage: $0 STAGE... ($STAGES)" >&2; exit 2; }
# Every name is checked before the first stage runs: a typo should not cost a lease's minutes.
for stage in "$@"; do
  case ", $STAGES, " in
    *", $stage, "*) ;;
    *) echo "unknown stage $stage: expected one of $STAGES" >&2; exit 2 ;;
  esac
done

run_stage() {
  local stage=$1
  shift
  echo "== $stage: $*"
  "$@" 2>&1 | tee -a "$OUT/$stage.log"
}

bench() {
  local stage=$1 suite=$2
  shift 2
  run_stage "$stage" "$PYTHON" -m hyperkd bench --suite "$suite" --full --out "$OUT/$suite.jsonl" "$@"
}

for stage in "$@"; do
  case $stage in
    build)
      run_stage build "$PYTHON" -c 'import torch, triton; print(torch.__version__, triton.__version__,
            torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")'
      run_stage build "$PYTHON" setup.py build_ext --inplace ;;
    test)
      run_stage test "$PYTHON" -m pytest tests -m gpu -q -p no:cacheprovider -rs ;;
    siren-narrow) bench siren-narrow siren -k "W64 or W128" ;;
    siren-wide) bench siren-wide siren -k "W280 or W680" ;;
    kd) for suite in attention_transfer activation_boundary relational channelwise; do bench kd "$suite"; done ;;
    makd) run_stage makd "$PYTHON" -m hyperkd bench --suite makd --out "$OUT/makd.jsonl" ;;
    hyper)
      run_stage hyper env PYTHONPATH=. "$PYTHON" bench/bench_hyper.py --device cuda --out "$OUT/hyper.jsonl"
      for dtype in fp32 bf16; do
        run_stage hyper env PYTHONPATH=. "$PYTHON" bench/hyper_bandwidth.py --weight-dtype $dtype --state-dtype $dtype \
          --out "$OUT/hyper_bandwidth_vgg19_bn_$dtype.json"
      done ;;
  esac
done
