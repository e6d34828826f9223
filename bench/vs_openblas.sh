#!/bin/sh
# vmc's fp32 GEMM against OpenBLAS (Debian's libopenblas-dev), same threads,
# same run: squares, and the conv GEMMs of resnet8/resnet20 in vmc's NCHW
# layout and batch-folded NHWC, each also as a fraction of the machine's FMA
# peak (bench/bench_peak.c prints it alone).
# Usage: bench/vs_openblas.sh [bench_blas options]   (env BUILD=build)
# OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which this machine's environment
# sets, are cleared for this command only, so OpenBLAS picks its own kernels
# and blocking for the CPU it detects (the core it reports is printed).
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
if [ ! -e /usr/lib/x86_64-linux-gnu/libopenblas.so.0 ] && ! ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so\.0'; then
  echo "OpenBLAS is missing: apt-get install -y libopenblas-dev (as root), then rerun" >&2
fi
make -s BUILD="$BUILD" "$BUILD/bench/bench_blas" >&2
echo "date: $(date -u +%Y-%m-%dT%H:%MZ); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
exec env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$BUILD/bench/bench_blas" "$@"
