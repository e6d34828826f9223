/* Post-training quantization, simulated in fp32.
 *
 * vmc_ptq_quantize(g, calib, opts) makes a new graph (g is not changed):
 *  1. BatchNorm folded into the convolutions and the folded batchnorm nodes
 *     removed (graph/rebuild.h, vmc_graph_fold_bn_copy); with `equalize`,
 *     cross-layer equalization of the folded graph (quant/equalize.h);
 *  2. sites: the values the integer runtime reads as integers (with
 *     integer_sites, the default): every value read by a node other than a
 *     fused relu/relu6 (one that directly follows the conv2d, linear or add
 *     that is its input's only reader) -- the inputs of conv2d, linear, add,
 *     pools, flatten and so on, the graph input included -- except a value
 *     that flatten, dropout or maxpool computed from a site (those keep the
 *     values on the grid, with the same parameters).  The graph output is
 *     not a site.  Without integer_sites only the inputs of the quantized
 *     conv2d/linear layers are sites (a simulation the integer runtime
 *     cannot run, used by the per-layer sensitivity analysis);
 *  3. calibration: the first `calib_images` images of `calib` (the training
 *     split, normalised as the model expects) run through the folded float
 *     graph, `batch` images per forward, on a plan that keeps every value
 *     (vmc_plan_create_observable); one observer (quant.h) per site sees
 *     that value after every forward.  The graph input has its own observer
 *     kind (input_observer, min/max by default): it holds normalised u8
 *     pixels, whose min/max over a few hundred images is the pixel grid
 *     itself, and a u8 grid on it is nearly lossless, while the histogram
 *     observers clip it (the background pixels are one point mass; KL cut
 *     28% of Fashion-MNIST's input values);
 *  4. a fakequant node (ops/fakequant.c) inserted after each site's value,
 *     read by all its readers (a layer whose rule says quant_input = 0 reads
 *     the float value instead), with the observer's qparams under the
 *     activation scheme;
 *  5. every conv2d/linear weight replaced by its fake quantization under the
 *     weight scheme or the layer's rule (vmc_quantize_weights' parameters:
 *     max |w| of each output channel, or of the tensor) and marked as stored
 *     quantized (vmc_param.store, so files hold the integer codes), and
 *     (bias_s32) every bias by its fake quantization to s32 with scale
 *     s_w[c] * s_x, zero point 0 (what the integer runtime adds to its
 *     accumulators);
 *  5b. with bias_correct, each quantized layer's bias corrected for the
 *     shift of its mean output (quant/biascorr.h);
 *  6. metadata: "quant", a short JSON object (method, schemes, observers,
 *     bias, the calibration, batchnorms folded, pairs equalized, values
 *     quantized, and how many layers have s8, s4 and f32 weights), and a
 *     "history" line.  What each layer got is in the graph (its fakequant
 *     node's attributes, its weight's storage and scales); the calibration's
 *     ranges, clipping and SQNRs are in the report.
 * So with integer_sites every conv2d/linear/add/pool reads fakequant
 * outputs (or values flatten/dropout/maxpool kept on their grid), and each
 * value such a node computes is read only through one fakequant (or through
 * a fused relu and then one fakequant): the integer runtime requantizes each
 * output straight to that fakequant's parameters.
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

/* A per-layer exception to the schemes in vmc_ptq_opts (mixed precision). */
typedef struct vmc_ptq_rule {
  const char *node;  /* a conv2d or linear node */
  int weight_bits;   /* 8 (s8), 7 (s7), 4 (s4), or 0: its weights stay fp32 */
  int quant_input;   /* 0: it reads its input in float (simulation only: needs
                        integer_sites = 0, or another reader keeps the site) */
} vmc_ptq_rule;

typedef struct vmc_ptq_opts {
  vmc_qscheme weight_scheme;   /* VMC_QSCHEME_S8, S7 or S4 (symmetric) */
  int per_channel;             /* weights per output channel (1) or per tensor (0) */
  vmc_qscheme act_scheme;      /* VMC_QSCHEME_U8 or S8; U4 as a start for QAT */
  int integer_sites;           /* quantize every value the integer runtime reads (1) */
  const vmc_ptq_rule *rules;   /* per-layer exceptions (may be NULL), n_rules of them */
  int n_rules;
  vmc_observer_kind observer;  /* for the values the layers compute */
  vmc_observer_kind input_observer; /* for the graph input (the image), see above */
  vmc_observer_opts obs;       /* momentum, percentile, bins (scheme: act_scheme) */
  int calib_images;            /* >= 1; fewer if the data set is smaller */
  int batch;                   /* images per calibration forward, >= 1 */
  int bias_s32;                /* simulate the s32 bias */
  int equalize;                /* > 0: cross-layer equalization (quant/equalize.h) of
                                  the folded graph with this many sweeps; 0: off */
  int bias_correct;            /* empirical bias correction of every quantized layer
                                  (quant/biascorr.h) on the calibration images */
} vmc_ptq_opts;

/* Defaults: s8 per channel, u8 activations, integer sites, no rules,
 * min/max observers, 512 images, batch 32, s32 bias. */
void vmc_ptq_opts_default(vmc_ptq_opts *o);

/* One conv2d/linear node of the quantized graph. */
typedef struct vmc_ptq_layer {
  char node[VMC_NAME_MAX];   /* the conv2d/linear node */
  char op[16];               /* "conv2d" or "linear" */
  char input[VMC_NAME_MAX];  /* the float value it read */
  char quant[VMC_NAME_MAX];  /* the fakequant node it reads now ("" if none) */
  int weight_bits;           /* 8, 7, 4, or 0 (fp32) */
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
  int n_sites;               /* values quantized (fakequant nodes) */
  vmc_ptq_layer *layers;     /* vmc_malloc_plain'd, in node order */
  int bn_folded;
  int equalized_pairs;       /* conv-relu-conv pairs equalized (equalize > 0) */
  int bias_corrected;        /* layers whose bias was corrected (bias_correct) */
  double bias_shift;         /* their mean |correction| per channel */
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
