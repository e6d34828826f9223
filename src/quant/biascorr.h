/* Empirical bias correction (Nagel et al., "Data-Free Quantization Through
 * Weight Equalization and Bias Correction", 2019, the empirical variant):
 * quantizing a layer's weights (and its input) shifts the mean of its
 * output, a bias that the next layers inherit.  For each quantized conv2d or
 * linear layer of q, in graph order, the per-channel mean of its output
 * over the calibration images is measured in the float graph f and in q
 * (with the corrections of the layers before it in place), and the
 * difference is added to the layer's bias.  Where q's biases are s32 codes
 * (vmc_qbias_s32 with scale s_w[c] * s_x), the corrected bias is rounded to
 * them again, s_x read from the fakequant node the layer reads.
 *
 * f is the float graph q was quantized from (BatchNorm folded: the same
 * layers by name, each layer's output value a conv2d/linear output in both);
 * a layer of q without a bias, or missing from f, is left alone.  One
 * forward pass of f and one of q per layer over the n_img images. */
#ifndef VMC_BIASCORR_H
#define VMC_BIASCORR_H

#include "data/data.h"
#include "graph/graph.h"

typedef struct vmc_biascorr_report {
  int layers;             /* biases corrected */
  double mean_abs_shift;  /* mean |correction| over their channels, in output units */
  double max_abs_shift;
} vmc_biascorr_report;

vmc_status vmc_bias_correct(vmc_graph *f, vmc_graph *q, const vmc_dataset *d, int n_img,
                            int batch, int bias_s32, vmc_biascorr_report *report);

#endif
