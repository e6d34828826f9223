/* Post-training quantization, simulated in fp32.
 *
 * vmc_ptq_quantize(g, calib, opts) makes a new graph (g is not changed):
 *  1. BatchNorm folded into the convolutions and the folded batchnorm nodes
 *     removed (graph/rebuild.h, vmc_graph_fold_bn_copy);
 *  2. calibration: the first `calib_images` images of `calib` (the training
 *     split, normalised as the model expects) run through the folded float
 *     graph, `batch` images per forward, on a plan that keeps every value
 *     (vmc_plan_create_observable); one observer (quant.h) per value that a
 *     conv2d or linear reads sees that value after every forward.  The graph
 *     input has its own observer kind (input_observer, min/max by default):
 *     it holds normalised u8 pixels, whose min/max over a few hundred images
 *     is the pixel grid itself, and a u8 grid on it is nearly lossless,
 *     while the histogram observers clip it (the background pixels are one
 *     point mass; KL cut 28% of Fashion-MNIST's input values);
 *  3. a fakequant node (ops/fakequant.c) inserted between each such value
 *     and the conv2d/linear nodes that read it -- one node per value, shared
 *     by all its conv/linear readers; other readers (add, pools) keep the
 *     float value -- with the observer's qparams under the activation scheme;
 *  4. every conv2d/linear weight replaced by its fake quantization under the
 *     weight scheme (vmc_quantize_weights' parameters: max |w| of each output
 *     channel, or of the tensor), and (bias_s32) every bias by its
 *     fake quantization to s32 with scale s_w[c] * s_x, zero point 0 (what
 *     the integer runtime adds to its accumulators);
 *  5. metadata: "quant" (a JSON object: method, schemes, observer, the
 *     calibration, and per layer the activation qparams and range, the
 *     weight scales and SQNR -- what a lowering to the integer runtime
 *     needs), and a "history" line.
 * Node, value and parameter names are kept; an inserted node is named
 * "<value>.quant" (or "quant.<n>" when that is taken or too long).
 *
 * Evaluating the result with an ordinary inference plan simulates the
 * integer model: activations are rounded where the int8 kernels would read
 * them, with the kernels' rounding rule. */
#ifndef VMC_PTQ_H
#define VMC_PTQ_H

#include "graph/graph.h"
#include "quant/quant.h"

typedef struct vmc_ptq_opts {
  vmc_qscheme weight_scheme;   /* VMC_QSCHEME_S8 or S4 (symmetric) */
  int per_channel;             /* weights per output channel (1) or per tensor (0) */
  vmc_qscheme act_scheme;      /* VMC_QSCHEME_U8 or S8 */
  vmc_observer_kind observer;  /* for the values the layers compute */
  vmc_observer_kind input_observer; /* for the graph input (the image), see above */
  vmc_observer_opts obs;       /* momentum, percentile, bins (scheme: act_scheme) */
  int calib_images;            /* >= 1; fewer if the data set is smaller */
  int batch;                   /* images per calibration forward, >= 1 */
  int bias_s32;                /* simulate the s32 bias */
} vmc_ptq_opts;

/* Defaults: s8 per channel, u8 activations, min/max observers, 512 images,
 * batch 32, s32 bias. */
void vmc_ptq_opts_default(vmc_ptq_opts *o);

/* One conv2d/linear node of the quantized graph. */
typedef struct vmc_ptq_layer {
  char node[VMC_NAME_MAX];   /* the conv2d/linear node */
  char op[16];               /* "conv2d" or "linear" */
  char input[VMC_NAME_MAX];  /* the float value it read */
  char quant[VMC_NAME_MAX];  /* the fakequant node it reads now */
  vmc_observer_kind observer; /* that chose them */
  vmc_qparams act;           /* activation parameters */
  float lo, hi;              /* the observer's range (before 0 is put inside) */
  float seen_min, seen_max;  /* min and max of the calibration values */
  double act_sqnr_db;        /* of that value against its fake quantization, over
                                the calibration images (the float model's values) */
  double clipped;            /* fraction of those values outside the range */
  int channels;              /* weight blocks: output channels, or 1 per tensor */
  double w_sqnr_db;          /* of the weights against their fake quantization */
  float w_scale_min, w_scale_max;
} vmc_ptq_layer;

typedef struct vmc_ptq_report {
  int n_layers;
  vmc_ptq_layer *layers;     /* vmc_malloc_plain'd, in node order */
  int bn_folded;
  int calib_images;          /* used */
  double seconds;
} vmc_ptq_report;

void vmc_ptq_report_free(vmc_ptq_report *r);

/* The quantized copy of g in *out; report (may be NULL) describes it (free
 * with vmc_ptq_report_free, also after an error).  calib's images must have
 * g's input shape.  Errors name the option, node or value at fault; g with
 * no conv2d or linear node is an error (nothing to quantize). */
vmc_status vmc_ptq_quantize(const vmc_graph *g, const vmc_dataset *calib,
                            const vmc_ptq_opts *opts, vmc_graph **out,
                            vmc_ptq_report *report);

#endif
