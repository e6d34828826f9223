#!/bin/sh
# vmc against PyTorch (Debian's python3-torch) on the same machine, in one run:
#  1. training (resnet8 unless TRAIN_MODEL says otherwise): one epoch of
#     Fashion-MNIST (batch 128, SGD Nesterov, same thread count), images/s
#     for both and the ratio;
#  2. fp32 inference of MODELS at batch 1 and 64: median latency and
#     images/s for both and the ratio.
# Each measurement runs REPEATS times, vmc and PyTorch alternating, so both
# see the machine's same slow and fast spells; the tables give the medians
# over the repeats (inference: of each run's median latency) and, with
# REPEATS > 1, the range of the per-repeat ratios.
# Usage: bench/vs_torch.sh [THREADS]
#   env IMAGES=60000 REPEATS=1 MODELS="resnet8 resnet20" TRAIN_MODEL=resnet8
# Run `make` first.  Prints a markdown table.
set -eu
cd "$(dirname "$0")/.."
VMC=${VMC:-build/vmc}
THREADS=${1:-$(nproc)}
IMAGES=${IMAGES:-60000}
REPEATS=${REPEATS:-1}
MODELS=${MODELS:-resnet8 resnet20}
TRAIN_MODEL=${TRAIN_MODEL:-resnet8}
PY=/usr/bin/python3
[ -x "$VMC" ] || { echo "build vmc first: make" >&2; exit 1; }
$PY -c 'import torch' 2>/dev/null || { echo "needs Debian's python3-torch: apt-get install python3-torch" >&2; exit 1; }

num() { sed -n "s/.*\"$1\":[[:space:]]*\([-0-9.e+]*\).*/\1/p" | head -n 1; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads $THREADS"
echo "vmc: $($VMC --version); torch: $($PY -c 'import torch; print(torch.__version__)')"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo

echo "| $TRAIN_MODEL training, batch 128, $IMAGES images | vmc img/s | PyTorch img/s | vmc / PyTorch |"
echo "|---|---:|---:|---:|"
v=""; t=""
i=0
while [ $i -lt "$REPEATS" ]; do
  v="$v $($VMC train --model "$TRAIN_MODEL" --data fashion-mnist --epochs 1 --no-eval --limit-train "$IMAGES" \
        --threads "$THREADS" --json --quiet -o /tmp/vmc-bench-$$.vmc | num images_per_sec)"
  t="$t $($PY bench/peer_torch.py --task train --model "$TRAIN_MODEL" --threads "$THREADS" --batch 128 \
        --images "$IMAGES" | num images_per_sec)"
  i=$((i + 1))
done
rm -f /tmp/vmc-bench-$$.vmc
vm=$(echo $v | tr ' ' '\n' | median); tm=$(echo $t | tr ' ' '\n' | median)
printf '| median of %s | %.0f | %.0f | **%s** |\n\n' "$REPEATS" "$vm" "$tm" "$(ratio "$vm" "$tm")"

echo "| fp32 inference | batch | vmc median ms | PyTorch median ms | vmc img/s | PyTorch img/s | vmc / PyTorch |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for m in $MODELS; do
  for b in 1 64; do
    reps=$([ "$b" = 1 ] && echo 300 || echo 40)
    v=""; t=""; r=""
    i=0
    while [ $i -lt "$REPEATS" ]; do
      out=$($VMC bench "$m" --batch "$b" --repeats "$reps" --warmup 20 --threads "$THREADS" --json)
      vms=$(echo "$out" | sed -n 's/.*"median_ms":[[:space:]]*\([0-9.e+-]*\).*/\1/p' | tail -n 1)
      tms=$($PY bench/peer_torch.py --task infer --model "$m" --batch "$b" --threads "$THREADS" \
              --repeats "$reps" | num latency_ms_median)
      v="$v $vms"; t="$t $tms"; r="$r $(ratio "$tms" "$vms")"
      i=$((i + 1))
    done
    vms=$(echo $v | tr ' ' '\n' | median); tms=$(echo $t | tr ' ' '\n' | median)
    vi=$(awk -v b="$b" -v ms="$vms" 'BEGIN { printf "%.0f", b * 1000 / ms }')
    ti=$(awk -v b="$b" -v ms="$tms" 'BEGIN { printf "%.0f", b * 1000 / ms }')
    spread=""
    [ "$REPEATS" -gt 1 ] && spread=" ($(echo $r | tr ' ' '\n' | sort -g | sed -n '1p;$p' | paste -sd '-')x)"
    printf '| %s | %s | %.3f | %.3f | %s | %s | **%s**%s |\n' "$m" "$b" "$vms" "$tms" "$vi" "$ti" \
      "$(ratio "$tms" "$vms")" "$spread"
  done
done
