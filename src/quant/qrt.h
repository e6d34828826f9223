/* The integer runtime: a quantized graph (the fp32 simulation that
 * vmc_ptq_quantize writes) lowered to u8/s8 activations, s8/s4 weights and
 * the int8 kernels (kernels/qgemm.h, kernels/qelt.h).
 *
 * ---- What it lowers ----------------------------------------------------------
 * Every value a compute node reads is the output of a `fakequant` node (or a
 * flatten/dropout/maxpool of one, which keeps its grid and parameters): it
 * becomes a u8 tensor with that node's qparams (s8 ones are stored as u8
 * plus 128, see qelt.h).  The graph input is quantized with the parameters
 * of the fakequant that reads it.  Then:
 *   conv2d   im2col on u8 (the input's zero point as padding; none for a
 *            1x1 stride-1 unpadded conv) and vmc_qgemm with the weights
 *            packed once (s4 ones through vmc_qgemm_pack_a_s4), per group;
 *            depthwise (one input and one output channel per group, no
 *            dilation) on vmc_qdwconv.  The weights must be stored quantized
 *            (vmc_param.store s8/s4, per channel or per tensor); the bias is
 *            rounded to s32 codes of scale s_w[c] * s_x, and -zp_x * sum(w)
 *            is folded into it.
 *   linear   the same GEMM with one column per image.
 *   Both requantize in the GEMM's epilogue straight to the parameters of the
 *   fakequant that reads their output (through a relu/relu6, which becomes
 *   the clamp: lo = zp, hi = quantize(6)); the one whose output is the graph
 *   output writes fp32 (VMC_QOUT_F32).
 *   add      y = q_o((a - za) sa + (b - zb) sb), a relu/relu6 fused likewise.
 *   maxpool  on codes (the output keeps the input's parameters).
 *   avgpool, gap   an s32 window sum requantized to the reader's parameters.
 *   flatten, dropout   nothing (the tensor is reused).
 *   relu/relu6 on a quantized value: a clamp; fakequant on a quantized
 *   value: a requantization (nothing when the parameters are equal).
 *   A graph output that is quantized is dequantized.
 * Two layouts.  Planar (NCHW) tensors run every op above, convolutions as
 * GEMMs.  Pixel-major tensors (qelt.h: NHWC, channels padded to 4, a
 * one-pixel border holding the zero point) let convolutions run directly
 * (vmc_qconv: no im2col, no packing, no crop; depthwise ones on vmc_qdwp),
 * where the CPU has those kernels (AVX-512 VNNI) and the graph has only
 * convolutions (groups 1 or depthwise, dilation 1, padding <= 1, channels a
 * multiple of 4), adds, relus, fakequants, global average pooling and linear
 * layers on pooled vectors: the resnets and mobilenetv2-tiny.
 * The layout is chosen when the runtime is built (vmc_qrt_opts.layout; by
 * default pixel-major when it can run the graph, else planar); both give
 * the same bits.  Adds run over whole padded buffers: a border of zero
 * points gives a border of zero points.
 * Anything else -- a compute node reading a value without a fakequant, a
 * batchnorm, a concat, a producer whose output goes elsewhere than one
 * fakequant (through at most one relu) -- is VMC_ERR_UNSUPPORTED naming the
 * node and its op.
 *
 * ---- How it runs ---------------------------------------------------------------
 * Image by image.  Each context (one per thread, up to the batch) owns one
 * arena: the image's tensors, placed by liveness (tensors whose lives do not
 * overlap share bytes), the im2col buffer and nothing else; running
 * allocates nothing.  A batch is split over the contexts, one OpenMP thread
 * each; a single image runs on the first context with the GEMMs threaded
 * (vmc_qgemm_run_mt).  Results do not depend on the batch size, the thread
 * count or the GEMM variant (all bit-identical to the reference).
 *
 * ---- Agreement with the simulation ------------------------------------------------
 * The simulation rounds the same values with the same rule, but computes the
 * conv/linear sums in fp32 and multiplies by 1/s_y separately, where the
 * runtime sums exactly in s32 and multiplies once by s_w s_x / s_y: a value
 * can land one code apart where it falls within rounding of a tie; add,
 * maxpool and the quantization of the input are bit-exact. */
#ifndef VMC_QRT_H
#define VMC_QRT_H

#include "graph/graph.h"
#include "kernels/qgemm.h"
#include "train/train.h"

typedef struct vmc_qrt vmc_qrt;

typedef enum {
  VMC_QRT_LAYOUT_AUTO = 0, /* pixel-major where the CPU and graph allow it, else planar */
  VMC_QRT_LAYOUT_PLANAR,   /* NCHW tensors, convolutions as GEMMs */
  VMC_QRT_LAYOUT_PIXEL     /* pixel-major tensors, direct convolutions (or fail) */
} vmc_qrt_layout;

typedef struct vmc_qrt_opts {
  const vmc_qgemm_variant *gemm; /* NULL: vmc_qgemm_best() (VMC_ISA applies) */
  vmc_qdwconv_fn dwconv;         /* NULL: vmc_qdwconv, the best variant */
  vmc_qrt_layout layout;
  vmc_qconv_fn conv;             /* pixel-major convs; NULL: vmc_qconv_best() */
  vmc_qdwp_fn dwp;               /* pixel-major depthwise convs; NULL: vmc_qdwp_best() */
} vmc_qrt_opts;

/* Nonzero if g has a fakequant node: a quantized graph that the runtime is
 * meant to run. */
int vmc_graph_is_quantized(const vmc_graph *g);

/* Lowers g for batches of up to `batch` images (1..1048576); opts may be
 * NULL.  g is read only here: the runtime keeps its own packed weights. */
vmc_status vmc_qrt_create(const vmc_graph *g, int batch, const vmc_qrt_opts *opts,
                          vmc_qrt **out);
void vmc_qrt_destroy(vmc_qrt *q);
/* batch x C x H x W floats: the normalised images, as for a float plan. */
float *vmc_qrt_input(vmc_qrt *q);
/* batch x classes floats, after vmc_qrt_forward. */
const float *vmc_qrt_output(const vmc_qrt *q);
int vmc_qrt_batch(const vmc_qrt *q);
/* "pixel-major" or "planar": the layout it chose. */
const char *vmc_qrt_layout_name(const vmc_qrt *q);
int vmc_qrt_classes(const vmc_qrt *q);
/* Runs the first n images (1 <= n <= batch). */
vmc_status vmc_qrt_forward(vmc_qrt *q, int n);
/* Bytes of every arena (contexts, input and output, packed weights). */
size_t vmc_qrt_arena_bytes(const vmc_qrt *q);
/* The runtime as an engine for vmc_evaluate_with. */
void vmc_qrt_infer_fn(vmc_qrt *q, vmc_infer_fn *f);
/* One line per step, for `vmc info`-like listings and tests: "conv2d
 * layer1.0.conv1 gemm 16x144x784" ...; returns the number of steps, writes
 * step i's description into buf when i is in range. */
int vmc_qrt_describe(const vmc_qrt *q, int i, char *buf, size_t n);
/* Per-step timing: 1 zeroes and starts counters (one row per thread
 * context), 0 stops and frees them.  vmc_qrt_step_info gives step i's graph
 * node and op, its seconds summed over the contexts and its multiply-adds
 * per image (0 where not counted); returns the number of steps (and sets
 * nothing when i is out of range). */
vmc_status vmc_qrt_profile(vmc_qrt *q, int on);
int vmc_qrt_step_info(const vmc_qrt *q, int i, const char **node, const char **op,
                      double *seconds, double *macs);
/* How step i computes, a short name for profiles ("gemm-phase", "direct",
 * ...; vmc_op.kernel's names for the float plan's ways), or NULL. */
const char *vmc_qrt_step_kernel(const vmc_qrt *q, int i);

#endif
