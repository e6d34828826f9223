#!/bin/sh
# vmc's post-training int8 quantization against PyTorch's own (Debian's python3-torch,
# FX graph mode static PTQ on the oneDNN engine), the same trained float weights, in one run:
#  1. accuracy on the 10,000 Fashion-MNIST test images: the float model in both (PyTorch's
#     must match `vmc eval`), then `vmc quantize --scheme $SCHEME --per-channel` with each
#     observer of $OBSERVERS and PyTorch's PTQ (per-channel s8 weights, u8 activations) with
#     its counterpart: minmax <-> MinMaxObserver, kl and mse <-> HistogramObserver (the
#     activation observer of PyTorch's default qconfig, which minimises the L2 error);
#     512 calibration images, the first of the training split, on both sides;
#  2. speed of the int8 models of the archs in $SPEED: batch-1 median latency and batch-64
#     images/s, vmc (`vmc bench` on the minmax-quantized file: whatever path vmc runs on a
#     quantized file, printed as the "vmc path" column: precision, ISA, layout) and PyTorch
#     alternating, $REPEATS rounds; each figure is the median of the rounds' medians.
# Usage: bench/vs_torch_quant.sh [THREADS] [MODEL.vmc ...]
#   Without models it trains resnet8 (8 epochs), resnet20 and mobilenetv2-tiny (15 epochs)
#   with the default recipe into $ZOO (kept: a rerun reuses them; about 2 hours on 2 cores).
# env: VMC (build/vmc), OBSERVERS ("minmax kl mse"), SPEED ("resnet8 resnet20"; empty: none),
#      REPEATS (3), ENGINE (onednn), ZOO (out/zoo), SCHEME (vmc's, w8a8; w7a8: 7-bit weights,
#      the faster kernels of CPUs without VNNI; PyTorch's stays s8 weights)
# Run `make` first.  Prints a markdown table, a row as each result is ready.
set -eu
cd "$(dirname "$0")/.."
VMC=${VMC:-build/vmc}
THREADS=${1:-$(nproc)}
[ $# -gt 0 ] && shift
OBSERVERS=${OBSERVERS:-minmax kl mse}
SPEED=${SPEED-resnet8 resnet20}
REPEATS=${REPEATS:-3}
ENGINE=${ENGINE:-onednn}
SCHEME=${SCHEME:-w8a8}
ZOO=${ZOO:-out/zoo}
PY=/usr/bin/python3
[ -x "$VMC" ] || { echo "build vmc first: make" >&2; exit 1; }
$PY -c 'import torch' 2>/dev/null || { echo "needs Debian's python3-torch: apt-get install python3-torch" >&2; exit 1; }
TMP=$(mktemp -d /tmp/vmc-vs-torch-quant.XXXXXX)
trap 'rm -rf "$TMP"' EXIT INT TERM

num() { sed -n "s/.*\"$1\":[[:space:]]*\([-0-9.e+]*\).*/\1/p" | head -n 1; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# jget FILE EXPR: a field of the peer's JSON (d), e.g. 'd["variants"][0]["accuracy"]'
jget() { $PY -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }
pct() { awk -v a="$1" 'BEGIN { printf "%.2f", 100 * a }'; }
peer_of() { [ "$1" = minmax ] && echo minmax || echo histogram; }

if [ $# -eq 0 ]; then
  mkdir -p "$ZOO"
  for m in resnet8 resnet20 mobilenetv2-tiny; do
    epochs=$([ "$m" = resnet8 ] && echo 8 || echo 15)
    if [ ! -f "$ZOO/$m.vmc" ]; then
      echo "training $m for $epochs epochs into $ZOO/$m.vmc (default recipe, seed 1)" >&2
      "$VMC" train --model "$m" --data fashion-mnist --epochs "$epochs" --threads "$THREADS" \
        --quiet -o "$ZOO/$m.vmc" >&2
    fi
    set -- "$@" "$ZOO/$m.vmc"
  done
fi

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads $THREADS"
echo "vmc: $($VMC --version), scheme $SCHEME; torch: $($PY -c 'import torch; print(torch.__version__)'), engine $ENGINE"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

echo "| model | float accuracy vmc / PyTorch | observer vmc / PyTorch | vmc int8 (change) | PyTorch int8 (change) | vmc drop ≤ PyTorch's | vmc path | int8 b1 latency ms vmc / PyTorch (speed-up) | int8 b64 img/s vmc / PyTorch (ratio) |"
echo "|---|---|---|---:|---:|---|---|---:|---:|"
for model in "$@"; do
  arch=$($PY bench/vmcfile.py --meta architecture "$model")
  vf=$("$VMC" eval "$model" --data fashion-mnist --threads "$THREADS" --quiet --json | num accuracy)
  peers=$(for o in $OBSERVERS; do peer_of "$o"; done | sort -u | tr '\n' ',')
  $PY bench/peer_torch_quant.py --model "$model" --threads "$THREADS" --engine "$ENGINE" \
    --observer "$peers" --expect-accuracy "$vf" --no-speed > "$TMP/peer.json"
  tf=$(jget "$TMP/peer.json" 'd["float_accuracy"]')

  speed_cells="| | |"
  path="–"
  case " $SPEED " in *" $arch "*)
    "$VMC" quantize "$model" --calib fashion-mnist --scheme "$SCHEME" --observer minmax --per-channel \
      --calib-images 512 --threads "$THREADS" --quiet -o "$TMP/speed.vmc" > /dev/null
    v1=""; v64=""; t1=""; t64=""
    i=0
    while [ $i -lt "$REPEATS" ]; do
      o=$("$VMC" bench "$TMP/speed.vmc" --batch 1 --repeats 300 --warmup 20 --threads "$THREADS" --json)
      v1="$v1 $(echo "$o" | num median_ms)"
      path="$(echo "$o" | sed -n 's/.*"precision":[[:space:]]*"\([^"]*\)".*/\1/p'), $(echo "$o" | sed -n 's/.*"isa":[[:space:]]*"\([^"]*\)".*/\1/p')"
      lay=$(echo "$o" | sed -n 's/.*"layout":[[:space:]]*"\([^"]*\)".*/\1/p')
      [ -n "$lay" ] && path="$path, $lay"
      o=$("$VMC" bench "$TMP/speed.vmc" --batch 64 --repeats 40 --warmup 10 --threads "$THREADS" --json)
      v64="$v64 $(echo "$o" | tr -d '\n\t ' | sed 's/.*"batch":64,"median_ms":\([0-9.e+-]*\).*/\1/')"
      $PY bench/peer_torch_quant.py --model "$model" --threads "$THREADS" --engine "$ENGINE" \
        --observer minmax --no-accuracy --repeats-b1 300 --repeats-b64 40 > "$TMP/speed.json"
      t1="$t1 $(jget "$TMP/speed.json" 'd["variants"][0]["b1_latency_ms_median"]')"
      t64="$t64 $(jget "$TMP/speed.json" 'd["variants"][0]["batch_latency_ms_median"]')"
      i=$((i + 1))
    done
    v1=$(echo $v1 | tr ' ' '\n' | median); t1=$(echo $t1 | tr ' ' '\n' | median)
    v64=$(echo $v64 | tr ' ' '\n' | median); t64=$(echo $t64 | tr ' ' '\n' | median)
    speed_cells=$(awk -v v1="$v1" -v t1="$t1" -v v64="$v64" -v t64="$t64" 'BEGIN {
      printf "| %.3f / %.3f (**%.2f×**) | %.0f / %.0f (**%.2f×**) |", v1, t1, t1 / v1,
             64000 / v64, 64000 / t64, t64 / v64 }')
  ;; esac

  first=1
  for obs in $OBSERVERS; do
    "$VMC" quantize "$model" --calib fashion-mnist --scheme "$SCHEME" --observer "$obs" --per-channel \
      --calib-images 512 --threads "$THREADS" --quiet -o "$TMP/q.vmc" > /dev/null
    vq=$("$VMC" eval "$TMP/q.vmc" --data fashion-mnist --threads "$THREADS" --quiet --json | num accuracy)
    pobs=$(peer_of "$obs")
    tq=$(jget "$TMP/peer.json" "[v for v in d['variants'] if v['observer'] == '$pobs'][0]['accuracy']")
    row=$(awk -v vf="$vf" -v tf="$tf" -v vq="$vq" -v tq="$tq" 'BEGIN {
      # accuracies are float32 fractions of 10,000 images: equal within half an image
      dv = 100 * (vf - vq); dt = 100 * (tf - tq)
      printf "| %.2f%% (%+.2f) | %.2f%% (%+.2f) | %s |", 100 * vq, -dv, 100 * tq, -dt,
             (dv <= dt + 0.005 ? "yes" : "**no**") }')
    if [ $first = 1 ]; then
      echo "| $arch | $(pct "$vf")% / $(pct "$tf")% | $obs / $pobs $row $path $speed_cells"
    else
      echo "| | | $obs / $pobs $row | | |"
    fi
    first=0
  done
done

