/* Quantization-aware training (QAT), simulated in fp32.
 *
 * vmc_qat(g, train, test, opts) makes a new graph (g is not changed):
 *  1. the starting point is vmc_ptq_quantize(g, train, &opts->ptq): BatchNorm
 *     folded, activation ranges calibrated, per-channel (or per-tensor)
 *     weight scales, fakequant nodes where the integer runtime quantizes.
 *     4-bit activations (act_scheme VMC_QSCHEME_U4) start from the u8
 *     calibration: each fakequant's u8 range [(qmin - zp) s, (qmax - zp) s]
 *     is re-expressed on the u4 grid (vmc_qparams_from_range);
 *  2. fine-tuning with vmc_train (opts->train: epochs, lr, schedule ...):
 *     the optimizer updates float "shadow" weights (the folded float
 *     weights at the start); each forward and backward sees
 *     fq(w) = vmc_qfake_quantize(w) with scales re-derived from max |w| of
 *     each output channel after every optimizer step (fixed_weight_scales:
 *     the PTQ scales, kept).  Gradients pass straight through (STE) with
 *     PyTorch's mask: zero where round(w / s) lies outside [qmin, qmax]
 *     (vmc_qat_ste_mask; with max |w| scales nothing is outside).  Biases
 *     likewise: float shadows, each forward on their s32 grid (scale
 *     s_w[c] * s_x of that step), plain STE.  Activations keep the
 *     fakequant op's STE;
 *  3. activation ranges: one moving-average min/max observer per fakequant
 *     node (PyTorch's MovingAverageMinMaxObserver, momentum 0.01), started
 *     at the calibrated range, fed the node's input after every training
 *     forward; the node's scale and zero point follow it from the next
 *     forward on (one batch later than PyTorch, which observes and then
 *     quantizes inside the same forward).  Observers stop after epoch
 *     freeze_observers_epoch (0: the calibrated ranges are kept throughout);
 *  4. BatchNorm: with freeze_bn_epoch 0 it is folded from epoch 0
 *     (statistics frozen from the start: the model arrives trained, so its
 *     running statistics are those of the data, and the weights that are
 *     fake-quantized are exactly the folded ones the integer runtime uses).
 *     With freeze_bn_epoch F > 0 the batchnorms stay in the training graph
 *     (qat_bn.h): the conv before each sees fq(w * a) / a (a = gamma /
 *     sqrt(running var + eps), the scales from max |w * a|), the batchnorm
 *     normalises with batch statistics and updates its running ones during
 *     epochs 1..F, then uses the running ones (frozen; gamma and beta still
 *     learn); at the end they are folded and the weights are fq(w * a);
 *  5. at the end every conv2d/linear weight is fq(shadow) and marked
 *     quantized (vmc_param_set_quantized), every bias on its s32 grid
 *     (scale s_w[c] * s_x of the final scales), metadata "quant"
 *     rewritten with method "qat" (a summary: schemes, observers, the
 *     training run), and a "history" line added: the same contract as a
 *     PTQ graph.  The final qparams of every fakequant and layer are in the
 *     graph and in the report;
 *  6. checkpoints (opts->train.checkpoint / .resume): the trainer's, with
 *     the float shadows in place of the fake-quantized weights and the
 *     fakequants' state in the metadata "checkpoint.qat"; a resume with the
 *     same model and options continues bit for bit. */
#ifndef VMC_QAT_H
#define VMC_QAT_H

#include "quant/ptq.h"
#include "train/train.h"

typedef struct vmc_qat_opts {
  vmc_ptq_opts ptq;           /* the starting point; act_scheme may be U4 */
  vmc_train_config train;     /* the fine-tuning run (epochs, lr, ...) */
  int freeze_observers_epoch; /* observers update in epochs 1..E; -1: never freeze */
  int freeze_bn_epoch;        /* batch statistics in epochs 1..F (0: folded from the start) */
  float momentum;             /* of the moving-average observers, in (0, 1] */
  int fixed_weight_scales;    /* 1: keep the PTQ weight scales (STE mask active) */
  int learn_act_scales;       /* LSQ for the conv2d/linear inputs (not the image) */
  vmc_epoch_cb on_epoch;      /* per-epoch callback (may be NULL) */
  void *cb_user;
} vmc_qat_opts;

/* Defaults: PTQ's defaults (s8 per channel, u8, min/max), SGD momentum 0.9
 * Nesterov, lr 0.003 cosine, weight decay 5e-4, batch 128, 2 epochs,
 * observers frozen after epoch 1, momentum 0.01, weight scales re-derived,
 * activation scales by observers (learn_act_scales 0). */
void vmc_qat_opts_default(vmc_qat_opts *o);

/* A conv2d/linear layer of the result. */
typedef struct vmc_qat_layer {
  char node[VMC_NAME_MAX];   /* the conv2d/linear node */
  char quant[VMC_NAME_MAX];  /* the fakequant node it reads ("" if none: a float input) */
  char input[VMC_NAME_MAX];  /* the value that fakequant reads ("" if none) */
  int weight_bits;           /* 8, 7 or 4 */
  int channels;              /* weight scales: output channels, or 1 per tensor */
  float w_scale_min, w_scale_max; /* the final scales (stored on the parameter) */
} vmc_qat_layer;

/* A fakequant node of the result: its final parameters (its attributes in
 * the graph) and the range its moving averages ended at. */
typedef struct vmc_qat_fakequant {
  char node[VMC_NAME_MAX];
  char input[VMC_NAME_MAX];  /* the value it quantizes */
  int lsq;                   /* its scale was learned */
  vmc_qparams qp;
  float lo, hi;
} vmc_qat_fakequant;

typedef struct vmc_qat_report {
  vmc_ptq_report ptq;         /* the starting point */
  int epochs;                 /* run */
  vmc_epoch_result *epoch;    /* per epoch (vmc_malloc_plain'd) */
  double seconds;             /* the whole call */
  int n_layers, n_fakequant;  /* the result (vmc_malloc_plain'd; set when the call succeeds) */
  vmc_qat_layer *layers;
  vmc_qat_fakequant *fakequant;
} vmc_qat_report;

void vmc_qat_report_free(vmc_qat_report *r);

/* The fine-tuned quantized copy of g in *out.  test may be NULL (no
 * per-epoch evaluation).  report may be NULL (free with
 * vmc_qat_report_free, also after an error).  Errors name the option. */
vmc_status vmc_qat(const vmc_graph *g, const vmc_dataset *train, const vmc_dataset *test,
                   const vmc_qat_opts *opts, vmc_graph **out, vmc_qat_report *report);

/* Straight-through gradient of fq(w) for `channels` blocks of k weights
 * with params[c]: grad[i] stays where round(w[i] / s) + zp (unclamped) lies
 * in [qmin, qmax], becomes 0 elsewhere (and for non-finite w). */
void vmc_qat_ste_mask(const float *w, int channels, size_t k, const vmc_qparams *params,
                      float *grad);

/* The symmetric scheme's parameters from max |w| of each of `channels`
 * blocks of k weights (vmc_quantize_weights' rule), then
 * wq = fq(w) (wq may be w). */
vmc_status vmc_qat_fake_quantize_weights(const float *w, int channels, size_t k,
                                         vmc_qscheme scheme, vmc_qparams *params, float *wq);

#endif
