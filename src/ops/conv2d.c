/* conv2d: attrs out_c, kh, kw, sh, sw, ph, pw, dh, dw, groups;
 * params [weight (out_c, C/groups, kh, kw)] or [weight, bias (out_c)].
 *
 * Per image and group, one of five strategies:
 *   DIRECT     1x1, stride 1, no padding: the input is the GEMM operand.
 *   DEPTHWISE  one input and one output channel per group: direct loops.
 *   WIDE       stride 1: no im2col.  The input is copied once into a
 *              zero-padded plane of width Wp = W + pw (neighbouring rows
 *              share their padding columns); every row of the
 *              virtual im2col matrix is then a contiguous slice of that
 *              plane (vmc_sgemm_rows), computed over a "wide" output grid
 *              OH x Wp whose last Wp - OW columns are discarded.  Backward
 *              uses the same trick: dW from a wide dY, and dx as the
 *              convolution of the padded dY with the rotated kernel.
 *   PHASE      strides up to 4: no im2col either.  The zero-padded input is
 *              split once into its stride phases (plane (r, s) holds the
 *              padded pixels (sh*u + r, sw*v + s)), each phh x phw.  Tap
 *              (i, j) reads phase ((i*dh) % sh, (j*dw) % sw) shifted by
 *              ((i*dh) / sh, (j*dw) / sw), a contiguous slice over the wide
 *              output grid OH x phw, so the WIDE machinery applies: one
 *              vmc_sgemm_rows, dW from a wide dY.  dx: each phase plane is
 *              a convolution of the padded dY with the taps of that phase
 *              (one vmc_sgemm_rows per phase), then the phases are merged
 *              back into the image.  Only the phases some tap reads are
 *              built (a 1x1 stride-2 conv: one, a plain GEMM).
 *   IM2COL     everything else (larger strides): im2col + GEMM, col2im.
 * Images run in parallel, one per thread with its own scratch; a batch
 * smaller than the thread count runs images in turn with threaded GEMMs. */
#include "graph/op.h"
#include "kernels/conv.h"
#include "kernels/gemm.h"
#include "kernels/planes.h"
#include "kernels/winograd.h"

#include <omp.h>
#include <string.h>

enum { DIRECT, DEPTHWISE, WIDE, PHASE, IM2COL };

typedef struct {
  int groups, oc, ocg;
  vmc_conv_geom g; /* per group */
  int K, P;        /* rows of the im2col matrix (cg*kh*kw), output pixels */
  int kind;
  /* WIDE: padded input plane, wide output grid */
  int hp, wp, nw;   /* padded height/width, nw = oh*wp */
  size_t plane;     /* hp*wp, + slack after the last channel */
  /* WIDE backward: dx = conv(pad(dY), rot(W)) */
  int hq, wq, nq;   /* padded dY height/width, nq = h*wq */
  int pth, ptw;     /* its padding (PHASE: the same four, see phase_backward) */
  int bwd_wide;     /* that convolution is possible (padding >= 0) */
  int dw_wide;      /* DEPTHWISE with stride 1: also over a padded plane */
  /* PHASE: the phase planes (kernels/planes.h), plane = phh*phw floats,
   * nw = oh*phw */
  vmc_phase_geom pg;
  int phw, nslots; /* copies of pg's */
  /* WIDE: Winograd (kernels/winograd.h), reading x (and in training dY,
   * for dx) as it lies; nt tiles an image (th rows of tw), transformed
   * wband tile rows at a time into rows ldt apart (winograd.h's slack,
   * 64-byte multiples), npos planes */
  int wino;
  int wm;      /* output tiles wm x wm: 2, F(2x2, 3x3); 4, F(4x4, 3x3) (inference) */
  int wino_dw; /* training: dW through Winograd too (wino_dw) */
  int wband;   /* tile rows transformed at a time */
  int th, tw, npos;
  size_t nt, ldt;
} conv_cfg;

vmc_conv_geom vmc_conv2d_window(const vmc_node *n, const vmc_shape *in) {
  vmc_conv_geom g = {0};
  g.kh = vmc_node_attr_i(n, "kh", 1);
  g.kw = vmc_node_attr_i(n, "kw", g.kh);
  g.sh = vmc_node_attr_i(n, "sh", 1);
  g.sw = vmc_node_attr_i(n, "sw", g.sh);
  g.ph = vmc_node_attr_i(n, "ph", 0);
  g.pw = vmc_node_attr_i(n, "pw", g.ph);
  g.dh = vmc_node_attr_i(n, "dh", 1);
  g.dw = vmc_node_attr_i(n, "dw", g.dh);
  if (!in) return g;
  const int groups = vmc_node_attr_i(n, "groups", 1);
  g.c = groups > 0 ? in->d[1] / groups : 0;
  g.h = in->d[2];
  g.w = in->d[3];
  g.oh = vmc_conv_out(g.h, g.kh, g.sh, g.ph, g.dh);
  g.ow = vmc_conv_out(g.w, g.kw, g.sw, g.pw, g.dw);
  return g;
}

/* Winograd needs this many input and output channels: below, its GEMMs are
 * too thin to repay the transforms. */
#define WINO_MIN_C 8
/* Winograd's dW needs this many tiles per image (resnet8 training: with
 * 49 (14x14) it beats the wide dW, with 16 (7x7) it loses). */
#define WINO_DW_MIN_TILES 32
/* Winograd transforms an image in bands of tile rows whose transformed
 * input and output planes take at most this much (or one tile row), so
 * they stay in a core's L2 and the scratch stays bounded on large images. */
#define WINO_BAND_BYTES (512u << 10)

/* Winograd's tiles of wm x wm outputs and the bands they are transformed
 * in. */
static void wino_tiling(conv_cfg *c, int wm) {
  const vmc_conv_geom *g = &c->g;
  c->wm = wm;
  c->npos = (wm + 2) * (wm + 2);
  c->th = (g->oh + wm - 1) / wm;
  c->tw = (g->ow + wm - 1) / wm;
  c->nt = (size_t)c->th * c->tw;
  /* Bands of tile rows whose transformed planes fit WINO_BAND_BYTES. */
  const size_t per_row =
      (size_t)c->npos * ((size_t)g->c + (size_t)c->ocg) * (size_t)c->tw * sizeof(float);
  const size_t band = WINO_BAND_BYTES / per_row;
  c->wband = band < 1 ? 1 : band > (size_t)c->th ? c->th : (int)band;
  c->ldt = vmc_align_up((size_t)c->wband * c->tw + VMC_WINO_ROW_SLACK, 16);
  /* Its GEMMs run over a band's tiles, the wide dW's over the image's
   * wide grid (4x as long): on too few tiles the wide one is faster. */
  c->wino_dw = wm == 2 && (size_t)c->wband * c->tw >= WINO_DW_MIN_TILES;
}

static conv_cfg cfg_of(const vmc_node *n, const vmc_shape *in) {
  conv_cfg c;
  memset(&c, 0, sizeof c);
  c.groups = vmc_node_attr_i(n, "groups", 1);
  c.oc = vmc_node_attr_i(n, "out_c", 0);
  c.ocg = c.groups > 0 ? c.oc / c.groups : 0;
  c.g = vmc_conv2d_window(n, in);
  const vmc_conv_geom *g = &c.g;
  /* Attributes from a file may be absurd: products in 64 bits, and an
   * out-of-range result leaves K or P 0 for conv_infer to reject. */
  const int window = g->kh >= 1 && g->kw >= 1 && g->kh <= 64 && g->kw <= 64;
  int64_t K = window ? (int64_t)g->c * g->kh * g->kw : 0, P = (int64_t)g->oh * g->ow;
  c.K = (K < 1 || K > (1 << 28)) ? 0 : (int)K;
  c.P = (P < 1 || P > (1 << 28)) ? 0 : (int)P;
  if (!c.K || !c.P || g->kh > 64 || g->kw > 64 || g->ph > 64 || g->pw > 64 || g->dh > 64 ||
      g->dw > 64 || g->ph < 0 || g->pw < 0)
    return c; /* conv_infer rejects it */
  if (g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0)
    c.kind = DIRECT;
  else if (g->c == 1 && c.ocg == 1)
    c.kind = DEPTHWISE;
  else if (g->sh == 1 && g->sw == 1)
    c.kind = WIDE;
  else if (g->sh <= VMC_MAX_PHASE && g->sw <= VMC_MAX_PHASE)
    c.kind = PHASE;
  else
    c.kind = IM2COL;
  c.dw_wide = c.kind == DEPTHWISE && g->sh == 1 && g->sw == 1;
  if (c.kind == WIDE || c.dw_wide) {
    c.hp = g->h + 2 * g->ph;
    /* Rows share their padding: the pw zeros that open each padded row
     * are also the right padding of the row above, which a tap reading
     * past the end of its row wraps into (it reads at most pw beyond for a
     * valid output column).  wp >= ow keeps a wide row's outputs in it. */
    c.wp = g->w + g->pw > g->ow ? g->w + g->pw : g->ow;
    c.nw = g->oh * c.wp;
    c.plane = (size_t)c.hp * c.wp;
    c.pth = g->dh * (g->kh - 1) - g->ph;
    c.ptw = g->dw * (g->kw - 1) - g->pw;
    c.bwd_wide = c.pth >= 0 && c.ptw >= 0;
    c.hq = g->oh + 2 * c.pth;
    c.wq = g->ow + c.ptw > g->w ? g->ow + c.ptw : g->w; /* shared padding, as wp */
    c.nq = g->h * c.wq;
    c.wino = c.kind == WIDE && c.groups == 1 && g->kh == 3 && g->kw == 3 && g->dh == 1 &&
             g->dw == 1 && g->ph == 1 && g->pw == 1 && c.wp == g->w + 1 && c.wq == c.wp &&
             g->c >= WINO_MIN_C && c.ocg >= WINO_MIN_C && vmc_wino_enabled();
  }
  if (c.wino) wino_tiling(&c, 2);
  if (c.kind == PHASE) {
    vmc_phase_geom *q = &c.pg;
    *q = (vmc_phase_geom){.h = g->h, .w = g->w, .top = g->ph, .left = g->pw, .sh = g->sh,
                          .sw = g->sw, .phh = vmc_ceil_div(g->h + 2 * g->ph, g->sh),
                          .phw = vmc_ceil_div(g->w + 2 * g->pw, g->sw)};
    memset(q->slot, -1, sizeof q->slot);
    for (int i = 0; i < g->kh; i++)
      for (int j = 0; j < g->kw; j++) {
        signed char *sl = &q->slot[(i * g->dh) % g->sh][(j * g->dw) % g->sw];
        if (*sl < 0) *sl = (signed char)q->nslots++;
      }
    c.phw = q->phw;
    c.nslots = q->nslots;
    c.plane = (size_t)q->phh * q->phw;
    c.nw = g->oh * c.phw; /* phw >= ow + the largest column shift: rows stay in their plane row */
    /* Backward: dY zero-padded by the largest tap shifts, rows phw long
     * (phw >= ow + ptw always), and one zero row more than a phase plane
     * reads past it. */
    c.pth = (g->kh - 1) * g->dh / g->sh;
    c.ptw = (g->kw - 1) * g->dw / g->sw;
    c.wq = c.phw;
    c.hq = q->phh + c.pth + 1;
    c.nq = q->phh * c.phw;
  }
  return c;
}

/* An inference plan's configuration: F(4x4, 3x3) where rows of 4, 7 or 8
 * tiles take its SIMD transforms (outputs 13 to 16 and 25 to 32 pixels
 * wide; on 14x14 outputs its 36 GEMMs over 16 tiles take 0.6 of the time
 * of F(2x2, 3x3)'s 16 over 49, see docs/benchmarks.md), and at least two
 * tile rows. */
static conv_cfg cfg_infer(const vmc_node *n, const vmc_shape *in) {
  conv_cfg c = cfg_of(n, in);
  const int tw4 = (c.g.ow + 3) / 4;
  if (c.wino && (tw4 == 4 || tw4 == 7 || tw4 == 8) && c.g.oh > 4) wino_tiling(&c, 4);
  return c;
}

/* Winograd's planes: position ab's at ab * (channels * ldt) + 16 floats
 * (64 bytes more than the rows, so that the 16 planes a transform streams
 * through do not share L1 sets, as they would 4 KiB apart). */
static size_t wino_pos_stride(const conv_cfg *c, int ch) { return (size_t)ch * c->ldt + 16; }

/* Scratch floats of Winograd's V and M planes (forward: c then ocg
 * channels, dx: the other way round), the transforms' rows, alignment. */
static size_t wino_floats(const conv_cfg *c) {
  return (size_t)c->npos * (wino_pos_stride(c, c->g.c) + wino_pos_stride(c, c->ocg)) +
         vmc_wino_tmp_floats(c->g.ow) + 16;
}

/* Those planes in a scratch slice, from float `at` on (wino_floats of it). */
typedef struct {
  vmc_wino_buf v, m; /* V: the input's transformed tiles (c rows), M: ocg rows */
  float *rows;       /* the transforms' rows */
} wino_space;

static wino_space wino_space_of(const conv_cfg *c, float *slice, size_t at) {
  wino_space w;
  w.v = (vmc_wino_buf){(float *)vmc_align_up((uintptr_t)(slice + at), 64),
                       wino_pos_stride(c, c->g.c), c->ldt};
  w.m = (vmc_wino_buf){w.v.base + (size_t)c->npos * w.v.pos_stride, wino_pos_stride(c, c->ocg),
                       c->ldt};
  w.rows = w.m.base + (size_t)c->npos * w.m.pos_stride;
  return w;
}

/* The end of the band of tile rows starting at b0, before ti1. */
static int wino_band_end(const conv_cfg *c, int b0, int ti1) {
  return ti1 - b0 < c->wband ? ti1 : b0 + c->wband;
}

/* A PHASE convolution whose phase rows are exactly ow long (a 1x1
 * downsample), given one more zero column per phase row: its wide output
 * rows are then ow + 1 long, so it can write the padded layout (op.h). */
static int phase_widens(const conv_cfg *c) { return c->kind == PHASE && c->phw == c->g.ow; }
static void phase_widen(conv_cfg *c) {
  c->phw = c->pg.phw = c->g.ow + 1;
  c->plane = (size_t)c->pg.phh * c->phw;
  c->nw = c->g.oh * c->phw;
}

static vmc_status conv_infer(const vmc_graph *gr, const vmc_node *n, const vmc_shape *in,
                             vmc_shape *out) {
  if (in[0].ndim != 4) return vmc_error(VMC_ERR_SHAPE, "node '%s': conv2d needs NCHW input", n->name);
  conv_cfg c = cfg_of(n, &in[0]);
  const vmc_conv_geom *g = &c.g;
  if (c.groups < 1 || c.oc < 1 || in[0].d[1] % c.groups || c.oc % c.groups)
    return vmc_error(VMC_ERR_SHAPE, "node '%s': %d input and %d output channels do not split into %d groups",
                     n->name, in[0].d[1], c.oc, c.groups);
  if (g->kh < 1 || g->kw < 1 || g->sh < 1 || g->sw < 1 || g->ph < 0 || g->pw < 0 || g->dh < 1 ||
      g->dw < 1 || g->kh > 64 || g->kw > 64 || g->ph > 64 || g->pw > 64 || g->dh > 64 || g->dw > 64)
    return vmc_error(VMC_ERR_INVALID_ARG, "node '%s': bad kernel/stride/padding/dilation", n->name);
  if (g->oh < 1 || g->ow < 1 || c.K < 1 || c.P < 1)
    return vmc_error(VMC_ERR_SHAPE, "node '%s': a %dx%d kernel does not fit a %dx%d input", n->name,
                     g->kh, g->kw, g->h, g->w);
  vmc_shape ws = vmc_shape4(c.oc, g->c, g->kh, g->kw);
  VMC_TRY(vmc_op_check_param(gr, n, 0, &ws));
  if (n->n_param > 1) {
    vmc_shape bs = {1, {c.oc}};
    VMC_TRY(vmc_op_check_param(gr, n, 1, &bs));
  }
  *out = vmc_shape4(in[0].d[0], c.oc, g->oh, g->ow);
  return VMC_OK;
}

/* ---- per-thread scratch layout (floats; pointer tables at the end) ---- */
typedef struct {
  size_t a, b, c, d; /* sizes of four float regions */
  size_t rows;       /* pointers */
} scratch_plan;

static scratch_plan scratch_of(const conv_cfg *c, vmc_mode mode) {
  scratch_plan s = {0};
  const vmc_conv_geom *g = &c->g;
  const size_t slack = (size_t)(g->kw - 1) * g->dw + 16;
  const size_t xp = (size_t)g->c * c->plane + slack;
  switch (c->kind) {
  case WIDE:
    if (c->wino && mode != VMC_MODE_TRAIN) {
      s.b = wino_floats(c); /* Winograd's planes (it reads the input as it lies) */
    } else if (mode != VMC_MODE_TRAIN) {
      s.a = xp;                        /* padded input */
      s.b = (size_t)c->ocg * c->nw;    /* wide output */
      s.rows = (size_t)c->K;
    } else {
      s.a = xp; /* padded input */
      /* wide output / wide dY; with Winograd (and so the shared padded dY
       * below), its planes */
      s.b = c->wino ? wino_floats(c) : (size_t)c->ocg * c->nw;
      /* padded dY (with room before it for wide_backward's shared layout), or dcol */
      s.c = c->bwd_wide ? (size_t)c->pth * c->wq + c->ptw + (size_t)c->ocg * c->hq * c->wq + slack
                        : (size_t)c->K * c->P;
      s.d = c->bwd_wide && !c->wino ? (size_t)g->c * c->nq : 0; /* wide dx */
      size_t kt = (size_t)c->ocg * g->kh * g->kw;
      s.rows = (size_t)c->K > kt ? (size_t)c->K : kt;
    }
    break;
  case DEPTHWISE:
    if (c->dw_wide) {
      s.a = c->plane + slack;                                      /* padded input */
      s.b = (size_t)c->nw;                                         /* wide y / dY */
      s.c = mode == VMC_MODE_TRAIN ? c->plane + slack : 0;         /* padded dx */
    }
    break;
  case PHASE: {
    const size_t xq = (size_t)g->c * c->nslots * c->plane + slack;
    s.a = xq; /* phase planes */
    /* wide output / padded dY (hq*wq >= nw) */
    s.b = (size_t)c->ocg * (mode == VMC_MODE_TRAIN ? (size_t)c->hq * c->wq : (size_t)c->nw);
    s.d = mode == VMC_MODE_TRAIN ? xq : 0; /* phase-plane gradient */
    /* the x rows, or one phase's dY rows (ocg per tap) */
    const size_t kt = mode == VMC_MODE_TRAIN ? (size_t)c->ocg * g->kh * g->kw : 0;
    s.rows = (size_t)c->K > kt ? (size_t)c->K : kt;
    break;
  }
  case IM2COL:
    s.a = (size_t)c->K * c->P;                              /* col */
    s.b = mode == VMC_MODE_TRAIN ? (size_t)c->K * c->P : 0; /* dcol */
    break;
  case DIRECT:
    s.rows = mode == VMC_MODE_TRAIN ? (size_t)c->K : 0; /* x's rows, for dW */
    break;
  default:
    break;
  }
  return s;
}

/* A thread's private gradients: dW, dB, and with Winograd the transformed
 * dW of its images (wino_dw), VMC_WINO_POS planes of oc x c. */
static size_t dw_floats(const conv_cfg *c) {
  return (size_t)c->oc * c->K + (size_t)c->oc +
         (c->wino_dw ? (size_t)VMC_WINO_POS * c->oc * c->g.c : 0);
}
static float *wino_du(const conv_cfg *c, float *dW) { return dW + (size_t)c->oc * c->K + c->oc; }

static size_t conv_scratch(const vmc_node *n, const vmc_shape *in, const vmc_shape *out,
                           vmc_mode mode, int nthreads) {
  conv_cfg c = mode != VMC_MODE_TRAIN ? cfg_infer(n, &in[0]) : cfg_of(n, &in[0]);
  if (mode != VMC_MODE_TRAIN && phase_widens(&c)) phase_widen(&c); /* the larger */
  scratch_plan s = scratch_of(&c, mode);
  size_t f = s.a + s.b + s.c + s.d + (mode == VMC_MODE_TRAIN ? dw_floats(&c) : 0);
  return vmc_align_up(f * sizeof(float), 64) + s.rows * sizeof(float *);
}

/* The weights of each group pre-packed for the forward GEMM (one
 * vmc_sgemm_packed_a per group, then their panels): made once by an
 * inference plan, once per forward in training.  Winograd: one per
 * position of the transformed kernel, then room to transform one; training
 * adds the same for its dx convolution (the rotated kernel, c x ocg). */
typedef struct {
  int np, M, K, wm; /* np packs of M x K; wm: of a 3x3 kernel's Winograd positions (tiling) */
} pack_set;

static pack_set fwd_set(const conv_cfg *c) {
  return c->wino ? (pack_set){c->npos, c->ocg, c->g.c, c->wm}
                 : (pack_set){c->groups, c->ocg, c->K, 0};
}
static pack_set dx_set(const conv_cfg *c) { return (pack_set){VMC_WINO_POS, c->g.c, c->ocg, 2}; }

static size_t set_bytes(pack_set p) {
  const size_t stage = p.wm ? (size_t)p.M * p.K * sizeof(float) : 0;
  return vmc_align_up((size_t)p.np * sizeof(vmc_sgemm_packed_a), VMC_ALIGN) +
         (size_t)p.np * vmc_align_up(vmc_sgemm_pack_a_bytes(p.M, p.K), VMC_ALIGN) +
         vmc_align_up(stage, VMC_ALIGN);
}

/* Packs W (np groups of M x K, or with wm the M x K x 3 x 3 kernel
 * transformed position by position) into the set at pk. */
static void pack_set_fill(pack_set p, const float *W, vmc_sgemm_packed_a *pk) {
  uint8_t *data = (uint8_t *)pk + vmc_align_up((size_t)p.np * sizeof *pk, VMC_ALIGN);
  const size_t each = vmc_align_up(vmc_sgemm_pack_a_bytes(p.M, p.K), VMC_ALIGN);
  float *stage = (float *)(data + (size_t)p.np * each);
  for (int i = 0; i < p.np; i++) {
    const float *A = W + (size_t)i * p.M * p.K;
    if (p.wm) {
      (p.wm == 4 ? vmc_wino4_weights : vmc_wino_weights)(W, p.M, p.K, i, stage, p.K);
      A = stage;
    }
    if (vmc_sgemm_pack_a(0, p.M, p.K, 1.0f, A, p.K, data + (size_t)i * each, each, &pk[i]))
      pk[i].data = NULL; /* cannot happen with a buffer this size: forward packs per call */
  }
}

/* Inference state: the node's conv_cfg (prepared once: attributes are
 * looked up by name), then the packs (not for depthwise). */
static size_t cfg_bytes(void) { return vmc_align_up(sizeof(conv_cfg), VMC_ALIGN); }

/* Training state: the weights rearranged for dx (rotate_kernel,
 * phase_kernel), then the packs, made once per forward, then Winograd's dx
 * packs, made once per backward. */
static size_t wt_bytes(const conv_cfg *c) {
  const int rearranged = (c->kind == WIDE && c->bwd_wide) || c->kind == PHASE;
  return rearranged ? vmc_align_up((size_t)c->oc * c->K * sizeof(float), VMC_ALIGN) : 0;
}

static size_t conv_state(const vmc_node *n, const vmc_shape *in, const vmc_shape *out,
                         vmc_mode mode) {
  conv_cfg c = mode != VMC_MODE_TRAIN ? cfg_infer(n, &in[0]) : cfg_of(n, &in[0]);
  const size_t packs = c.kind == DEPTHWISE ? 0 : set_bytes(fwd_set(&c));
  if (mode != VMC_MODE_TRAIN) return cfg_bytes() + packs;
  return wt_bytes(&c) + packs + (c.wino ? set_bytes(dx_set(&c)) : 0);
}

/* The packs in the state (either mode), or NULL. */
static vmc_sgemm_packed_a *packs_of(const vmc_opctx *ctx, const conv_cfg *c) {
  if (!ctx->state || c->kind == DEPTHWISE) return NULL;
  return (vmc_sgemm_packed_a *)((uint8_t *)ctx->state +
                                (ctx->mode != VMC_MODE_TRAIN ? cfg_bytes() : wt_bytes(c)));
}

/* Training with Winograd: the dx packs, after the forward's. */
static vmc_sgemm_packed_a *dx_packs_of(const vmc_opctx *ctx, const conv_cfg *c) {
  return (vmc_sgemm_packed_a *)((uint8_t *)packs_of(ctx, c) + set_bytes(fwd_set(c)));
}

/* Each group's weights packed for the forward GEMMs (Winograd: each
 * position's transformed kernel). */
static void pack_weights(const vmc_opctx *ctx, const conv_cfg *c, vmc_sgemm_packed_a *pk) {
  pack_set_fill(fwd_set(c), ctx->g->params[ctx->node->param[0]].data, pk);
}

static void conv_prepare(vmc_opctx *ctx) {
  if (!ctx->state) return;
  conv_cfg c = cfg_infer(ctx->node, &ctx->xs[0]);
  memcpy(ctx->state, &c, sizeof c);
  vmc_sgemm_packed_a *pk = packs_of(ctx, &c);
  if (pk) pack_weights(ctx, &c, pk);
}

/* Training keeps the rotated, channel-swapped kernel for the WIDE dx:
 * wt[g][c][o][i][j] = w[g][o][c][kh-1-i][kw-1-j]. */
static void rotate_kernel(const conv_cfg *c, const float *w, float *wt) {
  const int kk = c->g.kh * c->g.kw;
  for (int gi = 0; gi < c->groups; gi++)
    for (int o = 0; o < c->ocg; o++)
      for (int ci = 0; ci < c->g.c; ci++)
        for (int k = 0; k < kk; k++)
          wt[(((size_t)gi * c->g.c + ci) * c->ocg + o) * kk + (kk - 1 - k)] =
              w[(((size_t)gi * c->ocg + o) * c->g.c + ci) * kk + k];
}

/* Zero-padded copies and crops (kernels/planes.h). */
static void pad_planes(const float *x, int ch, int h, int w, int top, int left, int hp, int wp,
                       size_t slack, float *xp) {
  vmc_planes_kernels_best()->pad(x, ch, h, w, top, left, hp, wp, slack, xp);
}

static void crop_planes(const float *src, int ch, size_t plane, int wp, int top, int left, int h,
                        int w, float *dst, int add) {
  vmc_planes_kernels_best()->crop(src, ch, plane, wp, top, left, h, w, dst, add);
}

/* Row pointers of the virtual im2col matrix over padded planes:
 * row (c, i, j) = xp + c*plane + i*dh*wp + j*dw. */
static void plane_rows(const float *xp, int ch, size_t plane, int wp, const vmc_conv_geom *g,
                       const float **rows) {
  for (int c = 0; c < ch; c++)
    for (int i = 0; i < g->kh; i++)
      for (int j = 0; j < g->kw; j++)
        *rows++ = xp + (size_t)c * plane + (size_t)i * g->dh * wp + (size_t)j * g->dw;
}

/* Row (ci, i, j) of the virtual im2col matrix over phase planes. */
static const float *phase_row(const float *xq, const conv_cfg *c, int ci, int i, int j) {
  const vmc_conv_geom *g = &c->g;
  const int di = i * g->dh, dj = j * g->dw;
  return xq + ((size_t)ci * c->nslots + c->pg.slot[di % g->sh][dj % g->sw]) * c->plane +
         (size_t)(di / g->sh) * c->phw + (size_t)(dj / g->sw);
}

static void phase_rows(const float *xq, int ch, const conv_cfg *c, const float **rows) {
  for (int ci = 0; ci < ch; ci++)
    for (int i = 0; i < c->g.kh; i++)
      for (int j = 0; j < c->g.kw; j++) *rows++ = phase_row(xq, c, ci, i, j);
}

typedef void (*gemm_fn)(int, int, int, int, int, float, const float *, int, const float *, int,
                        float, float *, int);
typedef void (*gemm_rows_fn)(int, int, int, int, float, const float *, int, const float *const *,
                             float, float *, int);

#define IMAGE_LOOP_PARALLEL(ctx) ((ctx)->batch >= (ctx)->nthreads && (ctx)->nthreads > 1)

static float *slice_scratch(const vmc_opctx *ctx, int t) {
  return (float *)(ctx->scratch + (size_t)t * ctx->scratch_bytes);
}

/* Images split into nt fixed chunks, chunk t on scratch slice t: results do
 * not depend on how many threads OpenMP actually delivers. */
static inline int chunk_lo(int batch, int t, int nt) { return (int)((long)batch * t / nt); }

/* The row-pointer table sits at the end of the thread's scratch slice. */
static const float **thread_rows(const vmc_opctx *ctx, const scratch_plan *s, float *base) {
  return (const float **)((uint8_t *)base + ctx->scratch_bytes - s->rows * sizeof(float *));
}

/* One image: every group, bias, fused activation.  par: images run in
 * parallel (single-threaded GEMMs); otherwise the GEMMs are threaded. */
/* The forward GEMMs of one group, C = epi(Wg * B), from the pre-packed
 * weights when the plan made them (inference), else from Wg.  par: the
 * caller is one of several threads (single-threaded GEMM). */
static void fwd_gemm(const vmc_sgemm_packed_a *pk, int par, const conv_cfg *c, const float *Wg,
                     const float *Bm, float *C, const vmc_gemm_epi *epi) {
  if (pk)
    (par ? vmc_sgemm_packed : vmc_sgemm_packed_mt)(pk, 0, c->P, Bm, c->P, 0.0f, C, c->P, epi);
  else
    (par ? vmc_sgemm_epi : vmc_sgemm_epi_mt)(0, 0, c->ocg, c->P, c->K, 1.0f, Wg, c->K, Bm, c->P,
                                             0.0f, C, c->P, epi);
}

/* Thread t's share, among nt, of the GEMM of a WIDE or PHASE forward, over
 * the row pointers of its planes into C (rows ldc apart); nt == 1: all of
 * it (vmc_sgemm_rows_*_part). */
static void fwd_gemm_rows(const vmc_sgemm_packed_a *pk, const conv_cfg *c, const float *Wg,
                          const float *const *rows, float *C, int ldc, const vmc_gemm_epi *epi,
                          int t, int nt) {
  if (pk)
    vmc_sgemm_rows_packed_part(pk, 0, c->nw, rows, 0.0f, C, ldc, epi, t, nt);
  else
    vmc_sgemm_rows_epi_part(0, c->ocg, c->nw, c->K, 1.0f, Wg, c->K, rows, 0.0f, C, ldc, epi, t,
                            nt);
}

/* A WIDE or PHASE forward of one group of one image: its planes (the
 * padding or the phase split; none where WIDE reads a padded input in
 * place), one GEMM over the planes' row pointers, then its wide result's
 * garbage columns: on a padded output's borders, zeroed (VMC_PAD_ZEROS) or
 * left (VMC_PAD_PIXELS); or cropped from the grid yw into plain y.  Each
 * step can be split: the planes by input channels, the GEMM in blocks, the
 * last step by output channels. */
typedef struct {
  const vmc_opctx *ctx;
  const conv_cfg *c;
  const vmc_sgemm_packed_a *pk;
  const float *Wg, *xg; /* the group's weights, its input (at its pixels) */
  float *yg, *planes, *yw;
  const float **rows;
  size_t slack; /* zero floats after the planes */
  vmc_phase_geom pg; /* PHASE: the split's, with the input's strides */
  int row_len;       /* the wide grid's rows */
  float *C;          /* where the GEMM writes, rows ldc apart */
  int ldc;
  const vmc_gemm_epi *epi;
} rows_conv;

static rows_conv rows_conv_of(const vmc_opctx *ctx, const conv_cfg *c, const scratch_plan *sp,
                              const vmc_sgemm_packed_a *pk, const float *Wg, const float *xg,
                              float *yg, float *base, const vmc_gemm_epi *epi) {
  const vmc_conv_geom *g = &c->g;
  const vmc_padded xpl = vmc_padded_of(&ctx->xs[0]);
  rows_conv r = {.ctx = ctx, .c = c, .pk = pk, .Wg = Wg, .xg = xg, .yg = yg, .planes = base,
                 .yw = base + sp->a, .rows = thread_rows(ctx, sp, base), .epi = epi};
  if (c->kind == PHASE) {
    r.pg = c->pg;
    if (ctx->xpad[0]) { /* the pixels of a padded input */
      r.pg.xrow = xpl.wp;
      r.pg.xplane = xpl.plane;
      r.xg += vmc_padded_origin(&xpl);
    }
    r.slack = sp->a - (size_t)g->c * c->nslots * c->plane;
    r.row_len = c->phw;
    phase_rows(r.planes, g->c, c, r.rows);
  } else {
    r.slack = sp->a - (size_t)g->c * c->plane;
    r.row_len = c->wp;
    plane_rows(ctx->xpad[0] ? xg : r.planes, g->c, c->plane, c->wp, g, r.rows);
  }
  if (c->kind == PHASE && c->phw == g->ow) { /* no garbage columns: straight into y */
    r.C = yg;
    r.ldc = c->P;
  } else if (ctx->ypad) {
    const vmc_padded q = vmc_padded_of(&ctx->ys);
    r.C = yg + vmc_padded_origin(&q);
    r.ldc = (int)q.plane;
  } else {
    r.C = r.yw;
    r.ldc = c->nw;
  }
  return r;
}

/* Input channels [c0, c1) into the planes (the last range: the slack too). */
static void rows_conv_planes(const rows_conv *r, int c0, int c1) {
  const conv_cfg *c = r->c;
  const vmc_conv_geom *g = &c->g;
  if (c1 <= c0) return;
  const size_t slack = c1 == g->c ? r->slack : 0;
  if (c->kind == PHASE)
    vmc_planes_kernels_best()->phase_split(r->xg + (size_t)c0 * vmc_phase_xplane(&r->pg), c1 - c0,
                                           &r->pg, slack,
                                           r->planes + (size_t)c0 * c->nslots * c->plane);
  else if (!r->ctx->xpad[0])
    pad_planes(r->xg + (size_t)c0 * g->h * g->w, c1 - c0, g->h, g->w, g->ph, g->pw, c->hp, c->wp,
               slack, r->planes + (size_t)c0 * c->plane);
}

/* Output channels [k0, k1) of the GEMM's wide result into y. */
static void rows_conv_finish(const rows_conv *r, int k0, int k1) {
  const conv_cfg *c = r->c;
  if (k1 <= k0 || r->C == r->yg) return;
  if (r->ctx->ypad == VMC_PAD_ZEROS) {
    const vmc_padded q = vmc_padded_of(&r->ctx->ys);
    vmc_padded_zero_channels(&q, c->oc, k0, k1, r->yg);
  } else if (!r->ctx->ypad) {
    crop_planes(r->yw + (size_t)k0 * c->nw, k1 - k0, (size_t)c->nw, r->row_len, 0, 0, c->g.oh,
                c->g.ow, r->yg + (size_t)k0 * c->P, 0);
  }
}

/* Thread t's part of it on a team of nt: the planes of its share of the
 * input channels, its blocks of the GEMM, the write-back of its share of
 * the output channels, barriers between (none for nt == 1: the whole of
 * it on the calling thread).  Each float is computed as on one thread. */
static void rows_conv_part(const rows_conv *r, int t, int nt) {
  const conv_cfg *c = r->c;
  rows_conv_planes(r, chunk_lo(c->g.c, t, nt), chunk_lo(c->g.c, t + 1, nt));
  if (nt > 1) {
#pragma omp barrier
  }
  fwd_gemm_rows(r->pk, c, r->Wg, r->rows, r->C, r->ldc, r->epi, t, nt);
  if (nt > 1) {
#pragma omp barrier
  }
  rows_conv_finish(r, chunk_lo(c->ocg, t, nt), chunk_lo(c->ocg, t + 1, nt));
}

/* The whole of it: on the calling thread (par), or, for one image on
 * several threads, on a team.  The team also takes GEMMs below the threaded
 * GEMM's threshold: resnet8's 1x1 downsamples (100k multiply-adds) and
 * first convolution (117k) run faster on it at batch 1 on two threads
 * (docs/benchmarks.md).  Far smaller ones (a few microseconds of work) stay
 * on one thread. */
#define ROWS_TEAM_MIN_WORK (32.0 * 1024.0)
static void rows_conv_run(const rows_conv *r, int par) {
  const conv_cfg *c = r->c;
  const int nt = r->ctx->nthreads;
  if (par || nt <= 1 || (double)c->ocg * c->nw * c->K < ROWS_TEAM_MIN_WORK) {
    rows_conv_part(r, 0, 1);
    return;
  }
#pragma omp parallel num_threads(nt)
  rows_conv_part(r, omp_get_thread_num(), omp_get_num_threads());
}

/* Depthwise, one image: every channel in one kernel call where the ISA's
 * all-channel kernel takes the geometry (else 0, nothing written; the
 * reference takes every one), the channels split over nt threads in runs of
 * four. */
static int dw_planes(const vmc_opctx *ctx, const conv_cfg *c, const float *x, float *y, int nt) {
  const float *W = ctx->g->params[ctx->node->param[0]].data;
  const float *B = ctx->node->n_param > 1 ? ctx->g->params[ctx->node->param[1]].data : NULL;
  const vmc_conv_geom *g = &c->g;
  const int ch = c->groups;
  const vmc_dwconv_epi epi = {B, ctx->act != VMC_ACT_NONE, vmc_act_lo(ctx->act),
                              vmc_act_hi(ctx->act)};
  if (nt <= 1 || ch < 8) return vmc_dwconv_planes(x, ch, W, &epi, g, y);
  const size_t in = (size_t)g->h * g->w, out = (size_t)c->P, taps = (size_t)c->K;
  const int per = (ch + 4 * nt - 1) / (4 * nt) * 4;
  int ok = 1;
#pragma omp parallel for schedule(static, 1) num_threads(nt) reduction(&& : ok)
  for (int t = 0; t < nt; t++) {
    const int c0 = t * per, n = ch - c0 < per ? ch - c0 : per;
    vmc_dwconv_epi part = epi;
    part.bias = B ? B + c0 : NULL;
    if (n > 0) ok = vmc_dwconv_planes(x + c0 * in, n, W + c0 * taps, &part, g, y + c0 * out) && ok;
  }
  return ok; /* the same geometry: every chunk taken, or none */
}

/* Thread t's part of Winograd over one image, band by band, for a team of
 * nt sharing the V and M planes of w (rows: the thread's own transform
 * rows): the input transform of its share of the input channels, from the
 * image x (planes xplane floats apart, rows xrow); the GEMMs of its share
 * of the positions, with the pre-packed transformed kernel; the output
 * transform of its share of the output channels, with the epilogue o;
 * barriers between (none for nt == 1, which is the whole of it on the
 * calling thread).  Every GEMM keeps the band's whole width (split by tile
 * rows, a thread's share of a small image is a few tiles wide, too narrow
 * for the register tile), and each result is computed as on one thread. */
static void wino_part(const conv_cfg *c, const vmc_sgemm_packed_a *pk, const float *x,
                      size_t xplane, size_t xrow, const vmc_wino_out *o, const wino_space *w,
                      float *rows, int t, int nt) {
  const vmc_conv_geom *g = &c->g;
  const vmc_wino_kernels *k = vmc_wino_kernels_best();
  const int ld = (int)c->ldt;
  const int c0 = chunk_lo(g->c, t, nt), c1 = chunk_lo(g->c, t + 1, nt);
  const int k0 = chunk_lo(c->ocg, t, nt), k1 = chunk_lo(c->ocg, t + 1, nt);
  const int p0 = chunk_lo(c->npos, t, nt), p1 = chunk_lo(c->npos, t + 1, nt);
  vmc_wino_buf v = w->v, m = w->m;
  v.base += (size_t)c0 * v.ch_stride;
  m.base += (size_t)k0 * m.ch_stride;
  vmc_wino_out ot = *o;
  ot.y += (size_t)k0 * o->plane;
  if (o->res) ot.res += (size_t)k0 * o->plane;
  if (o->bias) ot.bias += k0;
  for (int b0 = 0; b0 < c->th; b0 += c->wband) {
    const int b1 = wino_band_end(c, b0, c->th), n = (b1 - b0) * c->tw;
    /* (the barrier before the GEMMs also keeps them from the M planes
     * until every thread's output transform of the band before is done) */
    if (c1 > c0)
      (c->wm == 4 ? k->input4 : k->input)(x + (size_t)c0 * xplane, c1 - c0, xplane, xrow, g->h,
                                          g->w, &v, b0, b1, rows);
    if (nt > 1) {
#pragma omp barrier
    }
    for (int ab = p0; ab < p1; ab++)
      vmc_sgemm_packed(&pk[ab], 0, n, w->v.base + ab * w->v.pos_stride, ld, 0.0f,
                       w->m.base + ab * w->m.pos_stride, ld, NULL);
    if (nt > 1) {
#pragma omp barrier
    }
    if (k1 > k0)
      (c->wm == 4 ? k->output4 : k->output)(&m, b0, b1, k1 - k0, g->oh, g->ow, &ot, rows);
  }
}

/* Winograd over one image x into the output o.  par: on this thread, in
 * its scratch slice base; else on the team, in the first thread's planes. */
static void wino_conv(const vmc_opctx *ctx, const conv_cfg *c, const vmc_sgemm_packed_a *pk,
                      int par, const float *x, size_t xplane, size_t xrow, const vmc_wino_out *o,
                      float *base, const scratch_plan *sp) {
  if (par || ctx->nthreads <= 1) {
    const wino_space w = wino_space_of(c, base, sp->a);
    wino_part(c, pk, x, xplane, xrow, o, &w, w.rows, 0, 1);
    return;
  }
  const wino_space w = wino_space_of(c, slice_scratch(ctx, 0), sp->a);
#pragma omp parallel num_threads(ctx->nthreads)
  {
    const int t = omp_get_thread_num();
    wino_part(c, pk, x, xplane, xrow, o, &w, wino_space_of(c, slice_scratch(ctx, t), sp->a).rows,
              t, omp_get_num_threads());
  }
}

/* Winograd forward of one image (one group), from the plain or the padded
 * input as it lies. */
static void wino_image(const vmc_opctx *ctx, const conv_cfg *c, const vmc_sgemm_packed_a *pk,
                       int par, const float *x, float *y, float *base, const scratch_plan *sp) {
  const vmc_conv_geom *g = &c->g;
  const vmc_padded xq = vmc_padded_of(&ctx->xs[0]), yq = vmc_padded_of(&ctx->ys);
  const float *B = ctx->node->n_param > 1 ? ctx->g->params[ctx->node->param[1]].data : NULL;
  vmc_wino_out o = {y, (size_t)c->P, (size_t)g->ow, B, NULL, vmc_act_lo(ctx->act),
                    vmc_act_hi(ctx->act)};
  if (ctx->ypad) {
    o.y = y + vmc_padded_origin(&yq);
    o.plane = yq.plane;
    o.row = (size_t)yq.wp;
  }
  if (ctx->res) o.res = ctx->res + (o.y - ctx->y);
  if (ctx->xpad[0])
    wino_conv(ctx, c, pk, par, x + vmc_padded_origin(&xq), xq.plane, (size_t)xq.wp, &o, base, sp);
  else
    wino_conv(ctx, c, pk, par, x, (size_t)g->h * g->w, (size_t)g->w, &o, base, sp);
  if (ctx->ypad == VMC_PAD_ZEROS) vmc_padded_zero_borders(&yq, c->oc, y);
}

static void forward_image(const vmc_opctx *ctx, const conv_cfg *cp, const scratch_plan *spp,
                          int b, float *base, int par) {
  const vmc_node *n = ctx->node;
  const conv_cfg c = *cp;
  const scratch_plan sp = *spp;
  const vmc_conv_geom *g = &c.g;
  const float *W = ctx->g->params[n->param[0]].data;
  const float *B = n->n_param > 1 ? ctx->g->params[n->param[1]].data : NULL;
  const int C = ctx->xs[0].d[1], HW = g->h * g->w;
  const float hi = vmc_act_hi(ctx->act), lo = vmc_act_lo(ctx->act);
  /* Padded input or output (op.h; one group then, see conv_padded_in/out):
   * the input is already the plane WIDE pads to; the output, rows_conv_of. */
  const vmc_padded xpl = vmc_padded_of(&ctx->xs[0]), yq = vmc_padded_of(&ctx->ys);
  /* Bias and activation are applied as the GEMM writes each output. */
  vmc_gemm_epi epi = VMC_GEMM_EPI_NONE;
  epi.lo = lo;
  epi.hi = hi;
  const float *x = ctx->x[0] + (size_t)b * (ctx->xpad[0] ? xpl.image : (size_t)C * HW);
  float *y = ctx->y + (size_t)b * (ctx->ypad ? yq.image : (size_t)c.oc * c.P);
  if (ctx->res) { /* a folded add (conv_fuses_residual): y's layout, one group */
    const float *r = ctx->res + (y - ctx->y);
    epi.res = ctx->ypad ? r + vmc_padded_origin(&yq) : r;
    epi.ldr = ctx->ypad ? (int)yq.plane : c.P;
  }
  if (c.kind == DEPTHWISE && dw_planes(ctx, &c, x, y, par ? 1 : ctx->nthreads)) return;
  for (int gi = 0; gi < c.groups; gi++) {
    const float *xg = x + (size_t)gi * g->c * HW;
    float *yg = y + (size_t)gi * c.ocg * c.P;
    const float *Wg = W + (size_t)gi * c.ocg * c.K;
    epi.bias = B ? B + (size_t)gi * c.ocg : NULL;
    const vmc_sgemm_packed_a *pk = packs_of(ctx, &c);
    if (pk) pk += gi;
    if (pk && !pk->data) pk = NULL;
    switch (c.kind) {
    case DEPTHWISE:
      if (c.dw_wide) {
        float *xp = base, *yw = base + sp.a;
        pad_planes(xg, 1, g->h, g->w, g->ph, g->pw, c.hp, c.wp, sp.a - c.plane, xp);
        vmc_dwconv_wide_forward(xp, c.wp, Wg, B ? B[gi] : 0.0f, g, yw);
        crop_planes(yw, 1, (size_t)c.nw, c.wp, 0, 0, g->oh, g->ow, yg, 0);
      } else {
        vmc_dwconv_forward(xg, Wg, B ? B[gi] : 0.0f, g, yg);
      }
      break;
    case DIRECT:
      fwd_gemm(pk, par, &c, Wg, xg, yg, &epi);
      break;
    case IM2COL:
      vmc_im2col(xg, g, base);
      fwd_gemm(pk, par, &c, Wg, base, yg, &epi);
      break;
    case PHASE: {
      const rows_conv r = rows_conv_of(ctx, &c, &sp, pk, Wg, xg, yg, base, &epi);
      rows_conv_run(&r, par);
      break;
    }
    case WIDE: {
      if (c.wino) { /* the packs: the plan's (inference), this step's (training) */
        wino_image(ctx, &c, pk, par, x, y, base, &sp);
        break;
      }
      const rows_conv r = rows_conv_of(ctx, &c, &sp, pk, Wg, xg, yg, base, &epi);
      rows_conv_run(&r, par);
      break;
    }
    }
  }
  if (ctx->act != VMC_ACT_NONE && c.kind == DEPTHWISE) {
    const size_t m = (size_t)c.oc * c.P;
    for (size_t i = 0; i < m; i++) y[i] = vmc_clampf(y[i], lo, hi);
  }
}

static void conv_forward(vmc_opctx *ctx) {
  conv_cfg c = ctx->mode != VMC_MODE_TRAIN && ctx->state
                    ? *(const conv_cfg *)ctx->state
                    : cfg_of(ctx->node, &ctx->xs[0]);
  if (ctx->ypad && phase_widens(&c)) phase_widen(&c);
  /* Training: the weights change between steps, not between images. */
  vmc_sgemm_packed_a *pk = ctx->mode == VMC_MODE_TRAIN ? packs_of(ctx, &c) : NULL;
  if (pk) pack_weights(ctx, &c, pk);
  scratch_plan sp = scratch_of(&c, ctx->mode);
  if (IMAGE_LOOP_PARALLEL(ctx)) {
    const int nt = ctx->nthreads;
    /* Images are independent here (backward's private dW is not: it keeps
     * fixed chunks), so they go to whichever thread is free: a thread
     * slowed by the machine's other work holds the team up less. */
#pragma omp parallel num_threads(nt)
    {
      float *slice = slice_scratch(ctx, omp_get_thread_num());
#pragma omp for schedule(dynamic, 2)
      for (int b = 0; b < ctx->batch; b++) forward_image(ctx, &c, &sp, b, slice, 1);
    }
  } else {
    /* No enclosing parallel region: the threaded GEMMs get the whole team. */
    for (int b = 0; b < ctx->batch; b++) forward_image(ctx, &c, &sp, b, slice_scratch(ctx, 0), 0);
  }
}

/* dW (+)= dYw . rows^T over the output grid (the wide one of WIDE and
 * PHASE, a DIRECT conv's pixels): both operands run along the grid, so on
 * one thread the dot GEMM reads them in place (gemm.h). */
static void dw_gemm(const vmc_opctx *ctx, int par, const conv_cfg *c, const float *dyw, int lda,
                    const float *const *rows, float *dWg) {
  const int len = c->kind == DIRECT ? c->P : c->nw; /* the grid the sum runs over */
  if (par || ctx->nthreads <= 1)
    vmc_sgemm_dot(c->ocg, c->K, len, dyw, lda, rows, dWg, c->K);
  else
    vmc_sgemm_rows_mt(1, c->ocg, c->K, len, 1.0f, dyw, lda, rows, 1.0f, dWg, c->K);
}

/* Winograd's weight gradient of one image: dU[ab] += dM[ab] . V[ab]^T over
 * its tiles (dM from dY, V from the input x), one dot GEMM per
 * position into the thread's private dU; conv_backward turns dU into dW. */
static void wino_dw(const vmc_opctx *ctx, const conv_cfg *c, const scratch_plan *sp, float *base,
                    const float *x, const float *dy, float *du) {
  const vmc_conv_geom *g = &c->g;
  const vmc_wino_kernels *k = vmc_wino_kernels_best();
  const wino_space w = wino_space_of(c, base, sp->a);
  const int th = c->th;
  const float **rows = thread_rows(ctx, sp, base);
  for (int b0 = 0; b0 < th; b0 += c->wband) {
    const int b1 = wino_band_end(c, b0, th), n = (b1 - b0) * c->tw;
    k->input(x, g->c, (size_t)g->h * g->w, (size_t)g->w, g->h, g->w, &w.v, b0, b1, w.rows);
    k->grad_output(dy, (size_t)c->P, (size_t)g->ow, c->ocg, g->oh, g->ow, &w.m, b0, b1);
    for (int ab = 0; ab < VMC_WINO_POS; ab++) {
      const float *v = w.v.base + ab * w.v.pos_stride;
      for (int ci = 0; ci < g->c; ci++) rows[ci] = v + (size_t)ci * c->ldt;
      vmc_sgemm_dot(c->ocg, g->c, n, w.m.base + ab * w.m.pos_stride, (int)c->ldt, rows,
                    du + (size_t)ab * c->ocg * g->c, g->c);
    }
  }
}

/* Winograd's dx of one image: dY convolved with the rotated kernel (its
 * packs dxpk), written into dx or, with dx_beta 1, added. */
static void wino_dx(const vmc_opctx *ctx, const conv_cfg *c, const scratch_plan *sp, float *base,
                    const float *dy, const vmc_sgemm_packed_a *dxpk, float *dx, float dx_beta,
                    int par) {
  const vmc_conv_geom *g = &c->g;
  conv_cfg d = *c;
  d.g.c = c->ocg;
  d.ocg = d.oc = g->c;
  const vmc_wino_out o = {dx, (size_t)g->h * g->w, (size_t)g->w, NULL,
                          dx_beta != 0.0f ? dx : NULL, -INFINITY, INFINITY};
  wino_conv(ctx, &d, dxpk, par, dy, (size_t)c->P, (size_t)g->ow, &o, base, sp);
}

/* WIDE backward of one image and group: dW (+)= dYw · rows^T (Winograd:
 * wino_dw), and dx from the padded dY convolved with the rotated kernel. */
static void wide_backward(const vmc_opctx *ctx, const conv_cfg *c, const scratch_plan *sp,
                          float *base, const float *xg, const float *dyg, const float *Wtg,
                          const vmc_sgemm_packed_a *dxpk, float *dxg, float dx_beta, float *dWg,
                          int par) {
  const vmc_conv_geom *g = &c->g;
  gemm_rows_fn gemm_rows = par ? vmc_sgemm_rows : vmc_sgemm_rows_mt;
  gemm_fn gemm = par ? vmc_sgemm : vmc_sgemm_mt;
  float *xp = base, *dyw = base + sp->a, *third = dyw + sp->b, *dxw = third + sp->c;
  const float **rows = thread_rows(ctx, sp, base);
  const size_t slack = (size_t)(g->kw - 1) * g->dw + 16;
  if (c->wino_dw) { /* from x and dY as they lie */
    wino_dw(ctx, c, sp, base, xg, dyg, wino_du(c, dWg));
    if (dxg) wino_dx(ctx, c, sp, base, dyg, dxpk, dxg, dx_beta, par);
    return;
  }
  pad_planes(xg, g->c, g->h, g->w, g->ph, g->pw, c->hp, c->wp, slack, xp);
  plane_rows(xp, g->c, c->plane, c->wp, g, rows);
  /* wide dY: oh x wp with zero columns past ow.  When the padded dY of the
   * dx step has the same width (wq == wp: "same" padding), one copy serves
   * both: planes of hq x wq, the wide dY's rows at the top of each, start
   * pth*wq + ptw floats into the padded layout (the zero columns of one wide
   * row are the right and left halo of the padded rows, the rows below it
   * the bottom and top halo). */
  const int share = c->bwd_wide && c->wq == c->wp;
  const size_t pre = share ? (size_t)c->pth * c->wq + c->ptw : 0;
  const float *dyA = dyw;
  int lda = c->nw;
  if (share) {
    memset(third, 0, pre * sizeof(float));
    pad_planes(dyg, c->ocg, g->oh, g->ow, 0, 0, c->hq, c->wq, slack, third + pre);
    dyA = third + pre;
    lda = c->hq * c->wq;
  } else {
    pad_planes(dyg, c->ocg, g->oh, g->ow, 0, 0, g->oh, c->wp, 0, dyw);
  }
  if (!c->wino_dw) dw_gemm(ctx, par, c, dyA, lda, rows, dWg);
  if (!dxg) return;
  if (!c->bwd_wide) { /* general: dcol = W^T dY, col2im */
    const float *Wg = Wtg; /* caller passes the plain kernel here */
    if (dx_beta == 0.0f) memset(dxg, 0, sizeof(float) * (size_t)g->c * g->h * g->w);
    gemm(1, 0, c->K, c->P, c->ocg, 1.0f, Wg, c->K, dyg, c->P, 0.0f, third, c->P);
    vmc_col2im_add(third, g, dxg);
    return;
  }
  if (c->wino) {
    wino_dx(ctx, c, sp, base, dyg, dxpk, dxg, dx_beta, par);
    return;
  }
  vmc_conv_geom gt = *g;
  gt.c = c->ocg;
  if (!share) pad_planes(dyg, c->ocg, g->oh, g->ow, c->pth, c->ptw, c->hq, c->wq, slack, third);
  plane_rows(third, c->ocg, (size_t)c->hq * c->wq, c->wq, &gt, rows);
  const int kt = c->ocg * g->kh * g->kw;
  gemm_rows(0, g->c, c->nq, kt, 1.0f, Wtg, kt, rows, 0.0f, dxw, c->nq);
  crop_planes(dxw, g->c, (size_t)c->nq, c->wq, 0, 0, g->h, g->w, dxg, dx_beta != 0.0f);
}

/* PHASE dx, phase plane by phase plane.  Input pixel (sh*u' + r, sw*v' + q)
 * of the padded image (phase (r, q), position (u', v')) takes tap (i, j)
 * from output (u' - di, v' - dj) where i*dh = sh*di + r, j*dw = sw*dj + q:
 * each phase plane is a convolution of dY, zero-padded by the largest
 * shifts (pth, ptw), with the taps of its phase.  Row pointers into that
 * padded dY (rows phw long, so a read past a row's end wraps into the next
 * row's zeros) make it one GEMM per phase writing the plane in place: no
 * col matrix.  Taps of slot sl in (i, j) order; returns their count. */
static int slot_taps(const conv_cfg *c, int sl, int *tap) {
  const vmc_conv_geom *g = &c->g;
  int n = 0;
  for (int i = 0; i < g->kh; i++)
    for (int j = 0; j < g->kw; j++)
      if (c->pg.slot[i * g->dh % g->sh][j * g->dw % g->sw] == sl) tap[n++] = i * g->kw + j;
  return n;
}

/* The weights as the phase GEMMs read them: per group, per slot, a
 * c x (ocg * taps) matrix, row ci = w[o][ci][tap] for o, then tap. */
static void phase_kernel(const conv_cfg *c, const float *w, float *wp) {
  const vmc_conv_geom *g = &c->g;
  const int kk = g->kh * g->kw;
  int tap[64 * 64];
  for (int gi = 0; gi < c->groups; gi++) {
    const float *wg = w + (size_t)gi * c->ocg * c->K;
    for (int sl = 0; sl < c->nslots; sl++) {
      const int nt = slot_taps(c, sl, tap);
      for (int ci = 0; ci < g->c; ci++)
        for (int o = 0; o < c->ocg; o++)
          for (int t = 0; t < nt; t++) *wp++ = wg[((size_t)o * g->c + ci) * kk + tap[t]];
    }
  }
}

static void phase_backward(const vmc_opctx *ctx, const conv_cfg *c, const scratch_plan *sp,
                           float *base, const float *xg, const float *dyg, const float *Wpg,
                           float *dxg, int dx_add, float *dWg, int par) {
  const vmc_conv_geom *g = &c->g;
  float *xq = base, *dyp = base + sp->a, *dq = base + sp->a + sp->b;
  const float **rows = thread_rows(ctx, sp, base);
  const size_t slack = sp->a - (size_t)g->c * c->nslots * c->plane;
  const vmc_planes_kernels *pk = vmc_planes_kernels_best();
  pk->phase_split(xg, g->c, &c->pg, slack, xq);
  phase_rows(xq, g->c, c, rows);
  /* Taps that never shift (a 1x1 downsample) over phase planes as wide as
   * dY and no taller: dY itself is the padded dY. */
  const int as_is = !c->pth && !c->ptw && c->phw == g->ow && c->pg.phh <= g->oh;
  const size_t dplane = as_is ? (size_t)c->P : (size_t)c->hq * c->wq;
  if (as_is)
    dyp = (float *)dyg; /* read only */
  else
    pad_planes(dyg, c->ocg, g->oh, g->ow, c->pth, c->ptw, c->hq, c->wq, 0, dyp);
  /* its rows, from pixel (0, 0) on, are the wide dY: oh x phw, zero past ow */
  dw_gemm(ctx, par, c, dyp + (size_t)c->pth * c->wq + c->ptw, (int)dplane, rows, dWg);
  if (!dxg) return;
  int tap[64 * 64];
  for (int sl = 0; sl < c->nslots; sl++) {
    const int nt = slot_taps(c, sl, tap), kt = c->ocg * nt;
    for (int o = 0, k = 0; o < c->ocg; o++)
      for (int t = 0; t < nt; t++, k++) {
        const int di = tap[t] / g->kw * g->dh / g->sh, dj = tap[t] % g->kw * g->dw / g->sw;
        rows[k] = dyp + o * dplane + (size_t)(c->pth - di) * c->wq + (c->ptw - dj);
      }
    (par ? vmc_sgemm_rows : vmc_sgemm_rows_mt)(0, g->c, c->nq, kt, 1.0f, Wpg, kt, rows, 0.0f,
                                               dq + (size_t)sl * c->plane, (int)(c->nslots * c->plane));
    Wpg += (size_t)g->c * kt;
  }
  pk->phase_merge(dq, g->c, &c->pg, dxg, dx_add);
}

static void backward_image(const vmc_opctx *ctx, const conv_cfg *cp, const scratch_plan *spp,
                           int b, float *base, int par, const float *Wt) {
  const vmc_node *n = ctx->node;
  const conv_cfg c = *cp;
  const scratch_plan sp = *spp;
  const vmc_conv_geom *g = &c.g;
  const vmc_param *pb = n->n_param > 1 ? &ctx->g->params[n->param[1]] : NULL;
  const float *W = ctx->g->params[n->param[0]].data;
  const int C = ctx->xs[0].d[1], HW = g->h * g->w;
  const size_t wn = (size_t)c.oc * c.K, priv = sp.a + sp.b + sp.c + sp.d;
  gemm_fn gemm = par ? vmc_sgemm : vmc_sgemm_mt;
  float *dW = base + priv, *dB = dW + wn;
  const float *x = ctx->x[0] + (size_t)b * C * HW;
  float *dx = ctx->dx[0] ? ctx->dx[0] + (size_t)b * C * HW : NULL;
  const float *dy = ctx->dy + (size_t)b * c.oc * c.P;
  /* A fused activation masks this image's dY in place (the output is not
   * needed again). */
  if (ctx->act != VMC_ACT_NONE) {
    float *dym = (float *)dy;
    const float *y = ctx->y + (size_t)b * c.oc * c.P;
    const float lo = vmc_act_lo(ctx->act), hi = vmc_act_hi(ctx->act);
    for (size_t i = 0; i < (size_t)c.oc * c.P; i++) dym[i] = vmc_act_grad(y[i], dym[i], lo, hi);
  }
  /* dx_set: GEMM paths overwrite (beta 0); scatter paths start from 0. */
  const float dx_beta = ctx->dx_set[0] ? 0.0f : 1.0f;
  if (dx && ctx->dx_set[0] && (c.kind == DEPTHWISE || c.kind == IM2COL))
    memset(dx, 0, (size_t)C * HW * sizeof(float));
  /* Depthwise: every channel in one call where the ISA's kernel takes it. */
  const int dw_all = c.kind == DEPTHWISE && vmc_dwconv_planes_backward(x, dy, c.groups, W, g, dx, dW);
  for (int gi = 0; gi < c.groups; gi++) {
    const float *xg = x + (size_t)gi * g->c * HW;
    float *dxg = dx ? dx + (size_t)gi * g->c * HW : NULL;
    const float *dyg = dy + (size_t)gi * c.ocg * c.P;
    const float *Wg = W + (size_t)gi * c.ocg * c.K;
    float *dWg = dW + (size_t)gi * c.ocg * c.K;
    for (int o = 0; pb && o < c.ocg; o++) dB[gi * c.ocg + o] += vmc_sum_lanes(dyg + (size_t)o * c.P, (size_t)c.P);
    if (dw_all) continue;
    switch (c.kind) {
    case DEPTHWISE:
      if (c.dw_wide) {
        float *xp = base, *dyw = base + sp.a, *dxp = dyw + sp.b;
        const size_t slack = sp.a - c.plane;
        pad_planes(xg, 1, g->h, g->w, g->ph, g->pw, c.hp, c.wp, slack, xp);
        pad_planes(dyg, 1, g->oh, g->ow, 0, 0, g->oh, c.wp, 0, dyw);
        if (dxg) memset(dxp, 0, sizeof(float) * sp.c);
        vmc_dwconv_wide_backward(xp, c.wp, Wg, dyw, g, dxg ? dxp : NULL, dWg);
        if (dxg) crop_planes(dxp, 1, c.plane, c.wp, g->ph, g->pw, g->h, g->w, dxg, 1);
      } else {
        vmc_dwconv_backward(xg, Wg, dyg, g, dxg, dWg);
      }
      break;
    case DIRECT: { /* dW += dY · x^T, dx (+)= W^T · dY */
      const float **rows = thread_rows(ctx, &sp, base);
      for (int k = 0; k < c.K; k++) rows[k] = xg + (size_t)k * c.P;
      dw_gemm(ctx, par, &c, dyg, c.P, rows, dWg);
      if (dxg) gemm(1, 0, c.K, c.P, c.ocg, 1.0f, Wg, c.K, dyg, c.P, dx_beta, dxg, c.P);
      break;
    }
    case IM2COL: {
      float *col = base, *dcol = base + sp.a;
      vmc_im2col(xg, g, col);
      gemm(0, 1, c.ocg, c.K, c.P, 1.0f, dyg, c.P, col, c.P, 1.0f, dWg, c.K);
      if (!dxg) break;
      gemm(1, 0, c.K, c.P, c.ocg, 1.0f, Wg, c.K, dyg, c.P, 0.0f, dcol, c.P);
      vmc_col2im_add(dcol, g, dxg);
      break;
    }
    case PHASE:
      phase_backward(ctx, &c, &sp, base, xg, dyg, Wt + (size_t)gi * c.ocg * c.K, dxg,
                     dx_beta != 0.0f, dWg, par);
      break;
    case WIDE:
      wide_backward(ctx, &c, &sp, base, xg, dyg,
                    Wt ? Wt + (size_t)gi * g->c * c.ocg * g->kh * g->kw : Wg,
                    c.wino ? dx_packs_of(ctx, &c) : NULL, dxg, dx_beta, dWg, par);
      break;
    }
  }
}

static void conv_backward(vmc_opctx *ctx) {
  const vmc_node *n = ctx->node;
  conv_cfg c = cfg_of(n, &ctx->xs[0]);
  scratch_plan sp = scratch_of(&c, ctx->mode);
  vmc_param *pw = &ctx->g->params[n->param[0]];
  vmc_param *pb = n->n_param > 1 ? &ctx->g->params[n->param[1]] : NULL;
  const int par = IMAGE_LOOP_PARALLEL(ctx);
  const size_t wn = (size_t)c.oc * c.K, priv = sp.a + sp.b + sp.c + sp.d;
  const int nt = par ? ctx->nthreads : 1;
  for (int t = 0; t < nt; t++) {
    float *base = (float *)(ctx->scratch + (size_t)t * ctx->scratch_bytes);
    memset(base + priv, 0, dw_floats(&c) * sizeof(float));
  }
  float *Wt = (c.kind == WIDE && c.bwd_wide) || c.kind == PHASE ? ctx->state : NULL;
  if (Wt && ctx->dx[0]) (c.kind == PHASE ? phase_kernel : rotate_kernel)(&c, pw->data, Wt);
  if (c.wino && ctx->dx[0]) pack_set_fill(dx_set(&c), Wt, dx_packs_of(ctx, &c));
  if (par) {
#pragma omp parallel for schedule(static, 1) num_threads(nt)
    for (int t = 0; t < nt; t++)
      for (int b = chunk_lo(ctx->batch, t, nt); b < chunk_lo(ctx->batch, t + 1, nt); b++)
        backward_image(ctx, &c, &sp, b, slice_scratch(ctx, t), 1, Wt);
  } else {
    for (int b = 0; b < ctx->batch; b++) backward_image(ctx, &c, &sp, b, slice_scratch(ctx, 0), 0, Wt);
  }
  /* Reduce the private gradients in thread order: deterministic. */
  for (int t = 0; t < nt; t++) {
    float *dW = (float *)(ctx->scratch + (size_t)t * ctx->scratch_bytes) + priv;
    if (c.wino_dw) vmc_wino_weights_grad(wino_du(&c, dW), (size_t)c.oc * c.g.c, c.oc, c.g.c, dW);
    for (size_t i = 0; pw->grad && i < wn; i++) pw->grad[i] += dW[i];
    if (pb && pb->grad)
      for (int o = 0; o < c.oc; o++) pb->grad[o] += dW[wn + (size_t)o];
  }
}

/* The padded layout (op.h), inference only, one group.  In: any PHASE
 * convolution (its split reads the pixels where they lie), or a WIDE one
 * whose padded plane is exactly that layout's (padding 1, rows W + 1 long, a
 * reach past a row within the layout's slack): Winograd reads the pixels,
 * the GEMM's rows the borders too.  Out: a WIDE or PHASE convolution whose
 * wide output rows are OW + 1 long, or made so (phase_widen). */
static int conv_padded_in(const vmc_node *n, const vmc_shape *in, int k) {
  const conv_cfg c = cfg_of(n, &in[0]);
  const vmc_conv_geom *g = &c.g;
  if (k != 0 || c.groups != 1) return 0;
  if (c.kind == PHASE) return VMC_PAD_PIXELS;
  if (c.kind == WIDE && g->ph == 1 && g->pw == 1 && c.wp == g->w + 1 &&
      (size_t)(g->kw - 1) * g->dw + 16 <= VMC_PADDED_SLACK)
    return c.wino ? VMC_PAD_PIXELS : VMC_PAD_ZEROS;
  return 0;
}

static int conv_padded_out(const vmc_node *n, const vmc_shape *in) {
  const conv_cfg c = cfg_of(n, &in[0]);
  return c.groups == 1 && ((c.kind == WIDE && c.wp == c.g.ow + 1) ||
                           (c.kind == PHASE && (c.phw == c.g.ow + 1 || phase_widens(&c))));
}

/* A residual rides on the GEMM's epilogue wherever the GEMM writes y
 * itself: not where a wide result is cropped into plain y. */
static int conv_fuses_residual(const vmc_node *n, const vmc_shape *in, int ypad) {
  const conv_cfg c = cfg_of(n, &in[0]);
  if (c.groups != 1) return 0;
  switch (c.kind) {
  case DIRECT:
  case IM2COL:
    return !ypad;
  case PHASE:
    return ypad || c.phw == c.g.ow;
  case WIDE:
    return ypad || c.wino; /* Winograd writes y's pixels itself */
  default:
    return 0;
  }
}

static uint64_t conv_macs(const vmc_node *n, const vmc_shape *in, const vmc_shape *out) {
  conv_cfg c = cfg_of(n, &in[0]);
  return (uint64_t)c.oc * c.P * c.K;
}

/* The names of the forward's ways (the header lists them). */
static const char *conv_kernel(const vmc_node *n, const vmc_shape *in, vmc_mode mode) {
  const conv_cfg c = mode != VMC_MODE_TRAIN ? cfg_infer(n, &in[0]) : cfg_of(n, &in[0]);
  switch (c.kind) {
  case DIRECT: return "gemm-1x1";
  case DEPTHWISE: return "depthwise";
  case WIDE: return !c.wino ? "gemm-wide" : c.wm == 4 ? "winograd-4x4" : "winograd-2x2";
  case PHASE: return "gemm-phase";
  default: return "gemm-im2col";
  }
}

const vmc_op vmc_op_conv2d = {
    .name = "conv2d", .min_in = 1, .max_in = 1, .n_param_min = 1, .n_param_max = 2,
    .sets_dx = 1, .can_fuse_act = 1, .infer = conv_infer, .state_bytes = conv_state, .prepare = conv_prepare,
    .scratch_bytes = conv_scratch, .forward = conv_forward, .backward = conv_backward,
    .padded_in = conv_padded_in, .padded_out = conv_padded_out,
    .fuses_residual = conv_fuses_residual, .macs = conv_macs, .kernel = conv_kernel};
