/* qelt.c's element-wise loops built with AVX-512 (16 lanes). */
#define QELT_SFX avx512
#include "kernels/qelt_loops.h"
