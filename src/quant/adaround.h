/* AdaRound: learned rounding of quantized weights (Nagel et al., "Up or Down?
 * Adaptive Rounding for Post-Training Quantization", ICML 2020).
 *
 * vmc_adaround(float_graph, q, calib, opts, report) runs after
 * vmc_ptq_quantize (ptq.h) and changes only the weights of q: each quantized
 * conv2d/linear weight w keeps its scale s (per channel or per tensor) but
 * chooses, per element, whether its code is floor(w/s) or floor(w/s) + 1,
 * so as to reproduce the float layer's output rather than each weight.
 *
 * Layer by layer, in q's node order:
 *  1. data: the first calib_images images of calib run through the folded
 *     float model (float_graph with BatchNorm folded, vmc_graph_fold_bn_copy)
 *     and through q as it stands (the layers before this one already
 *     rounded, q's fakequant nodes in place); at `pixels` random output
 *     positions per image (every position if there are fewer) the layer's
 *     input column is taken from both: x (float) and x_q (what the layer
 *     really reads in q).  Kept: x_q, and the float layer's output
 *     t = W x + b (W, b the float model's folded weight and bias; the
 *     layer output before its activation).  A linear layer has one column
 *     per image.
 *  2. the soft weights  w~ = s * clamp(floor(w/s) + h(V), -qmax, qmax)  with
 *     the rectified sigmoid  h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma,
 *     0, 1), zeta = 1.1, gamma = -0.1, and V started where h(V) is the
 *     fractional part of w/s (so w~ = w inside the grid);
 *  3. Adam on V (lr, betas 0.9 / 0.999) for `iters` steps, each on `batch`
 *     columns drawn at random, minimising
 *       E = (1/B) sum_columns || t - (W~ x_q + b_q) ||^2
 *           + lambda * sum_weights (1 - |2 h(V) - 1|^beta)
 *     (the squared error summed over output channels, averaged over the
 *     columns, as the paper's code does); the regulariser is off for the
 *     first `warmup` share of the steps, then beta falls linearly from
 *     beta_start to beta_end;
 *  4. hard rounding: code = clamp(floor(w/s) + [V >= 0], -qmax, qmax); the
 *     weight becomes code * s (vmc_param_set_quantized, the same storage and
 *     scales).  If that reconstructs the kept columns worse than the rounding
 *     to nearest q had, the nearest codes stay (reported).
 * The scales do not change, so q's s32 bias codes (scale s_w * s_x) stay
 * exact and the biases are left alone.  q's "history" metadata gets a line.
 *
 * The products use the project's GEMM (threaded); memory per layer is
 * calib_images * pixels columns of the layer's im2col width (x_q) plus as
 * many rows of output channels (t): 16384 x 576 floats (38 MiB) for the
 * widest resnet20 conv with the defaults. */
#ifndef VMC_ADAROUND_H
#define VMC_ADAROUND_H

#include "graph/graph.h"

#define VMC_ADAROUND_ZETA 1.1f
#define VMC_ADAROUND_GAMMA (-0.1f)

typedef struct vmc_adaround_opts {
  int iters;          /* Adam steps per layer, >= 1 (default 1000) */
  int batch;          /* columns per step, >= 1 (default 1024) */
  int calib_images;   /* >= 1 (default 512); fewer if the data set is smaller */
  int pixels;         /* output positions sampled per image, >= 1 (default 32) */
  int image_batch;    /* images per forward pass, >= 1 (default 32) */
  float lr;           /* Adam's step, > 0 (default 0.01) */
  float lambda;       /* weight of the rounding regulariser, >= 0 (default 0.01) */
  float beta_start, beta_end; /* the regulariser's exponent, annealed (20 -> 2) */
  float warmup;       /* share of the steps without regulariser, [0, 1) (default 0.2) */
  uint64_t seed;      /* positions and batches (default 1) */
  int progress;       /* a progress bar on stderr */
} vmc_adaround_opts;

void vmc_adaround_opts_default(vmc_adaround_opts *o);

typedef struct vmc_adaround_layer {
  char node[VMC_NAME_MAX];
  char op[16];            /* "conv2d" or "linear" */
  int rows, k, groups;    /* output channels, inputs per output (per group) */
  int columns;            /* input columns kept */
  double err_nearest;     /* mean over the columns of ||t - y||^2, rounding to nearest */
  double err_learned;     /* the same with the learned rounding (before the fallback) */
  double err_float;       /* the same with the float weights on x_q (a floor
                             for what rounding can reach on this input) */
  double changed;         /* share of the codes that differ from nearest */
  int kept_nearest;       /* the learned rounding was worse: nearest kept */
  double seconds;
} vmc_adaround_layer;

typedef struct vmc_adaround_report {
  int n_layers;
  vmc_adaround_layer *layers; /* vmc_malloc_plain'd, in node order */
  int calib_images;
  double seconds;
} vmc_adaround_report;

void vmc_adaround_report_free(vmc_adaround_report *r);

/* Learns the rounding of every quantized conv2d/linear weight of q (see
 * above).  float_graph: the model q was quantized from (not changed); its
 * nodes and parameters are matched to q's by name.  opts NULL: defaults.
 * report may be NULL (free with vmc_adaround_report_free, also after an
 * error).  Errors: bad options, q without a quantized conv2d/linear weight
 * (not the output of vmc_ptq_quantize), a layer or weight of q missing from
 * the float model or shaped differently, images not of the model's shape
 * (all found before q is touched).  A failure later (memory) may leave the
 * first layers of q rounded, each with valid codes. */
vmc_status vmc_adaround(const vmc_graph *float_graph, vmc_graph *q, const vmc_dataset *calib,
                        const vmc_adaround_opts *opts, vmc_adaround_report *report);

/* ---- the pieces, for tests ----------------------------------------------------- */

/* h(V), and dh/dV (0 where the clamp is active). */
float vmc_adaround_h(float v);
float vmc_adaround_dh(float v);
/* V with h(V) = frac, for frac in [0, 1) (clamped inside the sigmoid's range). */
float vmc_adaround_v_init(float frac);
/* The regulariser of one weight, 1 - |2 h(V) - 1|^beta, and its derivative
 * in V. */
float vmc_adaround_reg(float v, float beta);
float vmc_adaround_reg_grad(float v, float beta);
/* beta at step t of n (t in [0, n)) under o's warm-up and annealing; 0
 * during the warm-up (no regulariser). */
float vmc_adaround_beta(const vmc_adaround_opts *o, int t, int n);

#endif
