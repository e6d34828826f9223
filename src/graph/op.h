/* The op table.  One file per op under src/ops/ fills one of these; the
 * registry (src/ops/registry.c) lists them.  Adding an op touches one new
 * file and one registry line. */
#ifndef VMC_OP_H
#define VMC_OP_H

#include "graph/graph.h"
#include "kernels/conv.h"

/* Everything an op's forward/backward sees.  Shapes carry the planned batch
 * size in d[0]; loops run over `batch` images (<= planned). */
typedef enum { VMC_ACT_NONE = 0, VMC_ACT_RELU, VMC_ACT_RELU6 } vmc_act;

/* Bounds of the clamp of an activation: y = min(max(v, lo), hi) for lo = 0,
 * and the gradient passes where lo < y < hi (PyTorch's rule at the kinks). */
static inline float vmc_act_hi(vmc_act a) { return a == VMC_ACT_RELU6 ? 6.0f : __builtin_inff(); }
static inline float vmc_act_lo(vmc_act a) { return a == VMC_ACT_NONE ? -__builtin_inff() : 0.0f; }

/* Clamp that compiles to vector max/min (fminf/fmaxf are library calls). */
static inline float vmc_clampf(float v, float lo, float hi) {
  v = v > lo ? v : lo;
  return v < hi ? v : hi;
}

/* Gradient through the clamp.  dy is passed by value so the load is
 * unconditional and the loops around it vectorise (a blend, not a branch). */
static inline float vmc_act_grad(float y, float dy, float lo, float hi) {
  return ((y > lo) & (y < hi)) ? dy : 0.0f;
}

/* The sum of n floats in a fixed order that vectorises: 16 partial sums,
 * element i going to sum i mod 16 in increasing i, then the 16 in order (a
 * single chain of additions would wait on the adder's latency for every
 * element). */
static inline float vmc_sum_lanes(const float *x, size_t n) {
  float acc[16] = {0};
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; l++) acc[l] += x[i + l];
  for (int l = 0; i + (size_t)l < n; l++) acc[l] += x[i + (size_t)l];
  float s = 0;
  for (int l = 0; l < 16; l++) s += acc[l];
  return s;
}

/* The sum of an h x w plane whose rows lie `row` floats apart (plain: w;
 * the padded layout: its row length), in one order for any row length:
 * each row's sum in increasing j, then the rows' sums in increasing r.  The
 * rows' chains of additions are independent, so the core overlaps them (one
 * chain over the whole plane would wait on the adder's latency for every
 * element). */
static inline float vmc_sum_plane(const float *x, int h, int w, size_t row) {
  float s = 0;
  for (int r = 0; r < h; r++, x += row) {
    float t = 0;
    for (int j = 0; j < w; j++) t += x[j];
    s += t;
  }
  return s;
}

typedef struct vmc_opctx {
  const vmc_graph *g;
  const vmc_node *node;
  int batch;
  vmc_mode mode;
  const float *x[VMC_MAX_INPUTS];
  vmc_shape xs[VMC_MAX_INPUTS];
  float *y;
  vmc_shape ys;
  /* backward only: gradient of the output, and gradients of the inputs to
   * ACCUMULATE into (+=; the plan zeroes them).  dx[i] is NULL where the
   * input needs no gradient (the image). */
  const float *dy;
  float *dx[VMC_MAX_INPUTS];
  void *state;          /* state_bytes, kept from forward to backward */
  uint8_t *scratch;     /* nthreads slices of scratch_bytes each */
  size_t scratch_bytes; /* per thread */
  int nthreads;
  vmc_rng *rng;         /* for dropout */
  /* Activation fused into this node by the plan (ops with can_fuse_act):
   * forward clamps y; backward passes dy only where lo < y < hi. */
  vmc_act act;
  /* dx_set[k]: this node is the only consumer of input k, and the plan did
   * not zero dx[k]: the op writes it (=) instead of accumulating.  Only
   * for ops with sets_dx; always 0 for the others. */
  uint8_t dx_set[VMC_MAX_INPUTS];
  /* Inference only: input k / the output is in the padded layout (below,
   * VMC_PAD_PIXELS or VMC_PAD_ZEROS) instead of plain NCHW (0).  Set only
   * for ops whose padded_in / padded_out said yes. */
  uint8_t xpad[VMC_MAX_INPUTS];
  uint8_t ypad;
  /* Inference only (ops with fuses_residual): a tensor of the output's
   * shape and layout to add to it before act, rounded as the add node the
   * plan folded into this one (bias first, then res, then the clamp). */
  const float *res;
} vmc_opctx;

typedef struct vmc_op {
  const char *name;
  int min_in, max_in;
  int n_param_min, n_param_max;
  /* Validate attrs and param shapes against input shapes; set output shape.
   * Errors name the node. */
  vmc_status (*infer)(const vmc_graph *g, const vmc_node *n, const vmc_shape *in,
                      vmc_shape *out);
  /* Per-node state kept from forward to backward (may be NULL: 0). */
  size_t (*state_bytes)(const vmc_node *n, const vmc_shape *in, const vmc_shape *out,
                        vmc_mode mode);
  /* Per-thread scratch needed by forward or backward (may be NULL: 0). */
  size_t (*scratch_bytes)(const vmc_node *n, const vmc_shape *in, const vmc_shape *out,
                          vmc_mode mode, int nthreads);
  /* Inference plans call it once, after allocation and before any forward,
   * with the plan's state: an op may prepare what the frozen weights allow
   * (e.g. pre-packed GEMM panels) and rely on it in an inference forward.
   * May be NULL. */
  void (*prepare)(vmc_opctx *c);
  void (*forward)(vmc_opctx *c);
  void (*backward)(vmc_opctx *c); /* NULL: not differentiable */
  /* Nonzero: forward and backward honour vmc_opctx.act, so the plan may
   * fold a following relu/relu6 into this node. */
  int can_fuse_act;
  /* Nonzero: backward honours vmc_opctx.dx_set. */
  int sets_dx;
  /* Nonzero: forward reads input k (writes its output) in the padded layout
   * when the plan sets xpad[k] (ypad).  NULL: never.  The plan pads a value
   * only where its producer and every consumer say yes.  padded_in says
   * VMC_PAD_PIXELS where forward reads only the input's pixels, else
   * VMC_PAD_ZEROS (it reads the borders too, as zeros). */
  int (*padded_in)(const vmc_node *n, const vmc_shape *in, int k);
  int (*padded_out)(const vmc_node *n, const vmc_shape *in);
  /* Nonzero: forward honours vmc_opctx.res when its output has the given
   * layout (ypad), so the plan may fold a following add into it.  NULL:
   * never. */
  int (*fuses_residual)(const vmc_node *n, const vmc_shape *in, int ypad);
  /* Multiply-accumulates per image (NULL: 0). */
  uint64_t (*macs)(const vmc_node *n, const vmc_shape *in, const vmc_shape *out);
  /* How forward computes the node on these inputs in this mode, a short
   * name for profiles (e.g. "winograd-4x4"); NULL (or a NULL hook): the
   * op's one way. */
  const char *(*kernel)(const vmc_node *n, const vmc_shape *in, vmc_mode mode);
} vmc_op;

const vmc_op *vmc_op_find(const char *name);
const vmc_op *const *vmc_op_all(int *count);

/* The padded layout of an inference activation [N, C, H, W]: each image is
 * C planes of (H + 2) x (W + 1) floats, pixel (i, j) at (i + 1)(W + 1) + 1 + j
 * of its plane, then VMC_PADDED_SLACK floats.  With zero borders it is the
 * zero-padded plane a 3x3-reach stride-1 convolution with padding 1 reads
 * (rows share their padding column, src/ops/conv2d.c), and the plane a
 * convolution whose wide output rows are W + 1 long writes: where producer
 * and consumers both take it, the pad and crop copies between them vanish.
 * A value's layout (vmc_opctx.xpad, ypad):
 *   VMC_PAD_PIXELS  padded, every consumer reads only its pixels: the
 *                   producer leaves the borders as they are (garbage);
 *   VMC_PAD_ZEROS   padded, some consumer reads the borders: the producer
 *                   rewrites them with zeros on every forward. */
#define VMC_PADDED_SLACK 32
enum { VMC_PAD_PIXELS = 1, VMC_PAD_ZEROS = 2 };
typedef struct vmc_padded {
  int h, w, wp;      /* wp = w + 1 */
  size_t plane;      /* (h + 2) * wp */
  size_t image;      /* floats per image: c * plane + VMC_PADDED_SLACK */
} vmc_padded;
static inline vmc_padded vmc_padded_of(const vmc_shape *s) {
  vmc_padded p;
  p.h = s->d[2], p.w = s->d[3], p.wp = p.w + 1;
  p.plane = (size_t)(p.h + 2) * (size_t)p.wp;
  p.image = (size_t)s->d[1] * p.plane + VMC_PADDED_SLACK;
  return p;
}
/* Offset of pixel (0, 0) in its plane. */
static inline size_t vmc_padded_origin(const vmc_padded *p) { return (size_t)p->wp + 1; }
/* Zeroes every float of image y (channels ch) that is not a pixel. */
void vmc_padded_zero_borders(const vmc_padded *p, int ch, float *y);
/* The same for channels [c0, c1) of the ch.  The zeros between two
 * channels' pixels are the upper one's (those before channel 0's, channel
 * 0's), so threads taking disjoint ranges write disjoint floats, and none
 * a pixel. */
void vmc_padded_zero_channels(const vmc_padded *p, int ch, int c0, int c1, float *y);

/* Shared helpers for ops. */
static inline int vmc_ceil_div(int a, int b) { return (a + b - 1) / b; }
vmc_status vmc_op_check_param(const vmc_graph *g, const vmc_node *n, int idx,
                              const vmc_shape *want);

/* The window of a conv2d node from its attributes kh, kw, sh, sw, ph, pw,
 * dh, dw (kernel, stride and dilation default 1, padding 0, each w attribute
 * to its h one) over input shape in ([N, C, H, W], C split over the node's
 * groups) with the output size of vmc_conv_out; in == NULL: the attributes
 * only (c, h, w, oh, ow 0).  Unchecked: shape inference rejects bad ones. */
vmc_conv_geom vmc_conv2d_window(const vmc_node *n, const vmc_shape *in);
/* The same for maxpool/avgpool: kernel default 2, stride default the kernel,
 * no dilation. */
vmc_conv_geom vmc_pool_window(const vmc_node *n, const vmc_shape *in);

#endif
