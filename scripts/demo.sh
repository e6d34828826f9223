#!/bin/sh
# The main job, end to end: train a zoo model on Fashion-MNIST, evaluate it,
# benchmark it, and print one summary table.
#   scripts/demo.sh [VMC_BINARY]
# Environment: DEMO_MODEL (default resnet8), DEMO_EPOCHS (default 8),
# DEMO_OUT (default out/), VMC_THREADS (default: all cores), DEMO_W4_OPTS (options
# of the 4-bit quantization, default --adaround).
set -eu
VMC=${1:-build/vmc}
MODEL=${DEMO_MODEL:-resnet8}
EPOCHS=${DEMO_EPOCHS:-8}
OUT=${DEMO_OUT:-out}
THREADS=${VMC_THREADS:-$(nproc)}
mkdir -p "$OUT"
FP32="$OUT/$MODEL.vmc"
W4_OPTS=${DEMO_W4_OPTS---adaround}

# Reads a numeric field of a JSON object printed by vmc --json (the last
# occurrence: the top-level totals follow the per-layer entries in info.json).
field() { sed -n "s/.*\"$2\":[[:space:]]*\([-0-9.e+]*\).*/\1/p" "$1" | tail -n 1; }

echo "== train $MODEL on fashion-mnist for $EPOCHS epochs ($THREADS threads)"
"$VMC" train --model "$MODEL" --data fashion-mnist --epochs "$EPOCHS" --threads "$THREADS" \
  --checkpoint "$OUT/$MODEL.ckpt" -o "$FP32"

Q8="$OUT/$MODEL-int8.vmc"
Q7="$OUT/$MODEL-int7.vmc"
Q4="$OUT/$MODEL-int4.vmc"
echo "== quantize: int8 weights and activations (w8a8), 7-bit weights (w7a8), and 4-bit"
echo "   weights (w4a8 $W4_OPTS)"
"$VMC" quantize "$FP32" --data fashion-mnist --scheme w8a8 --threads "$THREADS" --quiet -o "$Q8"
"$VMC" quantize "$FP32" --data fashion-mnist --scheme w7a8 --threads "$THREADS" --quiet -o "$Q7"
"$VMC" quantize "$FP32" --data fashion-mnist --scheme w4a8 $W4_OPTS --threads "$THREADS" --quiet -o "$Q4"

# One table row per model file: test accuracy, size, latency, throughput.
row() { # label file
  "$VMC" eval "$2" --json --threads "$THREADS" > "$OUT/eval.json"
  # Latency: one image on one thread; throughput: batches of 64 on every thread.
  "$VMC" bench "$2" --batch 1 --json --threads 1 > "$OUT/bench1.json"
  "$VMC" bench "$2" --batch 64 --json --threads "$THREADS" > "$OUT/bench.json"
  acc=$(field "$OUT/eval.json" accuracy)
  bytes=$(wc -c < "$2")
  lat1=$(sed -n 's/.*"median_ms":[[:space:]]*\([0-9.e+-]*\).*/\1/p' "$OUT/bench1.json" | sed -n 1p)
  ips64=$(sed -n 's/.*"images_per_sec":[[:space:]]*\([0-9.e+-]*\).*/\1/p' "$OUT/bench.json" | sed -n 2p)
  path=$(sed -n 's/.*"runtime":[[:space:]]*"\([a-z0-9-]*\)".*/\1/p' "$OUT/bench.json" | sed -n 1p)
  layout=$(sed -n 's/.*"layout":[[:space:]]*"\([a-z0-9-]*\)".*/\1/p' "$OUT/bench.json" | sed -n 1p)
  echo "$1 $acc $bytes $lat1 $ips64 ${path:-fp32}${layout:+/$layout}" >> "$OUT/table.txt"
}
echo "== evaluate on the 10,000 test images and benchmark inference"
: > "$OUT/table.txt"
row fp32 "$FP32"
row int8 "$Q8"
row int7w "$Q7"
row int4w "$Q4"
"$VMC" info "$FP32" --json > "$OUT/info.json"
params=$(field "$OUT/info.json" params)
macs=$(field "$OUT/info.json" macs)

echo
echo "$MODEL: $params parameters, $(awk -v m="$macs" 'BEGIN { printf "%.2f", m / 1e6 }') MMACs per image, $THREADS threads"
printf '%-9s %9s %7s %10s %7s %11s %11s %8s  %s\n' precision "test acc" drop "file KiB" size "b1 ms/1thr" "b64 img/s" speedup runtime
awk 'NR == 1 { a0 = $2; b0 = $3; t0 = $5 }
     { printf "%-9s %8.2f%% %7.2f %10.1f %6.1f%% %11.3f %11.0f %7.2fx  %s\n", $1, 100 * $2,
       100 * (a0 - $2), $3 / 1024, 100 * $3 / b0, $4, $5, $5 / t0, $6 }' "$OUT/table.txt"
echo
echo "models: $FP32 $Q8 $Q7 $Q4   (inspect with: $VMC info FILE)"
