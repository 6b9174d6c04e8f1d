#!/usr/bin/env bash
# Paper-profile benchmarks of AlexNet, VGG-16 and GoogLeNet on torch/CUDA, on a machine with a CUDA GPU
# (python3 with CUDA torch, numpy, scipy, pandas, matplotlib, scikit-image, protobuf, psutil, tqdm; pycaffe
# is not needed; pda_repro/_generated must be present).
#
#     OUT=<dir> BUDGET_S=<seconds> bash benchmarks/gpu_paper_profile.sh
# then copy $OUT/<env>/*.csv, *.json (and gpu_paper_profile.log) into results/<env>/ of the repository
# (env = cuda-<gpu slug>, e.g. cuda-nvidia-h100-80gb-hbm3), run `make figures` and commit.
#
# Order (each step writes its cells as they complete; BUDGET_S bounds the whole script):
#   1. Table 1, all three nets, batch 160 (paper profile: >= 10 timed batches each).
#   2. Figure 12, quick profile (subset of windows, extrapolated and labelled) for all three: a guaranteed
#      result even if step 3 runs out of time.
#   3. Figure 12, paper profile (every window: 475,240 / 462,250 / 462,250 PDA forward images), one net at a
#      time, cheapest first, each given the time that is left; a net whose run does not finish in time
#      keeps only its quick-profile rows (the figures prefer paper rows where both exist).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
BUDGET_S=${BUDGET_S:-540}
OUT_DIR=${OUT:-/tmp/gpu-out}
RES=${RES:-/tmp/pda-gpu-results}
START=$(date +%s)
mkdir -p "$OUT_DIR" "$RES"
LOG="$OUT_DIR/gpu_paper_profile.log"
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
bring_back() {  # copy only the CSV/JSON into $OUT/<env>/
  for d in "$RES"/cuda-*; do
    [ -d "$d" ] || continue
    mkdir -p "$OUT_DIR/$(basename "$d")"
    cp "$d"/*.csv "$d"/*.json "$OUT_DIR/$(basename "$d")/" 2>/dev/null || true
  done
}
trap bring_back EXIT
{
  echo "== $(date -u +%FT%TZ) gpu_paper_profile.sh, budget ${BUDGET_S}s"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  $PY -c 'import torch, numpy, google.protobuf as pb; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0), "numpy", numpy.__version__, "protobuf", pb.__version__)' || exit 3
  $PY -c 'import pda_repro._generated.caffe_pb2' || { echo "pda_repro/_generated is missing: carry it"; exit 3; }
  common=(benchmark run --backend torch --device cuda --batch 160 --threads 0 --results "$RES")  # 0: the libraries' defaults
  timeout "$(left)" $PY -m pda_repro.cli "${common[@]}" --model alexnet,googlenet,vgg16 --profile paper --experiments table1
  timeout "$(left)" $PY -m pda_repro.cli "${common[@]}" --model alexnet,googlenet,vgg16 --profile quick --experiments fig12
  for m in alexnet googlenet vgg16; do
    t=$(left)
    if [ "$t" -lt 30 ]; then echo "== no time left for the paper profile of $m"; continue; fi
    echo "== paper profile, Fig 12, $m: ${t}s left"
    timeout "$t" $PY -m pda_repro.cli "${common[@]}" --model "$m" --profile paper --experiments fig12 \
      || echo "== $m: paper profile did not finish in time (quick-profile rows stand)"
  done
  echo "== done after $(( $(date +%s) - START ))s"
} 2>&1 | tee "$LOG"
