/* Winograd F(2x2, 3x3) for 3x3, stride-1, padding-1 convolutions (fp32).
 *
 * Each 2x2 output tile is computed from the 4x4 input tile around it: with
 * the input tile d, the kernel g and the usual matrices
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
 *   G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
 *   A^T = [1 1 1 0; 0 1 -1 -1]
 * the tile is A^T [(G g G^T) .* (B^T d B)] A.  Over channels the
 * element-wise product becomes 16 GEMMs, one per position (a, b) of the 4x4
 * transformed tile:  M[ab] (oc x tiles) = U[ab] (oc x c) . V[ab] (c x tiles),
 * 2.25 times fewer multiply-adds than the direct convolution.  The caller
 * runs the GEMMs (kernels/gemm.h); this file has the three transforms.
 *
 * Tiles are numbered row by row, ti * tw + tj, over th x tw tiles (th =
 * ceil(h / 2), tw = ceil(w / 2)): output sizes that are odd get a last tile
 * whose second row or column is computed and dropped.  Such a tile's fourth
 * input row or column lies past the padded image; it is read as zero.
 * Only that row or column of the transformed tile depends on it, and only
 * the dropped outputs depend on that (A^T's first row is 0 in its last
 * column), so every output is the convolution's.
 *
 * The transforms are additions, subtractions and negations only, in a
 * fixed order: every ISA variant gives the reference's floats.  The
 * weight gradient is the adjoint of the forward, through the same tiles:
 * 4x4 gradients dM = A dY A^T of the output tiles, one GEMM per position
 * with the input's transformed tiles, then dW = G^T dU G. */
#ifndef VMC_KERNELS_WINOGRAD_H
#define VMC_KERNELS_WINOGRAD_H

#include <stddef.h>

#define VMC_WINO_POS 16 /* positions of the transformed 4x4 tile */

/* Where the 16 transformed planes lie: position ab's plane at
 * base + ab * pos_stride, its row for channel c at + c * ch_stride.  The
 * transforms take a range of tile rows [ti0, ti1); tile (ti, tj) is at
 * + (ti - ti0) * tw + tj of a row (so threads can split an image's tiles).
 * The SIMD variants read and write whole vectors: ch_stride must leave
 * VMC_WINO_ROW_SLACK floats after a channel's last tile, which they may
 * overwrite, as they may the tiles after the one they are writing (which
 * they write later). */
#define VMC_WINO_ROW_SLACK 16
typedef struct vmc_wino_buf {
  float *base;
  size_t pos_stride, ch_stride;
} vmc_wino_buf;

/* The output transform's epilogue, in the order the GEMM epilogue applies
 * it (gemm.h): + bias[oc], + res, then clamp to [lo, hi]. */
typedef struct vmc_wino_out {
  float *y;           /* pixel (i, j) of channel oc at y + oc * plane + i * row + j */
  size_t plane, row;
  const float *bias;  /* oc floats or NULL */
  const float *res;   /* same layout as y (y itself: accumulate), or NULL */
  float lo, hi;
} vmc_wino_out;

typedef struct vmc_wino_kernels {
  const char *isa;
  /* V = B^T d B of the tiles in tile rows [ti0, ti1) of ch channels of an
   * h x w image, pixel (i, j) of channel c at x[c * plane + i * row + j],
   * padded by one zero all round (the padding is not read: a plain or a
   * padded layout alike).  tmp: vmc_wino_tmp_floats(w) floats. */
  void (*input)(const float *x, int ch, size_t plane, size_t row, int h, int w,
                const vmc_wino_buf *v, int ti0, int ti1, float *tmp);
  /* Y = A^T M A of the tiles in tile rows [ti0, ti1) of oc channels,
   * epilogue, those tiles' pixels of the image written (nothing else). */
  void (*output)(const vmc_wino_buf *m, int ti0, int ti1, int oc, int h, int w,
                 const vmc_wino_out *o, float *tmp);
  /* Its adjoint, for the weight gradient: dM = A dY A^T of the tiles in
   * tile rows [ti0, ti1) of oc channels of an h x w gradient, pixel (i, j)
   * of channel k at dy[k * plane + i * row + j]; a last tile's pixels past
   * the image count as zero. */
  void (*grad_output)(const float *dy, size_t plane, size_t row, int oc, int h, int w,
                      const vmc_wino_buf *m, int ti0, int ti1);
  /* F(4x4, 3x3) (below): input and output as above for 4x4 output tiles
   * from 6x6 input tiles, 36 planes, tmp as above.  The SIMD variants do
   * rows of 4, 7 or 8 tiles themselves and pass other widths to the
   * reference. */
  void (*input4)(const float *x, int ch, size_t plane, size_t row, int h, int w,
                 const vmc_wino_buf *v, int ti0, int ti1, float *tmp);
  void (*output4)(const vmc_wino_buf *m, int ti0, int ti1, int oc, int h, int w,
                  const vmc_wino_out *o, float *tmp);
} vmc_wino_kernels;

extern const vmc_wino_kernels vmc_wino_kernels__ref;
extern const vmc_wino_kernels vmc_wino_kernels__avx2;
extern const vmc_wino_kernels vmc_wino_kernels__avx512;
/* The variant vmc_isa_name() picks, chosen once. */
const vmc_wino_kernels *vmc_wino_kernels_best(void);

static inline int vmc_wino_tiles_h(int h) { return (h + 1) / 2; }
static inline size_t vmc_wino_tiles(int h, int w) {
  return (size_t)((h + 1) / 2) * (size_t)((w + 1) / 2);
}
/* Scratch floats the transforms take for an image w pixels wide. */
static inline size_t vmc_wino_tmp_floats(int w) { return 16 * (size_t)((w + 1) / 2 + 1) + 16; }

/* U[ab] = (G g G^T)[ab] for every output channel o and input channel c of
 * the kernel w (oc x c x 3 x 3): u[o * ldu + c]. */
void vmc_wino_weights(const float *w, int oc, int c, int ab, float *u, int ldu);

/* The adjoint of vmc_wino_weights: dw[(o * c + ci) * 9 + k] += (G^T dU G)[k]
 * for the 4x4 gradient dU whose position ab is du[ab * pos_stride + o * c +
 * ci].  With dU = sum over tiles of dM[ab] V[ab]^T (dM from grad_output,
 * V from input), that is the convolution's weight gradient. */
void vmc_wino_weights_grad(const float *du, size_t pos_stride, int oc, int c, float *dw);

/* Whether plans use Winograd where it applies: yes unless the environment
 * sets VMC_WINOGRAD=0 (for comparison, or to keep the weights' memory at
 * 9/16), read whenever a plan is made. */
int vmc_wino_enabled(void);

/* Winograd F(4x4, 3x3): each 4x4 output tile from the 6x6 input tile
 * around it (padded rows and columns 4t .. 4t + 5), with
 *   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0;
 *          0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
 *   G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6;
 *          1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
 *   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
 * 36 GEMMs, 4 times fewer multiply-adds than the direct convolution, at
 * the price of larger rounding errors than F(2x2, 3x3) (the transforms
 * scale by up to 8 and 1/24): about 1e-6 relative against 1e-7, used for
 * inference only.  Tiles as above, th = ceil(h / 4) rows of tw = ceil(w /
 * 4); input pixels past the padded image are read as zero, and an output
 * past the image is computed and dropped.  In a row of 7 or 8 tiles the
 * tiles lie in the order 0, 2, 4, 6, 1, 3, 5, 7 (tile tj at (tj % 2) * 4 +
 * tj / 2 of the row: the order 8-lane transposes give), in other rows in
 * order; the GEMMs between the transforms do not mind.  The transforms multiply by the
 * matrices' constants and add in a fixed order (vmc_wino4_bt, _at in
 * winograd.c), without fused multiply-adds: every variant gives the
 * reference's floats. */
#define VMC_WINO4_POS 36

static inline int vmc_wino4_tiles_h(int h) { return (h + 3) / 4; }
static inline size_t vmc_wino4_tiles(int h, int w) {
  return (size_t)((h + 3) / 4) * (size_t)((w + 3) / 4);
}

/* U[ab] = (G g G^T)[ab] (computed in double, rounded once) for the 36
 * positions ab = 6a + b, as vmc_wino_weights. */
void vmc_wino4_weights(const float *w, int oc, int c, int ab, float *u, int ldu);

#endif
