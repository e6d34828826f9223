#!/bin/sh
# Trains every zoo model on the full Fashion-MNIST with the default recipe and
# prints the test accuracy (full 10,000-image test set), the wall time and
# vmc's peak resident memory.  Takes about an hour on two cores.
# Usage: bench/accuracy.sh [MODEL ...]   (default: all four)
# env: OUT (default out/accuracy), THREADS (default: all cores)
set -eu
cd "$(dirname "$0")/.."
VMC=${VMC:-build/vmc}
OUT=${OUT:-out/accuracy}
THREADS=${THREADS:-$(nproc)}
mkdir -p "$OUT"
[ $# -gt 0 ] || set -- lenet5 resnet8 resnet20 mobilenetv2-tiny
echo "| model | epochs | recipe | test accuracy | best epoch accuracy | wall time | peak RSS |"
echo "|---|---:|---|---:|---:|---:|---:|"
for m in "$@"; do
  case $m in
    lenet5) epochs=10; extra=""; recipe="default" ;;
    resnet8) epochs=8; extra=""; recipe="default" ;;
    *) epochs=15; extra=""; recipe="default" ;;
  esac
  /usr/bin/time -v -o "$OUT/$m.time" "$VMC" train --model "$m" --data fashion-mnist --epochs "$epochs" \
    --threads "$THREADS" $extra --json --quiet -o "$OUT/$m.vmc" > "$OUT/$m.json"
  acc=$("$VMC" eval "$OUT/$m.vmc" --json | sed -n 's/.*"accuracy":[[:space:]]*\([0-9.]*\).*/\1/p')
  best=$(sed -n 's/.*"test_accuracy":[[:space:]]*\([0-9.]*\).*/\1/p' "$OUT/$m.json" | sort -g | tail -n 1)
  secs=$(sed -n 's/^[[:space:]]*"seconds":[[:space:]]*\([0-9.]*\).*/\1/p' "$OUT/$m.json" | head -n 1)
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): \([0-9]*\)/\1/p' "$OUT/$m.time")
  awk -v m="$m" -v e="$epochs" -v r="$recipe" -v a="$acc" -v b="$best" -v s="$secs" -v k="$rss" \
    'BEGIN { printf "| %s | %d | %s | %.2f%% | %.2f%% | %.0f s | %.0f MiB |\n", m, e, r, 100*a, 100*b, s, k/1024 }'
done
