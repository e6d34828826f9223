/* Empirical bias correction (biascorr.h). */
#include "quant/biascorr.h"

#include "graph/plan.h"
#include "quant/quant.h"

#include <math.h>
#include <string.h>

static int is_layer(const vmc_node *n) {
  return !strcmp(n->op->name, "conv2d") || !strcmp(n->op->name, "linear");
}

/* mean[k][c]: the mean of channel c of value vals[k] (channels ch[k], means
 * at mean + off[k]) over the first n_img images of d, run through g. */
static vmc_status channel_means(vmc_graph *g, const vmc_dataset *d, int n_img, int batch,
                                const int *vals, const int *ch, const int *off, int nv,
                                double *mean) {
  if (batch > n_img) batch = n_img;
  vmc_plan *p;
  VMC_TRY(vmc_plan_create_observable_unfused(g, batch, &p));
  int *idx = vmc_malloc_plain((size_t)batch * sizeof *idx);
  vmc_status s = idx ? VMC_OK : vmc_error(VMC_ERR_NOMEM, "bias correction");
  for (int k = 0; k < nv; k++) memset(mean + off[k], 0, (size_t)ch[k] * sizeof *mean);
  double count = 0;
  for (int o = 0; o < n_img && !s; o += batch) {
    const int m = n_img - o < batch ? n_img - o : batch;
    for (int i = 0; i < m; i++) idx[i] = o + i;
    vmc_dataset_batch(d, idx, m, NULL, NULL, vmc_plan_input(p), NULL);
    if ((s = vmc_plan_forward(p, m))) break;
    for (int k = 0; k < nv; k++) {
      const vmc_shape *sh = vmc_plan_value_shape(p, vals[k]);
      const size_t per = vmc_shape_count(sh) / ((size_t)sh->d[0] * (size_t)ch[k]);
      const float *x = vmc_plan_value(p, vals[k]);
      for (int i = 0; i < m; i++)
        for (int c = 0; c < ch[k]; c++) {
          const float *xc = x + ((size_t)i * ch[k] + c) * per;
          double t = 0;
          for (size_t j = 0; j < per; j++) t += xc[j];
          mean[off[k] + c] += t / (double)per;
        }
    }
    count += m;
  }
  for (int k = 0; k < nv && count > 0; k++)
    for (int c = 0; c < ch[k]; c++) mean[off[k] + c] /= count;
  vmc_free(idx);
  vmc_plan_destroy(p);
  return s;
}

/* The scale of the fakequant whose output layer n of q reads (through
 * flatten/dropout/maxpool), or 0. */
static float input_scale(const vmc_graph *q, const vmc_node *n) {
  int v = n->in[0];
  for (int hops = 0; hops < q->n_nodes; hops++) {
    const vmc_node *prod = NULL;
    for (int i = 0; i < q->n_nodes && !prod; i++)
      if (q->nodes[i].out == v) prod = &q->nodes[i];
    if (!prod) return 0;
    const char *op = prod->op->name;
    if (!strcmp(op, "fakequant")) return vmc_node_attr_f(prod, "scale", 0.0f);
    if (strcmp(op, "flatten") && strcmp(op, "dropout") && strcmp(op, "maxpool")) return 0;
    v = prod->in[0];
  }
  return 0;
}

vmc_status vmc_bias_correct(vmc_graph *f, vmc_graph *q, const vmc_dataset *d, int n_img,
                            int batch, int bias_s32, vmc_biascorr_report *report) {
  memset(report, 0, sizeof *report);
  if (n_img > d->n) n_img = d->n;
  if (n_img < 1 || batch < 1)
    return vmc_error(VMC_ERR_INVALID_ARG, "bias correction: no calibration images");
  /* The layers: q's node, its output value in q and in f, channels. */
  const int cap = q->n_nodes;
  int *lq = vmc_malloc_plain((size_t)cap * sizeof *lq), *vq = vmc_malloc_plain((size_t)cap * sizeof *vq);
  int *vf = vmc_malloc_plain((size_t)cap * sizeof *vf), *ch = vmc_malloc_plain((size_t)cap * sizeof *ch);
  int *off = vmc_malloc_plain((size_t)cap * sizeof *off);
  vmc_status s = lq && vq && vf && ch && off ? VMC_OK : vmc_error(VMC_ERR_NOMEM, "bias correction");
  int n = 0, total = 0;
  for (int i = 0; i < q->n_nodes && !s; i++) {
    const vmc_node *nq = &q->nodes[i];
    if (!is_layer(nq) || nq->n_param < 2 || q->params[nq->param[0]].store == VMC_F32) continue;
    const int j = vmc_graph_find_node(f, nq->name);
    if (j < 0 || !is_layer(&f->nodes[j])) continue;
    lq[n] = i;
    vq[n] = nq->out;
    vf[n] = f->nodes[j].out;
    ch[n] = q->params[nq->param[1]].shape.d[0];
    off[n] = total;
    total += ch[n];
    n++;
  }
  double *mf = s ? NULL : vmc_malloc_plain((size_t)(total ? total : 1) * sizeof *mf);
  double *mq = s ? NULL : vmc_malloc_plain((size_t)(total ? total : 1) * sizeof *mq);
  if (!s && (!mf || !mq)) s = vmc_error(VMC_ERR_NOMEM, "bias correction");
  if (!s && n) s = channel_means(f, d, n_img, batch, vf, ch, off, n, mf);
  double sum = 0;
  for (int l = 0; l < n && !s; l++) {
    s = channel_means(q, d, n_img, batch, &vq[l], &ch[l], &off[l], 1, mq);
    if (s) break;
    const vmc_node *nq = &q->nodes[lq[l]];
    const vmc_param *w = &q->params[nq->param[0]];
    float *b = q->params[nq->param[1]].data;
    const float sx = bias_s32 ? input_scale(q, nq) : 0.0f;
    for (int c = 0; c < ch[l]; c++) {
      const double delta = mf[off[l] + c] - mq[off[l] + c];
      float nb = (float)((double)b[c] + delta);
      if (sx > 0 && w->qscale) nb = vmc_qbias_s32(nb, w->qscale[w->n_qscale == 1 ? 0 : c], sx);
      b[c] = nb;
      sum += fabs(delta);
      if (fabs(delta) > report->max_abs_shift) report->max_abs_shift = fabs(delta);
    }
    report->layers++;
  }
  report->mean_abs_shift = total ? sum / total : 0;
  vmc_free(lq), vmc_free(vq), vmc_free(vf), vmc_free(ch), vmc_free(off), vmc_free(mf), vmc_free(mq);
  return s;
}
