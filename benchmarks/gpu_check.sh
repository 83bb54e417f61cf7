#!/usr/bin/env bash
# The CUDA path end to end, in a few minutes on one GPU: train, evaluate and segment with
# --device cuda at fp32 and with mixed precision (bf16; fp16 for evaluate and segment),
# timed, beside the same evaluation on the CPU as a reference for the scores.
#
#   benchmarks/gpu_check.sh [OUT]          # default OUT: runs/gpu-check (removed first)
#   PYTHON=.venv/bin/python STEPS=50 EPISODES=300 benchmarks/gpu_check.sh
#   DEVICE=cpu STEPS=2 EPISODES=20 benchmarks/gpu_check.sh   # the script itself, no GPU
#                                                             # (fp16 left out: CUDA only)
#
# Needs the installed .venv (make install: torch, fewseg, the MobileNetV2 weights); uses
# only the built-in synthetic dataset, so it needs no data and no network. Prints one line
# per command (seconds, mIoU) and writes them to OUT/summary.tsv for docs/performance.md.
# Exits non-zero at the first command that fails.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:-runs/gpu-check}
STEPS=${STEPS:-30}
EPISODES=${EPISODES:-300}
DATASET=${DATASET:-synthetic}
DEVICE=${DEVICE:-cuda}
FEWSEG=("$PYTHON" -m fewseg)
if [ "$DEVICE" = cpu ]; then HALF=(); else HALF=(fp16); fi

"$PYTHON" - "$DEVICE" <<'EOF'
import sys, torch
if sys.argv[1] == "cpu":
    print(f"torch {torch.__version__}: a dry run on the CPU (DEVICE=cpu)")
    sys.exit()
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA GPU visible to torch; nothing to check")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF
rm -rf "$OUT"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.tsv"
printf 'what\tseconds\tmIoU\n' >"$SUMMARY"

miou() {  # the mIoU of a report, or '-'
  "$PYTHON" -c 'import json,sys; print("%.2f" % json.load(open(sys.argv[1]))["miou"])' "$1" ||
    echo -
}

timed() {  # timed NAME REPORT_OR_- COMMAND...: runs it, logs it, records seconds and mIoU
  local name=$1 report=$2
  shift 2
  local start end
  start=$(date +%s.%N)
  if ! "$@" >"$OUT/$name.log" 2>&1; then
    echo "gpu_check: FAILED: $name (log: $OUT/$name.log)" >&2
    tail -n 20 "$OUT/$name.log" >&2
    exit 1
  fi
  end=$(date +%s.%N)
  local seconds score
  seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  score=$([ "$report" = - ] && echo - || miou "$report")
  printf '%s\t%s\t%s\n' "$name" "$seconds" "$score" | tee -a "$SUMMARY"
}

train() {  # train NAME PRECISION
  timed "$1" - "${FEWSEG[@]}" train --learner maml --dataset "$DATASET" --fold 0 --shots 1 \
    --steps "$STEPS" --val-every 0 --checkpoint-every "$STEPS" --seed 0 --device "$DEVICE" \
    --precision "$2" --out "$OUT/$1" --no-progress
}

evaluate() {  # evaluate NAME DEVICE PRECISION [EXTRA...]
  local name=$1 device=$2 precision=$3
  shift 3
  timed "$name" "$OUT/$name/report.json" "${FEWSEG[@]}" evaluate --checkpoint "$OUT/train-fp32" \
    --dataset "$DATASET" --fold 0 --shots 1 --episodes "$EPISODES" --seed 0 \
    --device "$device" --precision "$precision" --out "$OUT/$name" --no-progress "$@"
}

# -- train: fp32 and bf16 (fp16 training is refused: it would need loss scaling) --------
train train-fp32 fp32
train train-bf16 bf16
# the bf16 run resumes (its checkpoint is read with map_location=cpu, then moved)
timed resume-bf16 - "${FEWSEG[@]}" train --learner maml --dataset "$DATASET" \
  --fold 0 --shots 1 --steps $((STEPS + 5)) --val-every 0 --checkpoint-every "$STEPS" \
  --seed 0 --device "$DEVICE" --precision bf16 --out "$OUT/train-bf16" --resume --no-progress

# -- evaluate the fp32 checkpoint: CPU reference, CUDA at each precision ---------------
[ "$DEVICE" = cpu ] || evaluate eval-cpu-fp32 cpu fp32
for precision in fp32 bf16 "${HALF[@]}"; do
  evaluate "eval-$DEVICE-$precision" "$DEVICE" "$precision"
done
evaluate "eval-$DEVICE-fp32-original" "$DEVICE" fp32 --score-at original
evaluate "eval-$DEVICE-fp32-workers" "$DEVICE" fp32 --workers 4
timed "eval-$DEVICE-baseline" "$OUT/eval-$DEVICE-baseline/report.json" "${FEWSEG[@]}" evaluate \
  --learner baseline --dataset "$DATASET" --fold 0 --shots 5 --episodes "$EPISODES" \
  --seed 0 --device "$DEVICE" --out "$OUT/eval-$DEVICE-baseline" --no-progress

# -- segment: support and query images written from the synthetic dataset --------------
"$PYTHON" - "$OUT/images" "$DATASET" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from fewseg.data.spec import open_source
out, spec = Path(sys.argv[1]), sys.argv[2]
source = open_source(spec)
c = source.fold_split("0").test[0]
for k, image_id in enumerate(source.images_of(c)[:6]):
    sample = source.load(image_id, c)
    kind = "support" if k < 2 else "query"
    (out / kind).mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample.image).save(out / kind / f"{k}.jpg")
    if kind == "support":
        Image.fromarray((sample.mask * 255).astype(np.uint8)).save(out / kind / f"{k}.png")
EOF
for precision in fp32 bf16 "${HALF[@]}"; do
  timed "segment-$DEVICE-$precision" - "${FEWSEG[@]}" segment --checkpoint "$OUT/train-fp32" \
    --support-dir "$OUT/images/support" --query "$OUT/images/query" --device "$DEVICE" \
    --precision "$precision" --out "$OUT/segment-$precision" --no-progress
done

# -- what the CPU and the GPU agree on --------------------------------------------------
"$PYTHON" - "$OUT" "$DEVICE" "${HALF[@]}" <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
out, device, half = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
cpu = json.loads((out / "eval-cpu-fp32/report.json").read_text())
for name in (f"eval-{device}-{p}" for p in ("fp32", "bf16", *half)):
    gpu = json.loads((out / name / "report.json").read_text())
    print(f"{name}: mIoU {gpu['miou']:.2f} against the CPU's {cpu['miou']:.2f} "
          f"(difference {gpu['miou'] - cpu['miou']:+.3f}); device {gpu['settings']['device']}, "
          f"precision {gpu['settings'].get('precision')}")
masks = {p: sorted((out / f"segment-{p}" / "masks").glob("*.png")) for p in ("fp32", "bf16", *half)}
for p in ("bf16", *half):
    same = [np.mean(np.asarray(Image.open(a)) == np.asarray(Image.open(b)))
            for a, b in zip(masks["fp32"], masks[p], strict=True)]
    print(f"segment {p}: {len(same)} masks, pixels equal to fp32's: {100 * min(same):.2f}% at worst")
EOF
echo "gpu_check: all commands passed; summary: $SUMMARY"
