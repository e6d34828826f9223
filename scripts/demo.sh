#!/bin/sh
# The main job, end to end: train a zoo model on Fashion-MNIST, evaluate it,
# benchmark it, and print one summary table.
#   scripts/demo.sh [VMC_BINARY]
# Environment: DEMO_MODEL (default resnet8), DEMO_EPOCHS (default 8),
# DEMO_OUT (default out/), VMC_THREADS (default: all cores).
set -eu
VMC=${1:-build/vmc}
MODEL=${DEMO_MODEL:-resnet8}
EPOCHS=${DEMO_EPOCHS:-8}
OUT=${DEMO_OUT:-out}
THREADS=${VMC_THREADS:-$(nproc)}
mkdir -p "$OUT"
FP32="$OUT/$MODEL.vmc"

# Reads a numeric field of a JSON object printed by vmc --json (the last
# occurrence: the top-level totals follow the per-layer entries in info.json).
field() { sed -n "s/.*\"$2\":[[:space:]]*\([-0-9.e+]*\).*/\1/p" "$1" | tail -n 1; }

echo "== train $MODEL on fashion-mnist for $EPOCHS epochs ($THREADS threads)"
"$VMC" train --model "$MODEL" --data fashion-mnist --epochs "$EPOCHS" --threads "$THREADS" \
  --checkpoint "$OUT/$MODEL.ckpt" -o "$FP32"

echo "== evaluate on the 10,000 test images"
"$VMC" eval "$FP32" --json --threads "$THREADS" > "$OUT/eval.json"
echo "== benchmark inference"
"$VMC" bench "$FP32" --batch 64 --json --threads "$THREADS" > "$OUT/bench.json"
"$VMC" info "$FP32" --json > "$OUT/info.json"

acc=$(field "$OUT/eval.json" accuracy)
params=$(field "$OUT/info.json" params)
macs=$(field "$OUT/info.json" macs)
bytes=$(field "$OUT/info.json" file_bytes)
lat1=$(sed -n 's/.*"median_ms":[[:space:]]*\([0-9.e+-]*\).*/\1/p' "$OUT/bench.json" | sed -n 1p)
lat64=$(sed -n 's/.*"median_ms":[[:space:]]*\([0-9.e+-]*\).*/\1/p' "$OUT/bench.json" | sed -n 2p)
ips64=$(sed -n 's/.*"images_per_sec":[[:space:]]*\([0-9.e+-]*\).*/\1/p' "$OUT/bench.json" | sed -n 2p)

echo
printf '%-18s %-10s %9s %10s %9s %11s %12s %12s\n' model precision "test acc" params "MMACs" "file KiB" "b1 lat ms" "b64 img/s"
awk -v m="$MODEL" -v a="$acc" -v p="$params" -v mc="$macs" -v b="$bytes" -v l1="$lat1" -v t="$ips64" \
  'BEGIN { printf "%-18s %-10s %8.2f%% %10d %9.2f %11.1f %12.3f %12.0f\n", m, "fp32", 100*a, p, mc/1e6, b/1024, l1, t }'
echo
echo "model: $FP32   (inspect with: $VMC info $FP32)"
