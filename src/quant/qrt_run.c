/* The integer runtime: one image through the steps (qrt_impl.h). */
#include "quant/qrt_impl.h"

#include <omp.h>

/* A conv in the wide (phase) layout (qelt.h). */
static void run_wide(const vmc_qrt *q, const qrt_step *s, uint8_t *ctx) {
  const qrt_tensor *x = &q->t[s->in];
  const vmc_conv_geom *g = &s->geom;
  const int wp = vmc_qphase_w(g), nw = g->oh * wp;
  uint8_t *xp = ctx + q->col_off;
  uint8_t *yw = xp + vmc_align_up(vmc_qphase_bytes(g), VMC_ALIGN);
  vmc_qphase_u8(ctx + x->off, g, (uint8_t)x->q.zp, xp);
  vmc_qgemm_run_mt(s->gemm, s->M, nw, s->K, s->packed, xp, 0, s->boff, &s->epi, yw, nw);
  vmc_qcrop_u8(yw, s->M, g->oh, wp, g->ow, ctx + q->t[s->out].off);
}

static void run_gemm(const vmc_qrt *q, const qrt_step *s, uint8_t *ctx, float *y) {
  if (s->wide) {
    run_wide(q, s, ctx);
    return;
  }
  const qrt_tensor *x = &q->t[s->in];
  const uint8_t *xin = ctx + x->off;
  uint8_t *col = ctx + q->col_off;
  const size_t in_group = (size_t)s->geom.c * s->geom.h * s->geom.w;
  for (int gi = 0; gi < s->groups; gi++) {
    const uint8_t *B = xin + (size_t)gi * in_group;
    if (!s->direct) {
      vmc_qim2col_u8(B, &s->geom, (uint8_t)x->q.zp, col);
      B = col;
    }
    vmc_qepi e = s->epi;
    e.bias = s->bias + (size_t)gi * s->M;
    e.scale = s->scale + (size_t)gi * s->M;
    const size_t c0 = (size_t)gi * s->M * s->N;
    void *C = s->out >= 0 ? (void *)(ctx + q->t[s->out].off + c0) : (void *)(y + c0);
    vmc_qgemm_run_mt(s->gemm, s->M, s->N, s->K, s->packed + (size_t)gi * s->packed_bytes, B,
                     s->N, NULL, &e, C, s->N);
  }
}

static void run_dwconv(const vmc_qrt *q, const qrt_step *s, uint8_t *ctx, int nthreads) {
  const qrt_tensor *x = &q->t[s->in];
  const vmc_conv_geom *g = &s->geom;
  const vmc_qdw_params p = {.h = g->h, .w = g->w, .kh = g->kh, .kw = g->kw, .sh = g->sh,
                            .sw = g->sw, .ph = g->ph, .pw = g->pw, .x_zp = (uint8_t)x->q.zp};
  const int taps = g->kh * g->kw, C = s->groups;
  const size_t in = (size_t)g->h * g->w, out = (size_t)g->oh * g->ow;
  const uint8_t *xin = ctx + x->off;
  uint8_t *yout = ctx + q->t[s->out].off;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int c = 0; c < C; c++) {
    vmc_qepi e = s->epi;
    e.bias = s->bias + c;
    e.scale = s->scale + c;
    q->dwconv(&p, xin + (size_t)c * in, s->taps + (size_t)c * taps, &e, yout + (size_t)c * out);
  }
}

/* Below this many multiply-adds a convolution runs on one thread (as
 * vmc_qgemm_run_mt decides). */
#define CONV_MT_MIN_WORK (384.0 * 1024.0)

/* Output rows r0..r1 of a pixel-major conv or depthwise conv step. */
static void pixel_rows(const vmc_qrt *q, const qrt_step *s, const uint8_t *x, uint8_t *yo,
                       const vmc_qconv_add *add, int r0, int r1) {
  if (s->kind == QRT_DWCONV) {
    vmc_qdwp_params p = s->dwp;
    p.oh = r1 - r0;
    q->dwp(&p, x + (size_t)r0 * p.sh * p.xs_row, (const int8_t *)s->packed, &s->epi,
           yo + (size_t)r0 * p.ys_row);
    return;
  }
  vmc_qconv_params p = s->cp;
  p.oh = r1 - r0;
  vmc_qconv_add a;
  if (add) {
    a = *add;
    a.res += (size_t)r0 * p.ys_row;
  }
  q->conv(&p, x + (size_t)r0 * p.xs_row, (const int8_t *)s->packed, &s->epi, add ? &a : NULL,
          yo + (size_t)r0 * p.ys_row);
}

/* A pixel-major conv (the direct kernel) or depthwise conv: output rows
 * split over the threads; then the output's border. */
static void run_pixel(const vmc_qrt *q, const qrt_step *s, uint8_t *ctx, int nthreads) {
  const qrt_tensor *y = &q->t[s->out];
  const uint8_t *x = ctx + q->t[s->in].off + s->xo;
  uint8_t *yo = ctx + y->off + vmc_qnhwc_origin(&y->g);
  vmc_qconv_add add = s->add;
  if (s->res >= 0) add.res = ctx + q->t[s->res].off + vmc_qnhwc_origin(&q->t[s->res].g);
  const vmc_qconv_add *pa = s->res >= 0 ? &add : NULL;
  const int oh = s->kind == QRT_DWCONV ? s->dwp.oh : s->cp.oh;
  int parts = s->macs < CONV_MT_MIN_WORK ? 1 : nthreads < oh ? nthreads : oh;
  if (parts <= 1) {
    pixel_rows(q, s, x, yo, pa, 0, oh);
  } else {
#pragma omp parallel for schedule(static, 1) num_threads(parts)
    for (int t = 0; t < parts; t++) pixel_rows(q, s, x, yo, pa, oh * t / parts, oh * (t + 1) / parts);
  }
  vmc_qnhwc_border(&y->g, (uint8_t)y->q.zp, ctx + y->off);
}

void vmc_qrt_run_image(const vmc_qrt *q, uint8_t *ctx, const float *x, float *y, int threaded,
                       double *prof) {
  const int nthreads = threaded && !omp_in_parallel() ? q->nthreads : 1;
  double t0 = prof ? vmc_now() : 0;
  for (int i = 0; i < q->n_s; i++) {
    if (prof && i) {
      const double t1 = vmc_now();
      prof[i - 1] += t1 - t0;
      t0 = t1;
    }
    const qrt_step *s = &q->s[i];
    const qrt_tensor *a = s->in >= 0 ? &q->t[s->in] : NULL;
    const qrt_tensor *o = s->out >= 0 ? &q->t[s->out] : NULL;
    switch (s->kind) {
    case QRT_QUANTIZE:
      if (q->conv)
        vmc_qquantize_nhwc(x, &o->g, s->inv, &o->q, ctx + o->off);
      else
        vmc_qquantize_f32(x, s->n, s->inv, &o->q, ctx + o->off);
      break;
    case QRT_GEMM: run_gemm(q, s, ctx, y); break;
    case QRT_CONV: run_pixel(q, s, ctx, nthreads); break;
    case QRT_DWCONV:
      if (q->conv)
        run_pixel(q, s, ctx, nthreads);
      else
        run_dwconv(q, s, ctx, nthreads);
      break;
    case QRT_ADD:
      vmc_qadd_u8(ctx + a->off, &a->q, s->in2 >= 0 ? ctx + q->t[s->in2].off : NULL,
                  s->in2 >= 0 ? &q->t[s->in2].q : NULL, s->n, s->inv, &o->q, ctx + o->off);
      break;
    case QRT_MAXPOOL: vmc_qmaxpool_u8(ctx + a->off, &s->geom, s->geom.c, ctx + o->off); break;
    case QRT_AVGPOOL:
      if (q->conv) {
        vmc_qgap_nhwc(ctx + a->off + vmc_qnhwc_origin(&a->g), &a->g, a->q.zp, s->pool_scale,
                      &s->prep, ctx + o->off);
        break;
      }
      vmc_qavgpool_u8(ctx + a->off, &s->geom, s->geom.c, a->q.zp, s->pool_scale, &s->prep,
                      ctx + o->off);
      break;
    case QRT_DEQUANTIZE: vmc_qdequantize_u8(ctx + a->off, s->n, &a->q, y); break;
    }
  }
  if (prof && q->n_s) prof[q->n_s - 1] += vmc_now() - t0;
}
