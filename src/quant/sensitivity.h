/* Per-layer quantization sensitivity, and mixed precision chosen from it.
 *
 * ---- Sensitivity (vmc_sensitivity) -------------------------------------------
 * For each conv2d/linear layer L and each weight width b in {8, 4}: the model
 * with ONLY L quantized -- L's weights at b bits (and its bias as s32 codes,
 * as vmc_ptq_quantize does), L's input fake-quantized, every other layer and
 * value in fp32 -- i.e. vmc_ptq_quantize with integer_sites = 0 and the rules
 * {L: b bits, quant_input 1; every other layer: 0 bits, quant_input 0}.
 * Each such model runs on a held-out slice of the TRAINING split: the
 * `eval_images` images that follow the calibration images (the test split is
 * never looked at, so a choice made from this table is not fitted to it).
 * Against the folded fp32 model on the same images it gives
 *   drop        accuracy drop in points (fp32 - quantized; noisy: one image
 *               is 100 / eval_images points, so an 8-bit drop is mostly 0)
 *   logit SQNR  10 log10(sum z^2 / sum (z - z_q)^2) over all logits z,
 *               a smooth measure of the same damage
 * and from the calibration the SQNR of L's input and weights, and L's
 * weight count.
 *
 * Calibration is done three times, not 2 x layers times: vmc_ptq_quantize
 * with integer_sites = 0 and every layer's input quantized, at 0 (fp32), 8
 * and 4 weight bits.  The three graphs have the same structure (the same
 * observers see the same values of the same float graph, so the same
 * fakequant nodes), and the model for (L, b) is the fp32 one with L's
 * weight and bias taken from the b-bit one and every layer other than L
 * reading its float input (the unread fakequant nodes dropped).  That is the
 * graph vmc_ptq_quantize builds from the single-layer rules above, up to
 * node order of the unused fakequants (tested: identical logits).
 *
 * ---- Mixed precision (vmc_mixed_choose, vmc_mixed_precision) ---------------------
 * A budget B is the mean number of bits per conv2d/linear weight, counting a
 * layer kept in fp32 as 32 bits: the size of the weights is B / 8 bytes per
 * weight (biases and scales apart), so B = 8 is all-s8 and B = 4 all-s4.
 * B below 4 is an error.  The greedy choice starts from every layer at 8 bits
 * and moves layers to 4 bits, cheapest first, until the mean is <= B; the
 * cost of moving layer L is its 4-bit damage per bit saved,
 * d4 / (4 * weights), where d_b is (rank):
 *   VMC_SENS_RANK_NOISE  the logit noise-to-signal ratio 10^(-SQNR_b / 10)
 *                        (default: smooth, never tied, additive over layers
 *                        to first order)
 *   VMC_SENS_RANK_DROP   the accuracy drop, ties broken by the noise
 * (equal costs: the layer earlier in the graph first).  The damage itself,
 * not its increase over 8 bits: a layer already ruined at 8 bits is not
 * cheap to move (it needs fp32, below).
 * vmc_mixed_precision then runs vmc_ptq_quantize with integer_sites = 1 and
 * those bits (the deployable model) and measures it on the held-out slice.
 * With an accuracy budget (max_drop >= 0, points on that slice) and a drop
 * above it, the layer most damaged at 8 bits (d8, same rank) that is still
 * quantized is kept in fp32, every other layer goes back to 8 bits, and the
 * choice is made again; when no choice with the fp32 layers kept so far fits
 * B, or every layer would be fp32, the budgets cannot be met together: an
 * error that says how far it got. */
#ifndef VMC_SENSITIVITY_H
#define VMC_SENSITIVITY_H

#include "quant/ptq.h"

typedef enum vmc_sens_rank {
  VMC_SENS_RANK_NOISE = 0,
  VMC_SENS_RANK_DROP,
  VMC_SENS_RANK_COUNT
} vmc_sens_rank;

/* "noise", "drop". */
const char *vmc_sens_rank_name(vmc_sens_rank r);
vmc_status vmc_sens_rank_from_name(const char *name, vmc_sens_rank *out);

typedef struct vmc_sens_opts {
  vmc_ptq_opts ptq;   /* schemes, observers, calibration; rules, weight_scheme and
                         integer_sites are set by the analysis */
  int eval_images;    /* held-out training images after the calibration ones, >= 1
                         (fewer if the split ends first; none left is an error) */
  int batch;          /* images per evaluation forward, >= 1 */
  int show_progress;  /* a progress line on stderr */
} vmc_sens_opts;

/* Defaults: vmc_ptq_opts_default, 2000 held-out images, batch 256, quiet. */
void vmc_sens_opts_default(vmc_sens_opts *o);

/* One conv2d/linear layer.  Index [0]: 8-bit weights, [1]: 4-bit. */
typedef struct vmc_sens_layer {
  char node[VMC_NAME_MAX];
  char op[16];
  long long weights;        /* scalars in its weight tensor */
  double act_sqnr_db;       /* its input against its fake quantization (calibration) */
  double w_sqnr_db[2];      /* its weights against theirs */
  double accuracy[2];       /* on the held-out images, only this layer quantized */
  double drop[2];           /* fp32 accuracy - that, in points */
  double logit_sqnr_db[2];  /* logits against the fp32 model's (+inf: identical) */
} vmc_sens_layer;

typedef struct vmc_sens_report {
  int n_layers;
  vmc_sens_layer *layers;   /* vmc_malloc_plain'd, in node order */
  int calib_images;         /* used */
  int eval_first, eval_images; /* the held-out slice of the training split */
  double fp32_accuracy;     /* of the folded fp32 model on it */
  double seconds;
} vmc_sens_report;

void vmc_sens_report_free(vmc_sens_report *r);

/* The table above for g (not changed) on train (the training split,
 * normalised as g expects).  r is filled (free it also after an error). */
vmc_status vmc_sensitivity(const vmc_graph *g, const vmc_dataset *train,
                           const vmc_sens_opts *o, vmc_sens_report *r);

/* The greedy choice (see above).  bits[i] (n_layers entries) on entry: 0
 * keeps layer i in fp32, anything else lets it be chosen; on return 0, 4 or
 * 8.  *mean_bits (may be NULL) gets the mean bits per weight.  Errors: B
 * below 4 or not finite, or a mean still above B with every other layer at
 * 4 bits (bits unchanged then). */
vmc_status vmc_mixed_choose(const vmc_sens_report *r, double bits_budget, vmc_sens_rank rank,
                            int *bits, double *mean_bits);

/* Mean bits per weight of a choice (fp32 layers counting 32). */
double vmc_mixed_mean_bits(const vmc_sens_report *r, const int *bits);

typedef struct vmc_mixed_opts {
  double bits_budget;  /* B, >= 4 */
  double max_drop;     /* accuracy budget in points on the held-out slice; < 0: none */
  vmc_sens_rank rank;
} vmc_mixed_opts;

typedef struct vmc_mixed_result {
  int n_layers;
  int *bits;            /* per layer of the sensitivity report (vmc_malloc_plain'd) */
  double mean_bits;
  int fp32_layers;
  double accuracy;      /* of the chosen model on the held-out slice */
  double drop;          /* fp32 - that, in points */
  int tries;            /* PTQ runs made */
} vmc_mixed_result;

void vmc_mixed_result_free(vmc_mixed_result *m);

/* The mixed-precision model of g in *out (integer sites, so deployable),
 * from sens (made by vmc_sensitivity on the same g, train and o);
 * ptq_report (may be NULL) describes the final PTQ run.  Free res with
 * vmc_mixed_result_free, also after an error (it then holds the last choice
 * tried). */
vmc_status vmc_mixed_precision(const vmc_graph *g, const vmc_dataset *train,
                               const vmc_sens_opts *o, const vmc_sens_report *sens,
                               const vmc_mixed_opts *mo, vmc_graph **out,
                               vmc_ptq_report *ptq_report, vmc_mixed_result *res);

#endif
