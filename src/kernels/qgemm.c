/* int8 kernels: variant choice (once), A packing for any variant's layout,
 * the scalar GEMM over a packed layout, the per-thread scratch buffer, the
 * OpenMP split of vmc_qgemm_mt, int4 packing and the depthwise dispatch.
 *
 * Determinism: each C element is an exact integer sum followed by the same
 * fp32 epilogue, whatever the variant, tile or block it is computed in, so a
 * split over threads gives the single-threaded bits. */
#include "kernels/qgemm.h"

#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---- variants -------------------------------------------------------------- */

const vmc_qgemm_variant *const vmc_qgemm_variants[] = {
    &vmc_qgemm_u8s8s32__ref,
    &vmc_qgemm_u8s8s32_6x16__avx2,
    &vmc_qgemm_u8s8s32_6x16_narrow__avx2,
    &vmc_qgemm_u8s8s32_4x24__avxvnni,
    &vmc_qgemm_u8s8s32_8x32__avx512vnni,
};
const int vmc_qgemm_variant_count =
    (int)(sizeof vmc_qgemm_variants / sizeof vmc_qgemm_variants[0]);
_Static_assert(sizeof vmc_qgemm_variants / sizeof vmc_qgemm_variants[0] == 5,
               "one entry per variant");

int vmc_qgemm_variant_ok(const vmc_qgemm_variant *v) {
  return (vmc_cpu_features() & v->needs) == v->needs;
}

/* Chosen once; a race between first callers stores the same pointer twice. */
static _Atomic(const vmc_qgemm_variant *) g_best;

const vmc_qgemm_variant *vmc_qgemm_best(void) {
  const vmc_qgemm_variant *v = atomic_load_explicit(&g_best, memory_order_acquire);
  if (v) return v;
  const int avx512 = vmc_isa_level() == VMC_ISA_AVX512;
  const int avx2 = vmc_isa_level() >= VMC_ISA_AVX2;
  if (avx512 && vmc_qgemm_variant_ok(&vmc_qgemm_u8s8s32_8x32__avx512vnni))
    v = &vmc_qgemm_u8s8s32_8x32__avx512vnni;
  else if (avx2 && vmc_qgemm_variant_ok(&vmc_qgemm_u8s8s32_4x24__avxvnni))
    v = &vmc_qgemm_u8s8s32_4x24__avxvnni;
  else if (avx2 && vmc_qgemm_variant_ok(&vmc_qgemm_u8s8s32_6x16__avx2))
    v = &vmc_qgemm_u8s8s32_6x16__avx2;
  else
    v = &vmc_qgemm_u8s8s32__ref;
  atomic_store_explicit(&g_best, v, memory_order_release);
  return v;
}

int vmc_qgemm_pair_max(int M, int K, const void *A, int lda, int s4) {
  int most = 0;
  for (int m = 0; m < M; m++)
    for (int k = 0; k < K; k += 2) {
      const size_t i = (size_t)m * (size_t)lda + (size_t)k;
      int a = s4 ? vmc_s4_get(A, i) : ((const int8_t *)A)[i], b = 0;
      if (k + 1 < K) b = s4 ? vmc_s4_get(A, i + 1) : ((const int8_t *)A)[i + 1];
      const int sum = (a < 0 ? -a : a) + (b < 0 ? -b : b);
      if (sum > most) most = sum;
    }
  return most;
}

const vmc_qgemm_variant *vmc_qgemm_for_weights(const vmc_qgemm_variant *v, int pair,
                                               int upgrade) {
  const vmc_qgemm_variant *wide = &vmc_qgemm_u8s8s32_6x16__avx2,
                          *narrow = &vmc_qgemm_u8s8s32_6x16_narrow__avx2;
  if (v == narrow && pair > narrow->pair_max) return wide;
  if (v == wide && upgrade && pair <= narrow->pair_max) return narrow;
  return v;
}

/* ---- packed A ---------------------------------------------------------------- */

static size_t kpad_of(const vmc_qgemm_variant *v, int K) {
  return (size_t)(K + v->ka - 1) / (size_t)v->ka * (size_t)v->ka;
}

size_t vmc_qgemm_packed_a_size(const vmc_qgemm_variant *v, int M, int K) {
  if (!v) v = vmc_qgemm_best();
  if (M <= 0 || K <= 0) return 0;
  const size_t mpad = (size_t)(M + v->mr - 1) / (size_t)v->mr * (size_t)v->mr;
  return mpad * kpad_of(v, K) * (size_t)v->a_bytes;
}

/* Index of element (m, k) in v's packed A (qgemm.h). */
static inline size_t packed_index(const vmc_qgemm_variant *v, size_t kgroups, int m,
                                  int k) {
  const size_t mr = (size_t)v->mr, ka = (size_t)v->ka;
  return (((size_t)m / mr) * kgroups + (size_t)k / ka) * (mr * ka) +
         ((size_t)m % mr) * ka + (size_t)k % ka;
}

/* Plan-time work: a plain scalar loop over the padded matrix. */
static void pack_a(const vmc_qgemm_variant *v, int M, int K, const void *A, int lda,
                   int s4, void *packed) {
  if (!v) v = vmc_qgemm_best();
  if (M <= 0 || K <= 0) return;
  const size_t kpad = kpad_of(v, K), kgroups = kpad / (size_t)v->ka;
  const int mpad = (M + v->mr - 1) / v->mr * v->mr;
  for (int m = 0; m < mpad; m++)
    for (int k = 0; k < (int)kpad; k++) {
      int8_t a = 0;
      if (m < M && k < K) {
        const size_t i = (size_t)m * (size_t)lda + (size_t)k;
        a = s4 ? vmc_s4_get(A, i) : ((const int8_t *)A)[i];
      }
      const size_t at = packed_index(v, kgroups, m, k);
      if (v->a_bytes == 2) {
        const int16_t w = a; /* packed may have any alignment */
        memcpy((uint8_t *)packed + 2 * at, &w, sizeof w);
      } else {
        ((int8_t *)packed)[at] = a;
      }
    }
}

void vmc_qgemm_pack_a(const vmc_qgemm_variant *v, int M, int K, const int8_t *A,
                      int lda, void *packed) {
  pack_a(v, M, K, A, lda, 0, packed);
}

void vmc_qgemm_pack_a_s4(const vmc_qgemm_variant *v, int M, int K, const uint8_t *A4,
                         int lda, void *packed) {
  pack_a(v, M, K, A4, lda, 1, packed);
}

/* ---- the scalar GEMM over a packed layout ------------------------------------ */

static inline int packed_at(const vmc_qgemm_variant *v, const void *pa, size_t kgroups,
                            int m, int k) {
  const size_t i = packed_index(v, kgroups, m, k);
  if (v->a_bytes == 2) {
    int16_t x;
    memcpy(&x, (const uint8_t *)pa + 2 * i, sizeof x);
    return x;
  }
  return ((const int8_t *)pa)[i];
}

void vmc_qgemm_packed_scalar(const vmc_qgemm_variant *layout, int M, int N, int K,
                             const void *packed_a, const uint8_t *B, int ldb,
                             const int32_t *boff, const vmc_qepi *epi, void *C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K < 0) K = 0;
  const vmc_qepi_prep p = vmc_qepi_prepare(epi);
  const size_t kgroups = kpad_of(layout, K) / (size_t)layout->ka;
  const size_t osz = vmc_qout_bytes(epi->out);
  for (int m = 0; m < M; m++) {
    uint8_t *c = (uint8_t *)C + (size_t)m * (size_t)ldc * osz;
    for (int n = 0; n < N; n++) {
      uint32_t acc = 0; /* wraps mod 2^32, as vpaddd / vpdpbusd */
      for (int k = 0; k < K; k++)
        acc += (uint32_t)(packed_at(layout, packed_a, kgroups, m, k) *
                          (int)vmc_qgemm_brow(B, (size_t)ldb, boff, k)[n]);
      vmc_qepi_store1(epi, &p, m, (int32_t)acc, c, (size_t)n);
    }
  }
}

/* ---- per-thread scratch ------------------------------------------------------ */

void *vmc_qscratch(size_t bytes) { return vmc_thread_scratch(VMC_SCRATCH_QGEMM, bytes); }

/* ---- entry points ------------------------------------------------------------ */

void vmc_qgemm(int M, int N, int K, const void *packed_a, const uint8_t *B, int ldb,
               const vmc_qepi *epi, void *C, int ldc) {
  vmc_qgemm_best()->run(M, N, K, packed_a, B, ldb, NULL, epi, C, ldc);
}

/* Below this many multiply-adds a thread team costs more than it saves
 * (about 3x the fp32 GEMM's threshold: int8 runs about 3x faster). */
#define MT_MIN_WORK (384.0 * 1024.0)

void vmc_qgemm_run_mt(const vmc_qgemm_variant *v, int M, int N, int K,
                      const void *packed_a, const uint8_t *B, int ldb,
                      const int32_t *boff, const vmc_qepi *epi, void *C, int ldc) {
  if (M <= 0 || N <= 0) return;
  const int nt = vmc_get_threads();
  if (nt <= 1 || omp_in_parallel() || (double)M * N * (K > 0 ? K : 1) < MT_MIN_WORK) {
    v->run(M, N, K, packed_a, B, ldb, boff, epi, C, ldc);
    return;
  }
  /* Split N (pixels, the long side of conv GEMMs) in whole register tiles
   * unless it has fewer tiles than threads and M is longer; M blocks are
   * whole A panels.  Each block packs its own part of B. */
  const int by_n = (N + v->nr - 1) / v->nr >= nt || N >= M;
  const int len = by_n ? N : M, align = by_n ? v->nr : v->mr;
  const int units = (len + align - 1) / align;
  const int per = (units + nt - 1) / nt;
  const int block = per * align, nblocks = (units + per - 1) / per;
  if (nblocks <= 1) {
    v->run(M, N, K, packed_a, B, ldb, boff, epi, C, ldc);
    return;
  }
  const size_t osz = vmc_qout_bytes(epi->out);
  const size_t a_row = kpad_of(v, K > 0 ? K : 0) * (size_t)v->a_bytes;
#pragma omp parallel for num_threads(nblocks) schedule(static, 1)
  for (int t = 0; t < nblocks; t++) {
    const int lo = t * block, n = len - lo < block ? len - lo : block;
    if (by_n) {
      v->run(M, n, K, packed_a, B + lo, ldb, boff, epi, (uint8_t *)C + (size_t)lo * osz,
             ldc);
    } else {
      vmc_qepi e = *epi;
      if (e.bias) e.bias += lo;
      if (e.scale && !e.per_tensor) e.scale += lo;
      v->run(n, N, K, (const uint8_t *)packed_a + (size_t)lo * a_row, B, ldb, boff, &e,
             (uint8_t *)C + (size_t)lo * (size_t)ldc * osz, ldc);
    }
  }
}

void vmc_qgemm_mt(int M, int N, int K, const void *packed_a, const uint8_t *B,
                  int ldb, const vmc_qepi *epi, void *C, int ldc) {
  vmc_qgemm_run_mt(vmc_qgemm_best(), M, N, K, packed_a, B, ldb, NULL, epi, C, ldc);
}

/* ---- int4 -------------------------------------------------------------------- */

size_t vmc_s4_pack(const int8_t *src, size_t n, uint8_t *dst) {
  size_t clamped = 0;
  for (size_t i = 0; i < n; i += 2) {
    uint8_t b = 0;
    for (size_t j = 0; j < 2 && i + j < n; j++) {
      int v = src[i + j];
      if (v < -8 || v > 7) {
        v = v < -8 ? -8 : 7;
        clamped++;
      }
      b |= (uint8_t)((v & 15) << (4 * j));
    }
    dst[i / 2] = b;
  }
  return clamped;
}

void vmc_s4_unpack(const uint8_t *src, size_t n, int8_t *dst) {
  for (size_t i = 0; i < n; i++) dst[i] = vmc_s4_get(src, i);
}

/* ---- depthwise ---------------------------------------------------------------- */

static _Atomic(vmc_qdwconv_fn) g_dw;

void vmc_qdwconv(const vmc_qdw_params *p, const uint8_t *x, const int8_t *wk,
                 const vmc_qepi *epi, void *y) {
  vmc_qdwconv_fn f = atomic_load_explicit(&g_dw, memory_order_acquire);
  if (!f) {
    const vmc_qgemm_variant *v = vmc_qgemm_best();
    f = v == &vmc_qgemm_u8s8s32_8x32__avx512vnni ? vmc_qdwconv__avx512
        : v != &vmc_qgemm_u8s8s32__ref           ? vmc_qdwconv__avx2
                                                 : vmc_qdwconv__ref;
    atomic_store_explicit(&g_dw, f, memory_order_release);
  }
  f(p, x, wk, epi, y);
}

/* ---- direct convolution ------------------------------------------------------- */

void vmc_qconv_pack_w(int M, int kq, const int8_t *w, int8_t *dst) {
  const int blocks = (M + 15) / 16;
  for (int b = 0; b < blocks; b++)
    for (int q = 0; q < kq; q++)
      for (int j = 0; j < 16; j++)
        for (int i = 0; i < 4; i++) {
          const int m = 16 * b + j;
          dst[((size_t)b * kq + q) * 64 + 4 * j + i] =
              m < M ? w[(size_t)m * 4 * kq + 4 * (size_t)q + i] : 0;
        }
}

vmc_qconv_fn vmc_qconv_best(void) {
  const vmc_qgemm_variant *g = vmc_qgemm_best();
  return g == &vmc_qgemm_u8s8s32_8x32__avx512vnni ? vmc_qconv__avx512
         : g == &vmc_qgemm_u8s8s32_6x16__avx2     ? vmc_qconv__avx2
                                                  : NULL;
}

int vmc_qconv_pair_max(vmc_qconv_fn f) {
  return f == vmc_qconv__avx2 ? vmc_qgemm_u8s8s32_6x16_narrow__avx2.pair_max : 0;
}

void vmc_qdwp_pack_w(int C, int taps, const int8_t *wk, int8_t *dst) {
  memset(dst, 0, vmc_qdwp_w_bytes(C, taps));
  for (int c = 0; c < C; c++)
    for (int t = 0; t < taps; t++) dst[vmc_qdwp_w_at(taps, c, t)] = wk[(size_t)c * taps + t];
}

vmc_qdwp_fn vmc_qdwp_best(void) {
  return vmc_qconv_best() == vmc_qconv__avx512 ? vmc_qdwp__avx512 : NULL;
}
