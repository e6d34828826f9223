/* qelt.c's element-wise loops built with AVX2 (8 lanes). */
#define QELT_SFX avx2
#include "kernels/qelt_loops.h"
