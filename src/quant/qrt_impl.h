/* The integer runtime's plan (qrt.h): tensors and steps, shared by the
 * lowering (qrt.c) and the execution (qrt_run.c). */
#ifndef VMC_QRT_IMPL_H
#define VMC_QRT_IMPL_H

#include "kernels/qelt.h"
#include "quant/qrt.h"

typedef enum {
  QRT_QUANTIZE,  /* fp32 image -> u8 */
  QRT_GEMM,      /* conv2d (per group) or linear */
  QRT_CONV,      /* conv2d on pixel-major tensors (vmc_qconv) */
  QRT_DWCONV,    /* depthwise conv2d */
  QRT_ADD,       /* add; with in2 < 0 a requantization or a clamp */
  QRT_MAXPOOL,
  QRT_AVGPOOL,   /* avgpool, gap */
  QRT_DEQUANTIZE /* u8 -> fp32 graph output */
} qrt_kind;

typedef struct qrt_tensor {
  size_t bytes; /* per image */
  size_t off;   /* in a context's arena */
  vmc_qact q;
  int first, last; /* the step that writes it, the last that reads it */
  vmc_qnhwc g;     /* pixel-major runtimes: the layout (qelt.h) */
} qrt_tensor;

typedef struct qrt_step {
  qrt_kind kind;
  const char *op;           /* the graph op it runs */
  char node[VMC_NAME_MAX];  /* the graph node */
  int in, in2, out;         /* tensors; out < 0: fp32 into the image's output row */
  size_t n;                 /* QUANTIZE, ADD, DEQUANTIZE: elements per image */
  float inv;                /* QUANTIZE, ADD: 1 / output scale */
  vmc_conv_geom geom;       /* GEMM (one group), DWCONV, pools */
  /* GEMM: per group C (M x N) = A (M x K) * B (K x N); B is the input
   * itself (direct) or its im2col. */
  int groups, M, K, N, direct;
  int wide;            /* B read in place from the padded phase planes at the
                          offsets boff (K of them), output cropped (qelt.h) */
  int32_t *boff;       /* vmc_alloc'd */
  /* CONV: the kernel's parameters (cp.koff: vmc_alloc'd), the input byte
   * tap (0, 0) of output (0, 0) reads (from the tensor's start), the
   * multiply-adds (to decide on threads); packed holds the weights. */
  vmc_qconv_params cp;
  size_t xo;
  double macs;
  vmc_qdwp_params dwp;   /* DWCONV on pixel-major tensors (packed: its weights) */
  int res;               /* CONV: the residual of a fused add (its tensor), or -1 */
  vmc_qconv_add add;     /* its constants (add.res is set when running) */
  const vmc_qgemm_variant *gemm; /* GEMM: the runtime's, or its twin for these
                                    weights (vmc_qgemm_for_weights) */
  size_t packed_bytes; /* per group */
  uint8_t *packed;     /* vmc_alloc'd */
  int32_t *bias;       /* per output channel, zero point folded in */
  float *scale;        /* per output channel */
  int8_t *taps;        /* DWCONV: kh * kw per channel */
  vmc_qepi epi;        /* GEMM, DWCONV: bias and scale point at channel 0 */
  float pool_scale;    /* AVGPOOL */
  vmc_qepi_prep prep;  /* AVGPOOL */
} qrt_step;

struct vmc_qrt {
  int batch, classes, nthreads, n_ctx;
  size_t in_count;        /* floats per image */
  int in_c, in_h, in_w;
  qrt_tensor *t;
  int n_t, cap_t;
  qrt_step *s;
  int n_s, cap_s;
  size_t tensor_bytes;    /* of a context's tensors */
  size_t col_off, ctx_bytes; /* scratch (im2col) at col_off in each arena */
  uint8_t **ctx;          /* n_ctx arenas of ctx_bytes */
  float *input, *output;
  const vmc_qgemm_variant *gemm;
  int gemm_given;         /* gemm came from the options: no narrow twin unasked */
  vmc_qdwconv_fn dwconv;
  vmc_qconv_fn conv;      /* non-NULL: pixel-major tensors, convs on it */
  vmc_qdwp_fn dwp;        /* and depthwise convs */
  size_t weight_bytes;
  double *prof;           /* vmc_qrt_profile: n_ctx rows of n_s seconds, or NULL */
};

/* qrt_run.c: image x (in_count floats) through the steps on the arena
 * ctx, logits into y (classes floats); threaded: a single image's GEMMs and
 * depthwise channels may use the thread team.  prof (n_s seconds, or
 * NULL): each step's wall time added. */
void vmc_qrt_run_image(const vmc_qrt *q, uint8_t *ctx, const float *x, float *y, int threaded,
                       double *prof);

#endif
