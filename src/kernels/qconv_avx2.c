/* The direct int8 convolution on pixel-major activations (qgemm.h,
 * vmc_qconv), AVX2 without VNNI, for narrow weights: every pair of a quad's
 * weights (bytes 0-1 and 2-3) with |a| + |b| <= 128, so that vpmaddubsw's
 * s16 pair sums cannot saturate (255 * 128 = 32640); vmc_qconv_pair_max
 * says so, and the integer runtime keeps the planar layout for any other
 * weights.
 *
 * Output channels in lanes, as the AVX-512 VNNI variant: a tile is one block
 * of 16 channels (two ymm of 8) x P pixels of one output row, 2P
 * accumulators kept over all kq quads.  Per quad the block's two weight
 * vectors are loaded once and each pixel's 4 input bytes are broadcast for
 * two steps of vpmaddubsw (4 products into 2 exact s16 sums per lane), a
 * vpmaddwd by ones (their s32 sum) and a vpaddd.  P <= 6: 12 accumulators,
 * the weights, the broadcast and a product fill the 16 registers.  A row
 * is split into the fewest such tiles, of sizes that differ by at most one
 * (a 14-pixel row 5 + 5 + 4, a 7-pixel one 4 + 3).  The write-back
 * requantizes from registers (qepi_ymm.h's code8, put8) and, with a fused
 * add, adds the residual as vmc_qconv_add1 does; 8 channels of a pixel are
 * 8 contiguous bytes, the last block's past M left alone. */
#include "kernels/qepi_ymm.h"
#include "kernels/qgemm.h"

#include <immintrin.h>
#include <string.h>

#define PMAX 6

/* The fused add's constants. */
typedef struct add_ctx {
  __m256 sc, sr, inv, lo, hi;
  __m256i zc, zr, zo;
} add_ctx;

static void add_init(add_ctx *c, const vmc_qconv_add *a) {
  c->sc = _mm256_set1_ps(a->sc);
  c->sr = _mm256_set1_ps(a->sr);
  c->inv = _mm256_set1_ps(a->inv_o);
  c->lo = _mm256_set1_ps(a->o.lo);
  c->hi = _mm256_set1_ps(a->o.hi);
  c->zc = _mm256_set1_epi32(a->zc);
  c->zr = _mm256_set1_epi32(a->zr);
  c->zo = _mm256_set1_epi32(a->o.zp);
}

/* vmc_qconv_add1 on 8 lanes: codes c and residual bytes r (s32). */
static inline __attribute__((always_inline)) __m256i add8(const add_ctx *a, __m256i c,
                                                           __m256i r) {
  const __m256 vc = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c, a->zc)), a->sc);
  const __m256 vr = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(r, a->zr)), a->sr);
  __m256 v = _mm256_mul_ps(_mm256_add_ps(vc, vr), a->inv);
  v = _mm256_min_ps(_mm256_max_ps(v, a->lo), a->hi);
  return _mm256_add_epi32(_mm256_cvtps_epi32(v), a->zo);
}

/* The first n (<= 8) residual bytes at r as s32 lanes. */
static inline __attribute__((always_inline)) __m256i res8(const uint8_t *r, int n) {
  if (n >= 8) return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)r));
  uint8_t t[8] = {0};
  for (int i = 0; i < n; i++) t[i] = r[i];
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)t));
}

/* Bias or scale of channels m0 .. m0 + 7, the first n of them (the rest 0). */
static inline __m256i bias8(const int32_t *b, int m0, int n) {
  if (!b) return _mm256_setzero_si256();
  return _mm256_maskload_epi32(b + m0, ymm_lanes(n < 8 ? n : 8));
}
static inline __m256 scale8(const epi_ctx *e, int m0, int n) {
  if (e->per_tensor) return _mm256_set1_ps(e->scale[0]);
  return _mm256_maskload_ps(e->scale + m0, ymm_lanes(n < 8 ? n : 8));
}

#define REP6(X) X(0) X(1) X(2) X(3) X(4) X(5)

static inline __attribute__((always_inline)) void
conv_tile(const int P, const vmc_qconv_params *p, const uint8_t *restrict xb,
          const int8_t *restrict w, const epi_ctx *e, const add_ctx *a, int m0,
          uint8_t *restrict yb, const uint8_t *res) {
  const size_t xs = p->xs_pix;
  const int n0 = p->M - m0, n1 = p->M - m0 - 8;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc0[PMAX], acc1[PMAX]; /* channels m0 .. +7, m0 + 8 .. +15 */
  {
    const __m256i b0 = bias8(e->bias, m0, n0);
    const __m256i b1 = n1 > 0 ? bias8(e->bias, m0 + 8, n1) : b0;
#define INIT(i)                                                                    \
  if ((i) < P) {                                                                   \
    acc0[i] = b0;                                                                  \
    acc1[i] = b1;                                                                  \
  }
    REP6(INIT)
#undef INIT
  }
  for (int q = 0; q < p->kq; q++) {
    const uint8_t *xq = xb + p->koff[q];
    const __m256i w0 = _mm256_load_si256((const __m256i *)(w + (size_t)q * 64));
    const __m256i w1 = _mm256_load_si256((const __m256i *)(w + (size_t)q * 64 + 32));
#define STEP(i)                                                                    \
  if ((i) < P) {                                                                   \
    int32_t v;                                                                     \
    memcpy(&v, xq + (size_t)(i) * xs, sizeof v);                                   \
    const __m256i xv = _mm256_set1_epi32(v);                                       \
    acc0[i] = _mm256_add_epi32(acc0[i],                                            \
                               _mm256_madd_epi16(_mm256_maddubs_epi16(xv, w0), ones)); \
    acc1[i] = _mm256_add_epi32(acc1[i],                                            \
                               _mm256_madd_epi16(_mm256_maddubs_epi16(xv, w1), ones)); \
  }
    REP6(STEP)
#undef STEP
  }
  const __m256 s0 = scale8(e, m0, n0), s1 = n1 > 0 ? scale8(e, m0 + 8, n1) : s0;
  const int u8 = e->out == VMC_QOUT_U8;
#define OUT(i)                                                                     \
  if ((i) < P) {                                                                   \
    const size_t at = (size_t)(i) * p->ys_pix;                                     \
    __m256i c0 = code8(e, acc0[i], s0), c1 = code8(e, acc1[i], s1);                \
    if (a) {                                                                       \
      c0 = add8(a, c0, res8(res + at, n0));                                        \
      if (n1 > 0) c1 = add8(a, c1, res8(res + at + 8, n1));                        \
    }                                                                              \
    put8(c0, u8, yb + at, n0);                                                     \
    if (n1 > 0) put8(c1, u8, yb + at + 8, n1);                                     \
  }
  REP6(OUT)
#undef OUT
}

typedef void (*conv_tile_fn)(const vmc_qconv_params *, const uint8_t *, const int8_t *,
                             const epi_ctx *, const add_ctx *, int, uint8_t *,
                             const uint8_t *);
#define CONV_TILE(px)                                                              \
  static void conv_tile_##px(const vmc_qconv_params *p, const uint8_t *xb,         \
                             const int8_t *w, const epi_ctx *e, const add_ctx *a,  \
                             int m0, uint8_t *yb, const uint8_t *res) {            \
    conv_tile(px, p, xb, w, e, a, m0, yb, res);                                    \
  }
CONV_TILE(1)
CONV_TILE(2)
CONV_TILE(3)
CONV_TILE(4)
CONV_TILE(5)
CONV_TILE(6)
static const conv_tile_fn conv_tiles[PMAX + 1] = {NULL,        conv_tile_1, conv_tile_2,
                                                  conv_tile_3, conv_tile_4, conv_tile_5,
                                                  conv_tile_6};

void vmc_qconv__avx2(const vmc_qconv_params *p, const uint8_t *x, const int8_t *w_packed,
                     const vmc_qepi *epi, const vmc_qconv_add *add, uint8_t *y) {
  if (p->oh <= 0 || p->ow <= 0 || p->M <= 0) return;
  epi_ctx e;
  epi_init(&e, epi);
  add_ctx a;
  if (add) add_init(&a, add);
  const int blocks = (p->M + 15) / 16, tiles = (p->ow + PMAX - 1) / PMAX;
  const int base = p->ow / tiles, longer = p->ow % tiles; /* the first `longer` get base + 1 */
  const size_t wblk = (size_t)p->kq * 64;
  for (int oy = 0; oy < p->oh; oy++)
    for (int b = 0; b < blocks; b++)
      for (int t = 0, o = 0; t < tiles; t++) {
        const int P = base + (t < longer);
        const size_t at = (size_t)oy * p->ys_row + (size_t)o * p->ys_pix + 16 * (size_t)b;
        conv_tiles[P](p, x + (size_t)oy * p->xs_row + (size_t)o * p->xs_pix,
                      w_packed + (size_t)b * wblk, &e, add ? &a : NULL, 16 * b, y + at,
                      add ? add->res + at : NULL);
        o += P;
      }
}
