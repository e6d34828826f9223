/* The .vmc model file: round trip, layout, atomic writes, and a reader that
 * rejects every malformed file cleanly (run these under ASan+UBSan), for
 * every format version: 1 (f32), 2 and 3 (quantized, fixed-width fields),
 * 4 (quantized, compact). */
#include "test.h"

#include "core/core.h"
#include "graph/graph.h"
#include "graph/op.h"
#include "graph/rebuild.h"
#include "io/entropy.h"
#include "io/io.h"
#include "kernels/qgemm.h"
#include "quant/quant.h"

#include <dirent.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* ---- helpers ------------------------------------------------------------ */

static uint32_t rd32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void wr32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void wr64(uint8_t *p, uint64_t v) {
  wr32(p, (uint32_t)v);
  wr32(p + 4, (uint32_t)(v >> 32));
}
static void fix_crc(uint8_t *b, size_t n) { wr32(b + n - 4, vmc_crc32(0, b, n - 4)); }

static void tmp_path(char *buf, size_t n, const char *name) {
  snprintf(buf, n, "%s/%s", vmc_test_tmpdir(), name);
}

static uint8_t *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc(len > 0 ? (size_t)len : 1);
  if (b && fread(b, 1, (size_t)len, f) != (size_t)len) {
    free(b);
    b = NULL;
  }
  fclose(f);
  *n = (size_t)len;
  return b;
}

static int spit(const char *path, const void *b, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t w = n ? fwrite(b, 1, n, f) : 0;
  return (fclose(f) == 0 && w == n) ? 0 : -1;
}

/* Entries of the test directory whose name contains ".tmp.". */
static int count_temp_files(void) {
  DIR *d = opendir(vmc_test_tmpdir());
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strstr(e->d_name, ".tmp.")) n++;
  closedir(d);
  return n;
}

static vmc_status add_param(vmc_graph *g, const char *name, vmc_shape s, int trainable, int *id,
                            vmc_rng *rng) {
  vmc_status st = vmc_graph_add_param(g, name, s, trainable, id);
  if (st) return st;
  vmc_param *p = &g->params[*id];
  for (size_t i = 0; i < vmc_shape_count(&s); i++) p->data[i] = vmc_rng_normal(rng);
  return VMC_OK;
}

/* input 3x8x8 -> conv2d -> batchnorm -> relu -> maxpool -> gap -> flatten -> linear(5) */
static vmc_status build_tiny(uint64_t seed, vmc_graph **out) {
  vmc_graph *g;
  vmc_rng rng;
  vmc_rng_seed(&rng, seed);
  VMC_TRY(vmc_graph_create(3, 8, 8, &g));
  vmc_status s = VMC_OK;
  int w, ga, be, rm, rv, fw, fb, v;
  s = add_param(g, "conv1.weight", vmc_shape4(4, 3, 3, 3), 1, &w, &rng);
  if (!s) s = add_param(g, "bn1.gamma", (vmc_shape){1, {4}}, 1, &ga, &rng);
  if (!s) s = add_param(g, "bn1.beta", (vmc_shape){1, {4}}, 1, &be, &rng);
  if (!s) s = add_param(g, "bn1.running_mean", (vmc_shape){1, {4}}, 0, &rm, &rng);
  if (!s) s = add_param(g, "bn1.running_var", (vmc_shape){1, {4}}, 0, &rv, &rng);
  if (!s) s = add_param(g, "fc.weight", vmc_shape2(5, 4), 1, &fw, &rng);
  if (!s) s = add_param(g, "fc.bias", (vmc_shape){1, {5}}, 1, &fb, &rng);
  if (s) goto fail;
  for (int i = 0; i < 4; i++) g->params[rv].data[i] = 1.0f + (float)i;
  /* Values whose bits a sloppy writer would lose. */
  g->params[fb].data[0] = -0.0f;
  g->params[fb].data[1] = 1e-40f; /* subnormal */
  uint32_t nan_bits = 0x7fc12345u;
  memcpy(&g->params[fb].data[2], &nan_bits, 4);
  vmc_attr conv_attr[] = {vmc_attr_int("out_c", 4), vmc_attr_int("kh", 3),   vmc_attr_int("kw", 3),
                          vmc_attr_int("sh", 1),    vmc_attr_int("sw", 1),   vmc_attr_int("ph", 1),
                          vmc_attr_int("pw", 1),    vmc_attr_int("dh", 1),   vmc_attr_int("dw", 1),
                          vmc_attr_int("groups", 1)};
  vmc_attr bn_attr[] = {vmc_attr_float("eps", 1e-5f), vmc_attr_float("momentum", 0.1f)};
  vmc_attr fc_attr[] = {vmc_attr_int("out_f", 5)};
  vmc_attr pool_attr[] = {vmc_attr_int("kh", 2), vmc_attr_int("sh", 2)};
  int bn_p[] = {ga, be, rm, rv}, fc_p[] = {fw, fb};
  v = g->input;
  s = vmc_graph_add_node(g, "conv2d", "conv1", &v, 1, conv_attr, 10, &w, 1, &v);
  if (!s) s = vmc_graph_add_node(g, "batchnorm", "bn1", &v, 1, bn_attr, 2, bn_p, 4, &v);
  if (!s) s = vmc_graph_add_node(g, "relu", "relu1", &v, 1, NULL, 0, NULL, 0, &v);
  if (!s) s = vmc_graph_add_node(g, "maxpool", "pool1", &v, 1, pool_attr, 2, NULL, 0, &v);
  if (!s) s = vmc_graph_add_node(g, "gap", "gap", &v, 1, NULL, 0, NULL, 0, &v);
  if (!s) s = vmc_graph_add_node(g, "flatten", "flat", &v, 1, NULL, 0, NULL, 0, &v);
  if (!s) s = vmc_graph_add_node(g, "linear", "fc", &v, 1, fc_attr, 1, fc_p, 2, &v);
  if (!s) s = vmc_graph_set_meta(g, "architecture", "tiny");
  if (!s) s = vmc_graph_set_meta(g, "dataset", "\xc3\xbcnicode \xe2\x9c\x93");
  if (!s) s = vmc_graph_set_meta(g, "empty", "");
  if (!s) s = vmc_graph_add_history(g, "built by test_vmcfile");
  if (!s) s = vmc_graph_add_history(g, "second line");
  if (s) goto fail;
  *out = g;
  return VMC_OK;
fail:
  vmc_graph_free(g);
  return s;
}

/* Two extras: a tensor and a scalar (ndim 0). */
static void make_extras(vmc_blob *e, float *store) {
  memset(e, 0, 2 * sizeof *e);
  snprintf(e[0].name, sizeof e[0].name, "sgd.momentum.conv1.weight");
  e[0].shape = vmc_shape4(4, 3, 3, 3);
  e[0].data = store;
  for (int i = 0; i < 108; i++) store[i] = (float)i * 0.25f - 3.0f;
  snprintf(e[1].name, sizeof e[1].name, "epoch");
  e[1].shape.ndim = 0;
  e[1].data = store + 108;
  store[108] = 7.0f;
}

static void check_same_graph(const vmc_graph *a, const vmc_graph *b) {
  CHECK(vmc_shape_eq(&a->in_shape, &b->in_shape));
  CHECK_EQ_INT(a->n_params, b->n_params);
  CHECK_EQ_INT(a->n_nodes, b->n_nodes);
  CHECK_EQ_INT(a->n_values, b->n_values);
  CHECK_EQ_INT(a->n_meta, b->n_meta);
  if (vmc_test_failed_now()) return;
  CHECK(!strcmp(a->values[a->output].name, b->values[b->output].name));
  CHECK(!strcmp(b->values[b->input].name, "input"));
  for (int i = 0; i < a->n_params; i++) {
    const vmc_param *p = &a->params[i], *q = &b->params[i];
    CHECK(!strcmp(p->name, q->name));
    CHECK(vmc_shape_eq(&p->shape, &q->shape));
    CHECK_EQ_INT(p->trainable, q->trainable);
    CHECK(!memcmp(p->data, q->data, vmc_shape_count(&p->shape) * sizeof(float)));
  }
  for (int i = 0; i < a->n_nodes; i++) {
    const vmc_node *m = &a->nodes[i], *n = &b->nodes[i];
    CHECK(!strcmp(m->name, n->name));
    CHECK(m->op == n->op);
    CHECK_EQ_INT(m->n_in, n->n_in);
    for (int k = 0; k < m->n_in && k < n->n_in; k++)
      CHECK(!strcmp(a->values[m->in[k]].name, b->values[n->in[k]].name));
    CHECK_EQ_INT(m->n_attr, n->n_attr);
    for (int k = 0; k < m->n_attr && k < n->n_attr; k++) {
      CHECK(!strcmp(m->attr[k].key, n->attr[k].key));
      CHECK_EQ_INT(m->attr[k].i, n->attr[k].i);
      CHECK(!memcmp(&m->attr[k].f, &n->attr[k].f, sizeof(float)));
    }
    CHECK_EQ_INT(m->n_param, n->n_param);
    for (int k = 0; k < m->n_param && k < n->n_param; k++)
      CHECK(!strcmp(a->params[m->param[k]].name, b->params[n->param[k]].name));
  }
  for (int i = 0; i < a->n_meta; i++) {
    CHECK(!strcmp(a->meta[i].key, b->meta[i].key));
    CHECK(!strcmp(a->meta[i].value, b->meta[i].value));
  }
}

/* The tiny model with its two extras, as file bytes (malloc'd). */
static uint8_t *tiny_file(size_t *n) {
  vmc_graph *g;
  if (build_tiny(1, &g)) return NULL;
  vmc_blob e[2];
  float store[109];
  make_extras(e, store);
  char path[512];
  tmp_path(path, sizeof path, "tiny_bytes.vmc");
  vmc_status s = vmc_model_write(g, e, 2, path);
  vmc_graph_free(g);
  return s ? NULL : slurp(path, n);
}

/* Reads from memory as "corrupt.vmc": on failure checks that nothing was
 * returned and that the message names the source. */
static vmc_status try_read(const uint8_t *b, size_t n) {
  vmc_graph *g = (vmc_graph *)1;
  vmc_blob *e = (vmc_blob *)1;
  int ne = -1;
  vmc_status s = vmc_model_read_memory(b, n, "corrupt.vmc", &g, &e, &ne);
  if (s == VMC_OK) {
    vmc_graph_free(g);
    vmc_blobs_free(e, ne);
  } else {
    CHECK(g == NULL && e == NULL && ne == 0);
    CHECK(strstr(vmc_last_error(), "corrupt.vmc") != NULL);
  }
  return s;
}

/* Where the fields of a well-formed file are (walked independently of the
 * reader, from docs/file-format.md). */
typedef struct tensor_at {
  size_t name, dtype, role, flags, link, axis, ndim, dims, off, nbytes;
} tensor_at;
typedef struct node_at {
  size_t op, name, n_in, first_in, n_attr, n_param, first_param;
} node_at;
typedef struct layout {
  size_t meta, tensors, graph, data, output;
  int nt, nn;
  tensor_at t[16];
  node_at node[16];
} layout;

static size_t skip_str(const uint8_t *b, size_t at) { return at + 4 + rd32(b + at); }

static void walk(const uint8_t *b, layout *L) {
  memset(L, 0, sizeof *L);
  L->meta = rd64(b + VMC_FH_META_OFF);
  L->tensors = rd64(b + VMC_FH_TENSORS_OFF);
  L->graph = rd64(b + VMC_FH_GRAPH_OFF);
  L->data = rd64(b + VMC_FH_DATA_OFF);
  L->nt = (int)rd32(b + VMC_FH_N_TENSORS);
  L->nn = (int)rd32(b + VMC_FH_N_NODES);
  size_t at = L->tensors;
  for (int i = 0; i < L->nt && i < 16; i++) {
    tensor_at *t = &L->t[i];
    t->name = at;
    at = skip_str(b, at);
    t->dtype = at;
    t->role = at + 4;
    t->flags = at + 8;
    t->link = at + 12;
    t->axis = at + 16;
    t->ndim = at + 20;
    t->dims = at + 24;
    at = t->dims + 4 * rd32(b + t->ndim);
    t->off = at;
    t->nbytes = at + 8;
    at += 16;
  }
  at = L->graph + 12;
  for (int i = 0; i < L->nn && i < 16; i++) {
    node_at *n = &L->node[i];
    n->op = at;
    at = skip_str(b, at);
    n->name = at;
    at = skip_str(b, at);
    n->n_in = at;
    uint32_t k = rd32(b + at);
    at += 4;
    n->first_in = at;
    while (k--) at = skip_str(b, at);
    n->n_attr = at;
    k = rd32(b + at);
    at += 4;
    while (k--) at = skip_str(b, at) + 8;
    n->n_param = at;
    k = rd32(b + at);
    at += 4;
    n->first_param = at;
    while (k--) at = skip_str(b, at);
  }
  L->output = at;
}

/* ---- round trip ---------------------------------------------------------- */

TEST(vmcfile_round_trip) {
  vmc_graph *g, *h = NULL;
  REQUIRE_OK(build_tiny(42, &g));
  vmc_blob e[2];
  float store[109];
  make_extras(e, store);
  char path[512];
  tmp_path(path, sizeof path, "round.vmc");
  CHECK_OK(vmc_model_write(g, e, 2, path));
  vmc_blob *re = NULL;
  int nre = 0;
  CHECK_OK(vmc_model_read(path, &h, &re, &nre));
  if (h) check_same_graph(g, h);
  CHECK_EQ_INT(nre, 2);
  if (re && nre == 2) {
    for (int i = 0; i < 2; i++) {
      CHECK(!strcmp(re[i].name, e[i].name));
      CHECK(vmc_shape_eq(&re[i].shape, &e[i].shape));
      CHECK(!memcmp(re[i].data, e[i].data, vmc_shape_count(&e[i].shape) * sizeof(float)));
    }
    CHECK_EQ_INT(re[1].shape.ndim, 0);
  }
  CHECK(!strcmp(vmc_graph_meta(h, "empty"), ""));
  CHECK(!strcmp(vmc_graph_meta(h, "history"), "built by test_vmcfile\nsecond line"));
  vmc_blobs_free(re, nre);
  vmc_graph_free(h);
  h = NULL;

  /* vmc_model_load skips the extras. */
  CHECK_OK(vmc_model_load(path, &h));
  if (h) check_same_graph(g, h);
  vmc_graph_free(h);
  h = NULL;

  /* save/load without extras; reading extras of a file with none. */
  char path2[512];
  tmp_path(path2, sizeof path2, "round2.vmc");
  CHECK_OK(vmc_model_save(g, path2));
  re = (vmc_blob *)1;
  nre = -1;
  CHECK_OK(vmc_model_read(path2, &h, &re, &nre));
  CHECK(re == NULL && nre == 0);
  if (h) check_same_graph(g, h);

  /* The same graph gives the same bytes; a re-saved load gives them too. */
  char path3[512];
  tmp_path(path3, sizeof path3, "round3.vmc");
  if (h) CHECK_OK(vmc_model_save(h, path3));
  size_t n2 = 0, n3 = 0;
  uint8_t *b2 = slurp(path2, &n2), *b3 = slurp(path3, &n3);
  CHECK(b2 && b3 && n2 == n3 && !memcmp(b2, b3, n2));
  const char *seed_dir = getenv("VMC_FUZZ_SEED_DIR"); /* seeds for tests/fuzz */
  if (seed_dir && b2) {
    char sp[512];
    snprintf(sp, sizeof sp, "%s/tiny.vmc", seed_dir);
    CHECK(spit(sp, b2, n2) == 0);
  }
  free(b2);
  free(b3);
  vmc_graph_free(h);
  vmc_graph_free(g);
}

/* Every zoo model (residual adds, depthwise convs, ReLU6 ...) survives the
 * file bit for bit. */
TEST(vmcfile_zoo_round_trip) {
  for (const char *const *name = vmc_zoo_names(); *name; name++) {
    vmc_graph *g = NULL, *h = NULL;
    CHECK_OK(vmc_zoo_build(*name, 1, 28, 28, 10, 5, &g));
    if (!g) continue;
    char path[512];
    tmp_path(path, sizeof path, "zoo.vmc");
    CHECK_OK(vmc_graph_set_meta(g, "architecture", *name));
    CHECK_OK(vmc_model_save(g, path));
    CHECK_OK(vmc_model_load(path, &h));
    if (h) {
      check_same_graph(g, h);
      CHECK_EQ_INT(vmc_graph_num_params(g), vmc_graph_num_params(h));
    }
    vmc_graph_free(h);
    vmc_graph_free(g);
  }
}

TEST(vmcfile_layout_aligned) {
  size_t n = 0;
  uint8_t *b = tiny_file(&n);
  REQUIRE(b != NULL);
  layout L;
  walk(b, &L);
  CHECK(!memcmp(b, VMC_FILE_MAGIC, 8));
  CHECK_EQ_INT(rd32(b + VMC_FH_VERSION), 1);
  CHECK_EQ_INT(rd64(b + VMC_FH_FILE_BYTES), n);
  CHECK_EQ_INT(rd32(b + n - 4), vmc_crc32(0, b, n - 4));
  CHECK_EQ_INT(L.nt, 9); /* 7 parameters + 2 extras */
  CHECK_EQ_INT(L.data % 64, 0);
  vmc_graph *g;
  REQUIRE_OK(build_tiny(1, &g));
  uint64_t prev_end = L.data;
  for (int i = 0; i < L.nt; i++) {
    uint64_t off = rd64(b + L.t[i].off), len = rd64(b + L.t[i].nbytes);
    CHECK_EQ_INT(off % 64, 0);
    CHECK(off >= prev_end && off + len <= n - 4);
    prev_end = off + len;
    CHECK_EQ_INT(rd32(b + L.t[i].dtype), VMC_F32);
    uint32_t flags = rd32(b + L.t[i].flags);
    if (i < g->n_params) {
      CHECK(len == vmc_shape_count(&g->params[i].shape) * 4);
      CHECK(!memcmp(b + off, g->params[i].data, len)); /* little-endian host */
      CHECK_EQ_INT(flags, g->params[i].trainable ? VMC_TFLAG_TRAINABLE : 0);
    } else {
      CHECK_EQ_INT(flags, VMC_TFLAG_EXTRA);
    }
  }
  vmc_graph_free(g);
  free(b);
}

/* ---- atomic writes --------------------------------------------------------- */

TEST(vmcfile_atomic_overwrite) {
  vmc_graph *g, *g2;
  REQUIRE_OK(build_tiny(7, &g));
  if (build_tiny(8, &g2)) {
    vmc_graph_free(g);
    REQUIRE(0);
  }
  CHECK_OK(vmc_graph_set_meta(g2, "architecture", "different"));
  char path[512], bad[512], dirpath[512];
  tmp_path(path, sizeof path, "atomic.vmc");
  CHECK_OK(vmc_model_save(g, path));
  size_t n0 = 0, n1 = 0;
  uint8_t *before = slurp(path, &n0);
  CHECK(before != NULL);

  /* A missing directory: IO error, nothing created. */
  tmp_path(bad, sizeof bad, "no/such/dir/x.vmc");
  CHECK_EQ_INT(vmc_model_save(g, bad), VMC_ERR_IO);
  CHECK(strstr(vmc_last_error(), "x.vmc") != NULL);

  /* Renaming over a directory fails after the temp file was written. */
  tmp_path(dirpath, sizeof dirpath, "a_directory.vmc");
  CHECK(mkdir(dirpath, 0700) == 0);
  CHECK_EQ_INT(vmc_model_save(g, dirpath), VMC_ERR_IO);
  CHECK_EQ_INT(count_temp_files(), 0);

  /* Every allocation failure while saving g2 over path leaves path intact. */
  int failures = 0;
  for (long k = 0; k < 1000; k++) {
    vmc_fail_alloc_after(k);
    vmc_status s = vmc_model_save(g2, path);
    vmc_fail_alloc_after(-1);
    if (s == VMC_OK) break;
    failures++;
    CHECK_EQ_INT(s, VMC_ERR_NOMEM);
    uint8_t *now = slurp(path, &n1);
    CHECK(now && n1 == n0 && !memcmp(now, before, n0));
    free(now);
    CHECK_EQ_INT(count_temp_files(), 0);
  }
  CHECK(failures > 0);
  /* The last iteration succeeded: the file is now g2. */
  vmc_graph *h = NULL;
  CHECK_OK(vmc_model_load(path, &h));
  if (h) CHECK(!strcmp(vmc_graph_meta(h, "architecture"), "different"));
  CHECK_EQ_INT(count_temp_files(), 0);
  vmc_graph_free(h);
  free(before);
  vmc_graph_free(g);
  vmc_graph_free(g2);
}

TEST(vmcfile_refuses_invalid_graph) {
  vmc_graph *g;
  REQUIRE_OK(vmc_graph_create(1, 4, 4, &g));
  char path[512];
  tmp_path(path, sizeof path, "empty_graph.vmc");
  CHECK(vmc_model_save(g, path) != VMC_OK); /* no nodes, no output */
  struct stat st;
  CHECK(stat(path, &st) != 0);
  vmc_graph_free(g);
  REQUIRE_OK(build_tiny(3, &g));
  vmc_blob e[2];
  float store[109];
  make_extras(e, store);
  snprintf(e[1].name, sizeof e[1].name, "fc.bias"); /* clashes with a parameter */
  CHECK_EQ_INT(vmc_model_write(g, e, 2, path), VMC_ERR_INVALID_ARG);
  CHECK(stat(path, &st) != 0);
  vmc_graph_free(g);
}

/* ---- reading bad files ------------------------------------------------------ */

TEST(vmcfile_read_alloc_failures) {
  size_t n = 0;
  uint8_t *b = tiny_file(&n);
  REQUIRE(b != NULL);
  int failures = 0;
  for (long k = 0; k < 10000; k++) {
    vmc_graph *g = NULL;
    vmc_blob *e = NULL;
    int ne = 0;
    vmc_fail_alloc_after(k);
    vmc_status s = vmc_model_read_memory(b, n, "mem.vmc", &g, &e, &ne);
    vmc_fail_alloc_after(-1);
    if (s == VMC_OK) {
      CHECK_EQ_INT(ne, 2);
      vmc_graph_free(g);
      vmc_blobs_free(e, ne);
      break;
    }
    failures++;
    CHECK_EQ_INT(s, VMC_ERR_NOMEM);
    CHECK(g == NULL && e == NULL && ne == 0);
  }
  CHECK(failures > 10);
  /* Through a file: the first allocation is the file buffer. */
  char path[512];
  tmp_path(path, sizeof path, "alloc.vmc");
  CHECK(spit(path, b, n) == 0);
  vmc_graph *g = (vmc_graph *)1;
  vmc_fail_alloc_after(0);
  CHECK_EQ_INT(vmc_model_load(path, &g), VMC_ERR_NOMEM);
  vmc_fail_alloc_after(-1);
  CHECK(g == NULL);
  CHECK(strstr(vmc_last_error(), "alloc.vmc") != NULL);
  free(b);
}

TEST(vmcfile_reject_bad_files) {
  char path[512];
  vmc_graph *g = (vmc_graph *)1;
  /* missing */
  tmp_path(path, sizeof path, "missing.vmc");
  CHECK_EQ_INT(vmc_model_load(path, &g), VMC_ERR_NOT_FOUND);
  CHECK(g == NULL);
  CHECK(strstr(vmc_last_error(), "missing.vmc") != NULL);
  /* a directory */
  CHECK_EQ_INT(vmc_model_load(vmc_test_tmpdir(), &g), VMC_ERR_IO);
  /* empty */
  tmp_path(path, sizeof path, "empty.vmc");
  CHECK(spit(path, "", 0) == 0);
  CHECK_EQ_INT(vmc_model_load(path, &g), VMC_ERR_FORMAT);
  CHECK(strstr(vmc_last_error(), "empty.vmc") != NULL);
  /* random bytes, with and without the magic in front */
  uint8_t rnd[4096];
  vmc_rng rng;
  vmc_rng_seed(&rng, 99);
  for (size_t i = 0; i < sizeof rnd; i++) rnd[i] = (uint8_t)vmc_rng_u64(&rng);
  tmp_path(path, sizeof path, "random.vmc");
  CHECK(spit(path, rnd, sizeof rnd) == 0);
  CHECK_EQ_INT(vmc_model_load(path, &g), VMC_ERR_FORMAT);
  CHECK(strstr(vmc_last_error(), "not a .vmc file") != NULL);
  memcpy(rnd, VMC_FILE_MAGIC, 8);
  CHECK(try_read(rnd, sizeof rnd) != VMC_OK);
  wr32(rnd + 8, 1);
  CHECK_EQ_INT(try_read(rnd, sizeof rnd), VMC_ERR_FORMAT);

  size_t n = 0;
  uint8_t *b = tiny_file(&n);
  REQUIRE(b != NULL);
  uint8_t *c = malloc(n);
  REQUIRE(c != NULL);
  /* wrong magic */
  memcpy(c, b, n);
  c[3] ^= 0x20;
  CHECK_EQ_INT(try_read(c, n), VMC_ERR_FORMAT);
  CHECK(strstr(vmc_last_error(), "not a .vmc file") != NULL);
  /* a future version, with a valid checksum */
  memcpy(c, b, n);
  wr32(c + VMC_FH_VERSION, VMC_FILE_VERSION + 1);
  fix_crc(c, n);
  CHECK_EQ_INT(try_read(c, n), VMC_ERR_VERSION);
  CHECK(strstr(vmc_last_error(), "version 5") != NULL);
  CHECK(strstr(vmc_last_error(), "newer vmc") != NULL);
  /* a float model in a version 2 or 3 file is fine; version 4 lays its
   * sections out differently */
  for (uint32_t v = 2; v <= 3; v++) {
    wr32(c + VMC_FH_VERSION, v);
    fix_crc(c, n);
    CHECK_OK(try_read(c, n));
  }
  wr32(c + VMC_FH_VERSION, 4);
  fix_crc(c, n);
  CHECK_EQ_INT(try_read(c, n), VMC_ERR_FORMAT);
  wr32(c + VMC_FH_VERSION, 0);
  CHECK_EQ_INT(try_read(c, n), VMC_ERR_VERSION);
  /* trailing garbage */
  uint8_t *longer = malloc(n + 16);
  REQUIRE(longer != NULL);
  memcpy(longer, b, n);
  memset(longer + n, 0, 16);
  CHECK_EQ_INT(try_read(longer, n + 16), VMC_ERR_FORMAT);
  free(longer);
  /* NULL buffer of length 0 */
  CHECK_EQ_INT(try_read(NULL, 0), VMC_ERR_FORMAT);
  free(c);
  free(b);
}

/* Every prefix of the file b[0..n) is rejected. */
static void check_truncations(const uint8_t *b, size_t n) {
  for (size_t len = 0; len < n; len++) {
    /* A copy of exactly len bytes, so ASan sees any read past it. */
    uint8_t *c = malloc(len ? len : 1);
    REQUIRE(c != NULL);
    memcpy(c, b, len);
    vmc_status s = try_read(c, len);
    free(c);
    if (s == VMC_OK) {
      vmc_test_fail(__FILE__, __LINE__, "truncated to %zu of %zu bytes, read OK", len, n);
      break;
    }
  }
}

TEST(vmcfile_truncation_everywhere) {
  size_t n = 0;
  uint8_t *b = tiny_file(&n);
  REQUIRE(b != NULL);
  check_truncations(b, n);
  /* The same through a file on disk, at a few lengths. */
  char path[512];
  tmp_path(path, sizeof path, "trunc.vmc");
  size_t lens[] = {1, 8, 12, 95, 96, 100, n / 2, n - 5, n - 1};
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
    vmc_graph *g = NULL;
    CHECK(spit(path, b, lens[i]) == 0);
    CHECK_EQ_INT(vmc_model_load(path, &g), VMC_ERR_FORMAT);
    CHECK(g == NULL);
    CHECK(strstr(vmc_last_error(), "trunc.vmc") != NULL);
    if (lens[i] >= 8) CHECK(strstr(vmc_last_error(), "truncated") != NULL);
  }
  free(b);
}

/* Every byte of b[0..n) flipped (three ways) is caught, by the CRC. */
static void check_byte_flips(const uint8_t *b, size_t n) {
  uint8_t *c = malloc(n);
  REQUIRE(c != NULL);
  memcpy(c, b, n);
  const uint8_t masks[] = {0x01, 0x80, 0xff};
  for (size_t i = 0; i < n; i++) {
    for (int m = 0; m < 3; m++) {
      c[i] ^= masks[m];
      vmc_status s = try_read(c, n);
      c[i] ^= masks[m];
      if (s == VMC_OK) {
        vmc_test_fail(__FILE__, __LINE__, "byte %zu ^ 0x%02x read OK", i, masks[m]);
        continue;
      }
      /* Past magic, version and the size field only the CRC can tell. */
      if (i >= VMC_FH_FILE_BYTES + 8 && !strstr(vmc_last_error(), "checksum mismatch"))
        vmc_test_fail(__FILE__, __LINE__, "byte %zu: %s", i, vmc_last_error());
    }
  }
  free(c);
}

TEST(vmcfile_every_byte_flip) {
  size_t n = 0;
  uint8_t *b = tiny_file(&n);
  REQUIRE(b != NULL);
  check_byte_flips(b, n);
  free(b);
}

/* ---- the parser itself: corruptions with a valid CRC ------------------------- */

typedef struct corruption {
  const char *what;
  size_t at;
  int width;         /* 1, 4 or 8: the field at `at` is set to value */
  uint64_t value;
  vmc_status want;   /* VMC_OK: any failure */
  const char *msg;   /* substring of the message, or NULL */
  const char *bytes; /* else: these bytes are copied to `at` */
  size_t at2;        /* and optionally a second field (width2 != 0) */
  int width2;
  uint64_t value2;
} corruption;

static void set_field(uint8_t *c, size_t at, int width, uint64_t v) {
  if (width == 8) wr64(c + at, v);
  else if (width == 4) wr32(c + at, (uint32_t)v);
  else if (width == 1) c[at] = (uint8_t)v;
}

static void expect_rejected(const uint8_t *b, size_t n, const corruption *k) {
  uint8_t *c = malloc(n);
  if (!c) return;
  memcpy(c, b, n);
  if (k->bytes) memcpy(c + k->at, k->bytes, strlen(k->bytes));
  else set_field(c, k->at, k->width, k->value);
  set_field(c, k->at2, k->width2, k->value2);
  fix_crc(c, n);
  vmc_status s = try_read(c, n);
  if (getenv("VMC_TEST_VERBOSE")) printf("  %-32s %s\n", k->what, vmc_last_error());
  if (s == VMC_OK)
    vmc_test_fail(__FILE__, __LINE__, "%s: read OK", k->what);
  else if (k->want != VMC_OK && s != k->want)
    vmc_test_fail(__FILE__, __LINE__, "%s: %s (%s)", k->what, vmc_status_str(s), vmc_last_error());
  else if (k->msg && !strstr(vmc_last_error(), k->msg))
    vmc_test_fail(__FILE__, __LINE__, "%s: message '%s' lacks '%s'", k->what, vmc_last_error(),
                  k->msg);
  free(c);
}

TEST(vmcfile_parser_rejects_bad_fields) {
  size_t n = 0;
  uint8_t *b = tiny_file(&n);
  REQUIRE(b != NULL);
  layout L;
  walk(b, &L);
  REQUIRE(L.nt == 9 && L.nn == 7);
  const tensor_at *w = &L.t[0], *bias = &L.t[6], *ex = &L.t[7];
  const node_at *conv = &L.node[0], *bn = &L.node[1];
  uint64_t w_off = rd64(b + w->off);
  uint64_t t1_off = rd64(b + L.t[1].off);
  const uint32_t BIG = 0xffffffffu;
  const size_t attr1 = conv->n_attr + 4, attr2 = skip_str(b, attr1) + 8,
               attr3 = skip_str(b, attr2) + 8;
  const corruption cases[] = {
      /* header */
      {"huge metadata count", VMC_FH_N_META, 4, BIG, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"metadata count off by one", VMC_FH_N_META, 4, rd32(b + VMC_FH_N_META) + 1, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"huge tensor count", VMC_FH_N_TENSORS, 4, BIG, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"tensor count at the limit", VMC_FH_N_TENSORS, 4, VMC_FILE_MAX_COUNT, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"tensor count off by one", VMC_FH_N_TENSORS, 4, 10, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"huge node count", VMC_FH_N_NODES, 4, BIG, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"zero nodes", VMC_FH_N_NODES, 4, 0, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"header size", VMC_FH_HEADER_BYTES, 4, 64, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"header flags", VMC_FH_FLAGS, 4, 1, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"reserved byte", VMC_FH_RESERVED + 5, 1, 1, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"metadata offset", VMC_FH_META_OFF, 8, 100, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"tensors before metadata", VMC_FH_TENSORS_OFF, 8, 90, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"huge tensors offset", VMC_FH_TENSORS_OFF, 8, UINT64_MAX, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"graph offset past the end", VMC_FH_GRAPH_OFF, 8, n + 64, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"unaligned data offset", VMC_FH_DATA_OFF, 8, L.data + 4, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"data offset past the end", VMC_FH_DATA_OFF, 8, L.data + 1024 * 64, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"data offset earlier", VMC_FH_DATA_OFF, 8, L.data - 64, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"file size", VMC_FH_FILE_BYTES, 8, n - 1, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      /* metadata */
      {"empty metadata key", L.meta, 4, 0, VMC_ERR_FORMAT, "metadata entry 0", NULL, 0, 0, 0},
      {"huge metadata key", L.meta, 4, BIG, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"NUL in a metadata key", L.meta + 5, 1, 0, VMC_ERR_FORMAT, "NUL", NULL, 0, 0, 0},
      {"huge metadata value", skip_str(b, L.meta), 4, BIG - 3, VMC_ERR_FORMAT, "architecture", NULL, 0, 0, 0},
      /* tensor directory */
      {"empty tensor name", w->name, 4, 0, VMC_ERR_FORMAT, "tensor 0", NULL, 0, 0, 0},
      {"tensor name of 64 bytes", w->name, 4, 64, VMC_ERR_FORMAT, "tensor 0", NULL, 0, 0, 0},
      {"huge tensor name", w->name, 4, BIG, VMC_ERR_FORMAT, "tensor 0", NULL, 0, 0, 0},
      {"NUL in a tensor name", w->name + 4 + 3, 1, 0, VMC_ERR_FORMAT, "NUL", NULL, 0, 0, 0},
      {"unknown dtype", w->dtype, 4, 99, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"s8 dtype, f32 length", w->dtype, 4, VMC_S8, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0}, /* length no longer fits */
      {"unknown role", w->role, 4, 7, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"scale without link", w->role, 4, VMC_TROLE_SCALE, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"unknown flag", w->flags, 4, 0x10, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"trainable extra", ex->flags, 4, 3, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"link on data", w->link, 4, 1, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"axis on data", w->axis, 4, 1, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"five dimensions", w->ndim, 4, 5, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"huge ndim", w->ndim, 4, BIG, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"parameter of ndim 0", w->ndim, 4, 0, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"zero dimension", w->dims, 4, 0, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"huge dimension", w->dims, 4, 0x7fffffff, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"negative dimension", w->dims + 4, 4, BIG, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"dimension off by one", w->dims, 4, 5, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"huge byte length", w->nbytes, 8, UINT64_MAX, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"short byte length", w->nbytes, 8, 4, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"offset past the end", w->off, 8, (n + 63) / 64 * 64, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"huge offset", w->off, 8, UINT64_MAX - 63, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"unaligned offset", w->off, 8, w_off + 4, VMC_ERR_FORMAT, "aligned", NULL, 0, 0, 0},
      {"offset inside the sections", w->off, 8, 0, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"overlapping tensors", L.t[1].off, 8, w_off, VMC_ERR_FORMAT, "overlaps", NULL, 0, 0, 0},
      {"tensors out of order", w->off, 8, t1_off, VMC_ERR_FORMAT, "overlaps", NULL, 0, 0, 0},
      {"tensor over the CRC", L.t[7].off, 8, rd64(b + L.t[8].off), VMC_ERR_FORMAT, "momentum", NULL, 0, 0, 0},
      {"duplicate tensor name", L.t[1].name + 4, 0, 0, VMC_ERR_FORMAT, "named 'fc.weight'",
       "fc.weight", 0, 0, 0}, /* bn1.gamma, also 9 bytes */
      /* quantized tensors need version 2 and a scale tensor (more below) */
      {"s8 tensor in version 1", w->dtype, 4, VMC_S8, VMC_ERR_FORMAT, "needs format version 2",
       NULL, w->nbytes, 8, 108},
      {"s4 tensor in version 1", w->dtype, 4, VMC_S4, VMC_ERR_FORMAT, "s4", NULL, w->nbytes, 8, 54},
      {"u8 tensor", w->dtype, 4, VMC_U8, VMC_ERR_UNSUPPORTED, "u8", NULL, w->nbytes, 8, 108},
      {"scale of an f32 tensor", L.t[1].role, 4, VMC_TROLE_SCALE, VMC_ERR_FORMAT, "scale", NULL,
       L.t[1].link, 4, 0},
      {"zero point", L.t[1].role, 4, VMC_TROLE_ZERO_POINT, VMC_ERR_UNSUPPORTED, "zero point", NULL,
       L.t[1].link, 4, 0},
      {"link to itself", L.t[1].role, 4, VMC_TROLE_SCALE, VMC_ERR_FORMAT, "link", NULL,
       L.t[1].link, 4, 1},
      {"parameter renamed", bias->name + 4, 1, 'F', VMC_ERR_FORMAT, "'fc.bias'", NULL, 0, 0, 0},
      /* graph */
      {"zero input channels", L.graph, 4, 0, VMC_ERR_FORMAT, "input shape", NULL, 0, 0, 0},
      {"huge input height", L.graph + 4, 4, BIG, VMC_ERR_FORMAT, "input shape", NULL, 0, 0, 0},
      {"unknown op", conv->op + 4, 1, 'k', VMC_ERR_NOT_FOUND, "unknown op 'konv2d'", NULL, 0, 0, 0},
      {"huge op name", conv->op, 4, BIG, VMC_ERR_FORMAT, "node 0", NULL, 0, 0, 0},
      {"node named 'input'", conv->name + 4, 0, 0, VMC_ERR_FORMAT, "twice", "input", 0, 0, 0},
      {"too many inputs", conv->n_in, 4, 9, VMC_ERR_FORMAT, "node 0 ('conv1'", NULL, 0, 0, 0},
      {"huge input count", conv->n_in, 4, BIG, VMC_ERR_FORMAT, "conv1", NULL, 0, 0, 0},
      {"no inputs", conv->n_in, 4, 0, VMC_ERR_FORMAT, "conv1", NULL, 0, 0, 0},
      {"undefined input", bn->first_in + 4, 1, 'X', VMC_ERR_FORMAT, "'Xonv1'", NULL, 0, 0, 0},
      {"input from the future", conv->first_in + 4, 0, 0, VMC_ERR_FORMAT, "'relu1'", "relu1", 0, 0, 0},
      {"huge attribute count", conv->n_attr, 4, BIG, VMC_ERR_FORMAT, "conv1", NULL, 0, 0, 0},
      {"13 attributes", conv->n_attr, 4, 13, VMC_ERR_FORMAT, "conv1", NULL, 0, 0, 0},
      {"attribute key of 16 bytes", attr1, 4, 16, VMC_ERR_FORMAT, "conv1", NULL, 0, 0, 0},
      {"duplicate attribute", attr3 + 4 + 1, 1, 'h', VMC_ERR_FORMAT, "'kh' appears twice", NULL, 0, 0, 0},
      {"bad attribute value", attr1 + 4 + 5, 4, 0, VMC_ERR_SHAPE, "conv1", NULL, 0, 0, 0}, /* out_c = 0 */
      {"huge parameter count", conv->n_param, 4, BIG, VMC_ERR_FORMAT, "conv1", NULL, 0, 0, 0},
      {"five parameters", bn->n_param, 4, 5, VMC_ERR_FORMAT, "bn1", NULL, 0, 0, 0},
      {"parameter missing", conv->first_param + 4, 1, 'C', VMC_ERR_FORMAT, "'Conv1.weight'", NULL, 0, 0, 0},
      {"parameter count below the op's", bn->n_param, 4, 3, VMC_ERR_FORMAT, "bn1", NULL, 0, 0, 0},
      {"output undefined", L.output + 4, 1, 'F', VMC_ERR_FORMAT, "'Fc'", NULL, 0, 0, 0},
      {"empty output name", L.output, 4, 0, VMC_ERR_FORMAT, "output", NULL, 0, 0, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect_rejected(b, n, &cases[i]);
  free(b);
}

/* Every structural byte set to values a fuzzer likes, CRC fixed: never a
 * crash, a leak, or a read outside the buffer (checked by ASan/UBSan). */
/* Sets every field position of b[0..end) (end <= n - 4) to those values;
 * returns how many of the files were rejected, *ok how many were read. */
static long field_sweep(const uint8_t *b, size_t n, size_t end, long *ok) {
  uint8_t *c = malloc(n);
  if (!c) return 0;
  const uint64_t vals[] = {0, 1, 2, 3, 4, 5, 7, 8, 63, 64, 65, 0x7f, 0x80, 0xff, 0x7fffffff,
                           0x80000000u, 0xffffffffu, n - 4, n, rd64(b + VMC_FH_DATA_OFF),
                           UINT64_MAX};
  const int widths[] = {1, 4, 8};
  long bad = 0;
  *ok = 0;
  for (size_t at = 0; at < end; at++) {
    for (int wi = 0; wi < 3; wi++) {
      if (at + (size_t)widths[wi] > end) continue;
      for (size_t vi = 0; vi < sizeof vals / sizeof vals[0]; vi++) {
        memcpy(c, b, n);
        if (widths[wi] == 1) c[at] = (uint8_t)vals[vi];
        else if (widths[wi] == 4) wr32(c + at, (uint32_t)vals[vi]);
        else wr64(c + at, vals[vi]);
        fix_crc(c, n);
        if (try_read(c, n) == VMC_OK) (*ok)++;
        else bad++;
      }
    }
  }
  free(c);
  return bad;
}

TEST(vmcfile_parser_survives_field_sweep) {
  size_t n = 0;
  uint8_t *b = tiny_file(&n);
  REQUIRE(b != NULL);
  layout L;
  walk(b, &L);
  long ok = 0, bad = field_sweep(b, n, L.data, &ok);
  CHECK(bad > ok); /* most such changes break the file */
  free(b);
}

/* ---- quantized weights: s8 / s4 codes and their scales (version 2) ---------- */

/* Makes parameter id nq scales times random codes and marks it stored as t:
 * uniform codes (sigma < 0; -qmax, qmax and 0 first), Gaussian ones of
 * deviation sigma (clamped), or all 0 (sigma 0). */
static vmc_status quantize_param(vmc_graph *g, int id, vmc_dtype t, int nq, float sigma,
                                 vmc_rng *rng) {
  vmc_param *p = &g->params[id];
  const int qmax = t == VMC_S8 ? 127 : 7;
  float scale[64];
  for (int c = 0; c < nq && c < 64; c++) scale[c] = 0.001f + 0.1f * vmc_rng_uniform(rng);
  const size_t n = vmc_shape_count(&p->shape), blk = n / (size_t)nq;
  for (size_t i = 0; i < n; i++) {
    int code = 0;
    if (sigma < 0) {
      code = (int)vmc_rng_below(rng, 2 * qmax + 1) - qmax;
      if (i < 3) code = i == 0 ? -qmax : i == 1 ? qmax : 0;
    } else if (sigma > 0) {
      const float v = sigma * vmc_rng_normal(rng);
      code = (int)lrintf(v > (float)qmax ? (float)qmax : v < (float)-qmax ? (float)-qmax : v);
    }
    p->data[i] = (float)code * scale[i / blk];
  }
  return vmc_param_set_quantized(g, id, t, scale, nq);
}

static vmc_status add_conv(vmc_graph *g, const char *name, int out_c, int k, int *w, int *v) {
  vmc_attr a[] = {vmc_attr_int("out_c", out_c), vmc_attr_int("kh", k), vmc_attr_int("kw", k),
                  vmc_attr_int("ph", k / 2), vmc_attr_int("pw", k / 2)};
  return vmc_graph_add_node(g, "conv2d", name, v, 1, a, 5, w, 1, v);
}

/* Ends a test model after value v: gap -> flatten -> fc (5 outputs, weight
 * fw, bias fb), metadata architecture `arch`; *out = g, or g freed when s
 * (the building so far) or this fails. */
static vmc_status finish_model(vmc_graph *g, vmc_status s, int v, int fw, int fb,
                               const char *arch, vmc_graph **out) {
  vmc_attr fc_attr[] = {vmc_attr_int("out_f", 5)};
  int fc_p[] = {fw, fb};
  if (!s) s = vmc_graph_add_node(g, "gap", "gap", &v, 1, NULL, 0, NULL, 0, &v);
  if (!s) s = vmc_graph_add_node(g, "flatten", "flat", &v, 1, NULL, 0, NULL, 0, &v);
  if (!s) s = vmc_graph_add_node(g, "linear", "fc", &v, 1, fc_attr, 1, fc_p, 2, &v);
  if (!s) s = vmc_graph_set_meta(g, "architecture", arch);
  if (s) {
    vmc_graph_free(g);
    return s;
  }
  *out = g;
  return VMC_OK;
}

/* input 3x8x8 -> conv1 3x3x3x3 (s4 per channel, 81 codes: an odd count) ->
 * relu -> conv2 4x3x1x1 (s8 per tensor) -> relu -> gap -> flatten -> fc 5x4
 * (s8 per channel) + f32 bias. */
static vmc_status build_qtiny(uint64_t seed, vmc_graph **out) {
  vmc_graph *g;
  vmc_rng rng;
  vmc_rng_seed(&rng, seed);
  VMC_TRY(vmc_graph_create(3, 8, 8, &g));
  int w1 = 0, w2 = 0, fw = 0, fb = 0, v = g->input;
  vmc_status s = add_param(g, "conv1.weight", vmc_shape4(3, 3, 3, 3), 1, &w1, &rng);
  if (!s) s = add_param(g, "conv2.weight", vmc_shape4(4, 3, 1, 1), 1, &w2, &rng);
  if (!s) s = add_param(g, "fc.weight", vmc_shape2(5, 4), 1, &fw, &rng);
  if (!s) s = add_param(g, "fc.bias", (vmc_shape){1, {5}}, 1, &fb, &rng);
  if (!s) s = quantize_param(g, w1, VMC_S4, 3, -1, &rng);
  if (!s) s = quantize_param(g, w2, VMC_S8, 1, -1, &rng);
  if (!s) s = quantize_param(g, fw, VMC_S8, 5, -1, &rng);
  if (!s) s = add_conv(g, "conv1", 3, 3, &w1, &v);
  if (!s) s = vmc_graph_add_node(g, "relu", "relu1", &v, 1, NULL, 0, NULL, 0, &v);
  if (!s) s = add_conv(g, "conv2", 4, 1, &w2, &v);
  if (!s) s = vmc_graph_add_node(g, "relu", "relu2", &v, 1, NULL, 0, NULL, 0, &v);
  return finish_model(g, s, v, fw, fb, "qtiny", out);
}

typedef vmc_status (*build_fn)(uint64_t seed, vmc_graph **out);

/* The bytes the writer writes for build(seed) (malloc'd) in format
 * `version` at most, through the temporary file `name`. */
static uint8_t *model_file(build_fn build, uint64_t seed, uint32_t version, const char *name,
                           size_t *n) {
  vmc_graph *g;
  if (build(seed, &g)) return NULL;
  char path[512];
  tmp_path(path, sizeof path, name);
  vmc_status s = vmc_model_write_version(g, NULL, 0, version, path);
  vmc_graph_free(g);
  return s ? NULL : slurp(path, n);
}

/* The file of build(seed) (malloc'd) and its layout *L; NULL (a failed
 * check) unless it is of format `version` with nt tensor entries. */
static uint8_t *walked_file(build_fn build, uint64_t seed, uint32_t version, int nt, size_t *n,
                            layout *L) {
  uint8_t *b = model_file(build, seed, version, "walked.vmc", n);
  if (b) walk(b, L);
  if (b && (rd32(b + VMC_FH_VERSION) != version || L->nt != nt)) {
    vmc_test_fail(__FILE__, __LINE__, "version %u with %d tensor entries, want %u and %d",
                  rd32(b + VMC_FH_VERSION), L->nt, version, nt);
    free(b);
    b = NULL;
  }
  return b;
}

static void check_same_storage(const vmc_graph *a, const vmc_graph *b) {
  for (int i = 0; i < a->n_params && i < b->n_params; i++) {
    const vmc_param *p = &a->params[i], *q = &b->params[i];
    CHECK_EQ_INT(p->store, q->store);
    CHECK_EQ_INT(p->n_qscale, q->n_qscale);
    if (p->n_qscale == q->n_qscale && p->n_qscale)
      CHECK(!memcmp(p->qscale, q->qscale, (size_t)p->n_qscale * sizeof(float)));
  }
}

/* Logits of 3 seeded images. */
static void run_logits(vmc_graph *g, float *out) {
  vmc_plan *p = NULL;
  memset(out, 0, 15 * sizeof *out);
  CHECK_OK(vmc_plan_create(g, 3, VMC_MODE_INFER, &p));
  if (!p) return;
  vmc_rng r;
  vmc_rng_seed(&r, 11);
  float *x = vmc_plan_input(p);
  for (size_t i = 0; i < 3 * vmc_shape_count(&g->in_shape); i++) x[i] = vmc_rng_normal(&r);
  CHECK_OK(vmc_plan_forward(p, 3));
  memcpy(out, vmc_plan_output(p), 15 * sizeof *out);
  vmc_plan_destroy(p);
}

/* g saved (to `name`, in format `version` at most), loaded and saved
 * again: the same graph, storage and logits, the same bytes (the writer is
 * deterministic and a load keeps the storage), of format `version`; the
 * bytes also go to $VMC_FUZZ_SEED_DIR/seed_name, seeds for tests/fuzz. */
static void check_resave(vmc_graph *g, const char *name, uint32_t version, const char *seed_name) {
  char path[512], path2[512];
  tmp_path(path, sizeof path, name);
  snprintf(path2, sizeof path2, "%s.again", path);
  vmc_graph *h = NULL;
  CHECK_OK(vmc_model_write_version(g, NULL, 0, version, path));
  CHECK_OK(vmc_model_load(path, &h));
  if (!h) return;
  check_same_graph(g, h); /* data bit for bit */
  check_same_storage(g, h);
  float y0[15], y1[15];
  run_logits(g, y0);
  run_logits(h, y1);
  CHECK(!memcmp(y0, y1, sizeof y0));
  CHECK_OK(vmc_model_write_version(h, NULL, 0, version, path2));
  vmc_graph_free(h);
  size_t n1 = 0, n2 = 0;
  uint8_t *b1 = slurp(path, &n1), *b2 = slurp(path2, &n2);
  CHECK(b1 && b2 && n1 == n2 && !memcmp(b1, b2, n1));
  if (b1) CHECK_EQ_INT(rd32(b1 + VMC_FH_VERSION), version);
  const char *seed_dir = getenv("VMC_FUZZ_SEED_DIR");
  if (seed_dir && b1) {
    char sp[512];
    snprintf(sp, sizeof sp, "%s/%s", seed_dir, seed_name);
    CHECK(spit(sp, b1, n1) == 0);
  }
  free(b1);
  free(b2);
}

/* The file of build(seed) in format `version` truncated, its bytes
 * flipped, and every field and data byte set to odd values with the CRC
 * fixed: rejected or read, never a crash or a leak. */
static void check_corruption_sweeps(build_fn build, uint64_t seed, uint32_t version) {
  size_t n = 0;
  uint8_t *b = model_file(build, seed, version, "sweep.vmc", &n);
  REQUIRE(b != NULL);
  CHECK_EQ_INT(rd32(b + VMC_FH_VERSION), version);
  check_truncations(b, n);
  check_byte_flips(b, n);
  long ok = 0, bad = field_sweep(b, n, n - 4, &ok);
  CHECK(bad > 0 && ok > 0);
  free(b);
}

/* Reading the file of build(seed) in format `version` with the k-th
 * allocation failing, for every k, then saving build(seed) the same way:
 * VMC_ERR_NOMEM, nothing returned and no file or temporary left, until it
 * succeeds with the same bytes. */
static void check_alloc_failures(build_fn build, uint64_t seed, uint32_t version) {
  size_t n = 0;
  uint8_t *b = model_file(build, seed, version, "alloc_bytes.vmc", &n);
  REQUIRE(b != NULL);
  int failures = 0;
  for (long k = 0; k < 10000; k++) {
    vmc_graph *g = NULL;
    vmc_fail_alloc_after(k);
    vmc_status s = vmc_model_read_memory(b, n, "mem.vmc", &g, NULL, NULL);
    vmc_fail_alloc_after(-1);
    if (s == VMC_OK) {
      vmc_graph_free(g);
      break;
    }
    failures++;
    CHECK_EQ_INT(s, VMC_ERR_NOMEM);
    CHECK(g == NULL);
  }
  CHECK(failures > 10);
  vmc_graph *g;
  vmc_status bs = build(seed, &g);
  if (bs) free(b);
  REQUIRE_OK(bs);
  char path[512];
  tmp_path(path, sizeof path, "alloc.vmc");
  remove(path);
  failures = 0;
  for (long k = 0; k < 1000; k++) {
    vmc_fail_alloc_after(k);
    vmc_status s = vmc_model_write_version(g, NULL, 0, version, path);
    vmc_fail_alloc_after(-1);
    if (s == VMC_OK) break;
    failures++;
    CHECK_EQ_INT(s, VMC_ERR_NOMEM);
    struct stat st;
    CHECK(stat(path, &st) != 0);
    CHECK_EQ_INT(count_temp_files(), 0);
  }
  CHECK(failures > 0);
  size_t n2 = 0;
  uint8_t *b2 = slurp(path, &n2);
  CHECK(b2 && n2 == n && !memcmp(b, b2, n));
  free(b2);
  free(b);
  vmc_graph_free(g);
}

TEST(vmcfile_quantized_round_trip) {
  vmc_graph *g, *h = NULL;
  REQUIRE_OK(build_qtiny(5, &g));
  check_resave(g, "qround.vmc", 2, "qtiny.vmc"); /* random codes: not entropy-coded */
  check_resave(g, "qround4.vmc", 4, "qtiny4.vmc");
  /* Quantized weights need version 2 at least. */
  char p1[512];
  tmp_path(p1, sizeof p1, "qround1.vmc");
  CHECK_EQ_INT(vmc_model_write_version(g, NULL, 0, 1, p1), VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "need version 2") != NULL);
  CHECK_EQ_INT(vmc_model_write_version(g, NULL, 0, 5, p1), VMC_ERR_INVALID_ARG);
  char path2[512];
  tmp_path(path2, sizeof path2, "qround2.vmc");
  /* A clone keeps the storage too; marking a weight f32 stores it as f32. */
  vmc_graph *c = NULL;
  CHECK_OK(vmc_graph_clone(g, &c));
  if (c) {
    CHECK_OK(vmc_param_set_quantized(c, 0, VMC_F32, NULL, 0));
    CHECK_OK(vmc_model_save(c, path2));
    h = NULL;
    CHECK_OK(vmc_model_load(path2, &h));
    if (h) {
      check_same_graph(g, h);
      CHECK_EQ_INT(h->params[0].store, VMC_F32);
      CHECK_EQ_INT(h->params[1].store, VMC_S8);
    }
    vmc_graph_free(h);
  }
  vmc_graph_free(c);
  vmc_graph_free(g);
}

TEST(vmcfile_quantized_layout) {
  size_t n = 0;
  layout L;
  uint8_t *b = walked_file(build_qtiny, 5, 2, 7, &n, &L); /* 4 parameters + 3 scale tensors */
  REQUIRE(b != NULL);
  vmc_graph *g;
  REQUIRE_OK(build_qtiny(5, &g));
  /* directory index of each parameter, and of its scales (or -1) */
  const int data_at[4] = {0, 2, 4, 6}, scale_at[4] = {1, 3, 5, -1};
  uint64_t prev_end = L.data;
  for (int i = 0; i < L.nt; i++) {
    uint64_t off = rd64(b + L.t[i].off), len = rd64(b + L.t[i].nbytes);
    CHECK_EQ_INT(off % 64, 0);
    CHECK(off >= prev_end && off + len <= n - 4);
    prev_end = off + len;
  }
  for (int k = 0; k < 4; k++) {
    const vmc_param *p = &g->params[k];
    const tensor_at *d = &L.t[data_at[k]];
    const size_t count = vmc_shape_count(&p->shape);
    const uint8_t *codes = b + rd64(b + d->off);
    CHECK_EQ_INT(rd32(b + d->dtype), k < 3 ? (uint32_t)p->store : VMC_F32);
    CHECK_EQ_INT(rd32(b + d->role), VMC_TROLE_DATA);
    CHECK_EQ_INT(rd64(b + d->nbytes), vmc_dtype_bytes(k < 3 ? p->store : VMC_F32, count));
    CHECK_EQ_INT(rd64(b + d->nbytes) + (k < 3 ? 4 * (uint64_t)p->n_qscale : 0),
                 vmc_param_file_bytes(p));
    for (size_t i = 0; k < 3 && i < count; i++) {
      const int want = vmc_param_code(p, i);
      const int got = p->store == VMC_S8 ? (int8_t)codes[i] : vmc_s4_get(codes, i);
      if (got != want) {
        vmc_test_fail(__FILE__, __LINE__, "%s code %zu: %d, want %d", p->name, i, got, want);
        break;
      }
    }
    if (p->store == VMC_S4) CHECK_EQ_INT(codes[count / 2] >> 4, 0); /* 81 codes */
    if (scale_at[k] < 0) continue;
    const tensor_at *sc = &L.t[scale_at[k]];
    CHECK_EQ_INT(rd32(b + sc->name), strlen(p->name));
    CHECK(!memcmp(b + sc->name + 4, p->name, strlen(p->name)));
    CHECK_EQ_INT(rd32(b + sc->dtype), VMC_F32);
    CHECK_EQ_INT(rd32(b + sc->role), VMC_TROLE_SCALE);
    CHECK_EQ_INT(rd32(b + sc->flags), 0);
    CHECK_EQ_INT(rd32(b + sc->link), data_at[k]);
    CHECK_EQ_INT(rd32(b + sc->axis), 0);
    CHECK_EQ_INT(rd32(b + sc->ndim), 1);
    CHECK_EQ_INT(rd32(b + sc->dims), p->n_qscale);
    CHECK_EQ_INT(rd64(b + sc->nbytes), 4 * (uint64_t)p->n_qscale);
    CHECK(!memcmp(b + rd64(b + sc->off), p->qscale, 4 * (size_t)p->n_qscale));
  }
  vmc_graph_free(g);
  free(b);
}

/* Writes a float's bits at b + at. */
static uint64_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

TEST(vmcfile_quantized_rejects_bad_fields) {
  size_t n = 0;
  layout L;
  uint8_t *b = walked_file(build_qtiny, 5, 2, 7, &n, &L);
  REQUIRE(b != NULL);
  const tensor_at *w1 = &L.t[0], *s1 = &L.t[1], *w2 = &L.t[2], *s2 = &L.t[3], *fw = &L.t[4],
                  *fs = &L.t[5];
  const uint64_t c1 = rd64(b + w1->off), c2 = rd64(b + w2->off), sc1 = rd64(b + s1->off),
                 sc2 = rd64(b + s2->off);
  /* conv2's codes: element 0 is -127 and 1 is 127 (quantize_param) */
  const corruption cases[] = {
      /* envelope */
      {"quantized in version 1", VMC_FH_VERSION, 4, 1, VMC_ERR_FORMAT, "needs format version 2", NULL, 0, 0, 0},
      {"version 5", VMC_FH_VERSION, 4, VMC_FILE_VERSION + 1, VMC_ERR_VERSION, "version 5", NULL, 0, 0, 0},
      {"the layout read as version 4", VMC_FH_VERSION, 4, 4, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"coded flag in version 2", w2->flags, 4, VMC_TFLAG_CODED, VMC_ERR_FORMAT, "needs format version 3", NULL, 0, 0, 0},
      /* codes */
      {"s8 code -128", c2, 1, 0x80, VMC_ERR_FORMAT, "code -128", NULL, 0, 0, 0},
      {"s4 code -8 (low nibble)", c1, 1, 0x08, VMC_ERR_FORMAT, "code -8", NULL, 0, 0, 0},
      {"s4 code -8 (high nibble)", c1, 1, 0x89, VMC_ERR_FORMAT, "element 1 has code -8", NULL, 0, 0, 0},
      {"s4 padding nibble", c1 + 40, 1, 0x10 | (b[c1 + 40] & 15), VMC_ERR_FORMAT, "high nibble", NULL, 0, 0, 0},
      /* scales */
      {"NaN scale", sc1, 4, 0x7fc00000u, VMC_ERR_FORMAT, "conv1.weight': scale 0", NULL, 0, 0, 0},
      {"zero scale", sc1 + 4, 4, 0, VMC_ERR_FORMAT, "scale 1 is 0", NULL, 0, 0, 0},
      {"negative scale", sc1 + 8, 4, f32_bits(-0.5f), VMC_ERR_FORMAT, "scale 2 is -0.5", NULL, 0, 0, 0},
      {"-0 scale", sc2, 4, 0x80000000u, VMC_ERR_FORMAT, "conv2.weight': scale 0", NULL, 0, 0, 0},
      {"infinite scale", sc2, 4, 0x7f800000u, VMC_ERR_FORMAT, "scale 0 is inf", NULL, 0, 0, 0},
      {"subnormal scale", sc2, 4, f32_bits(1e-40f), VMC_ERR_FORMAT, "conv2.weight': scale 0", NULL, 0, 0, 0},
      {"scale overflows a code", sc2, 4, f32_bits(FLT_MAX / 2), VMC_ERR_FORMAT, "overflows", NULL, 0, 0, 0},
      /* the scale tensor's entry */
      {"two scales for three channels", s1->dims, 4, 2, VMC_ERR_FORMAT, "expected 'conv1.weight', f32 [1] or [3]", NULL, s1->nbytes, 8, 8},
      {"six scales for five channels", fs->dims, 4, 6, VMC_ERR_FORMAT, "[1] or [5]", NULL, fs->nbytes, 8, 24},
      {"scale count vs length", s1->dims, 4, 1, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"s32 scales", s1->dtype, 4, VMC_S32, VMC_ERR_FORMAT, "s32", NULL, 0, 0, 0},
      {"scale renamed", s1->name + 4, 1, 'C', VMC_ERR_FORMAT, "'Conv1.weight'", NULL, 0, 0, 0},
      {"scale linked elsewhere", s2->link, 4, 0, VMC_ERR_FORMAT, "does not directly follow", NULL, 0, 0, 0},
      {"scale linked to a scale", s2->link, 4, 1, VMC_ERR_FORMAT, "does not directly follow", NULL, 0, 0, 0},
      {"scale linked forward", s1->link, 4, 2, VMC_ERR_FORMAT, "does not directly follow", NULL, 0, 0, 0},
      {"scale link out of range", s1->link, 4, 7, VMC_ERR_FORMAT, "link", NULL, 0, 0, 0},
      {"trainable scale", s1->flags, 4, VMC_TFLAG_TRAINABLE, VMC_ERR_FORMAT, "flags 1", NULL, 0, 0, 0},
      {"extra scale", s1->flags, 4, VMC_TFLAG_EXTRA, VMC_ERR_FORMAT, "flags 2", NULL, 0, 0, 0},
      {"scale along axis 1", s1->axis, 4, 1, VMC_ERR_FORMAT, "axis 1", NULL, 0, 0, 0},
      {"zero-point companion", s1->role, 4, VMC_TROLE_ZERO_POINT, VMC_ERR_UNSUPPORTED, "zero point", NULL, 0, 0, 0},
      {"scale made data", s1->role, 4, VMC_TROLE_DATA, VMC_ERR_FORMAT, "conv1.weight", NULL, s1->link, 4, VMC_FILE_LINK_NONE},
      /* the data tensor's entry */
      {"s4 codes read as s8", w1->dtype, 4, VMC_S8, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"s8 codes read as s4", w2->dtype, 4, VMC_S4, VMC_ERR_FORMAT, "conv2.weight", NULL, 0, 0, 0},
      {"s8 codes as u8", fw->dtype, 4, VMC_U8, VMC_ERR_UNSUPPORTED, "u8", NULL, 0, 0, 0},
      {"s8 codes as f32", fw->dtype, 4, VMC_F32, VMC_ERR_FORMAT, "fc.weight", NULL, fw->nbytes, 8, 80},
      {"quantized extra", w1->flags, 4, VMC_TFLAG_EXTRA, VMC_ERR_FORMAT, "extra tensors are f32", NULL, 0, 0, 0},
      {"short code length", w2->nbytes, 8, 11, VMC_ERR_FORMAT, "conv2.weight", NULL, 0, 0, 0},
      {"codes over the scales", s2->off, 8, c2, VMC_ERR_FORMAT, "overlaps", NULL, 0, 0, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect_rejected(b, n, &cases[i]);
  free(b);
}

TEST(vmcfile_quantized_corruption_sweeps) { check_corruption_sweeps(build_qtiny, 5, 2); }

TEST(vmcfile_quantized_alloc_failures) { check_alloc_failures(build_qtiny, 5, 2); }

/* The writer never stores a weight that would not read back as it is. */
TEST(vmcfile_quantized_refuses_inexact_weights) {
  vmc_graph *g;
  REQUIRE_OK(build_qtiny(5, &g));
  char path[512];
  tmp_path(path, sizeof path, "qinexact.vmc");
  struct stat st;
  vmc_param *p = &g->params[1]; /* conv2.weight, s8 per tensor */
  const float keep = p->data[4];
  p->data[4] += p->qscale[0] * 0.25f; /* e.g. trained after quantization */
  CHECK_EQ_INT(vmc_model_save(g, path), VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "'conv2.weight'") && strstr(vmc_last_error(), "element 4"));
  CHECK(stat(path, &st) != 0);
  p->data[4] = keep;
  p->data[0] = -128 * p->qscale[0]; /* out of range */
  CHECK_EQ_INT(vmc_model_save(g, path), VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "-127..127") != NULL);
  p->data[0] = -127 * p->qscale[0];
  p->qscale[0] = NAN;
  CHECK_EQ_INT(vmc_model_save(g, path), VMC_ERR_INVALID_ARG);
  CHECK(strstr(vmc_last_error(), "scale 0") != NULL);
  CHECK(stat(path, &st) != 0);
  vmc_graph_free(g);
}

/* Bytes of a file's data region, of its tensor directory, and of the rest. */
static void file_parts(const char *path, uint64_t *data, uint64_t *dir, uint64_t *rest) {
  size_t n = 0;
  uint8_t *b = slurp(path, &n);
  *data = *dir = *rest = 0;
  if (!b || n < VMC_FILE_HEADER_BYTES + 4) {
    free(b);
    return;
  }
  *data = n - 4 - rd64(b + VMC_FH_DATA_OFF);
  *dir = rd64(b + VMC_FH_GRAPH_OFF) - rd64(b + VMC_FH_TENSORS_OFF);
  *rest = n - *data - *dir;
  free(b);
}

/* resnet8 with BatchNorm folded and every conv/linear weight quantized per
 * channel: in a version 3 file the data region shrinks to the targets
 * (int8 <= 26 %, int4 <= 15 % of the f32 one) and the rest of the file
 * grows only by the scale tensors' directory entries (and up to 63 bytes of
 * alignment); the version 4 file is smaller still, the whole of it within
 * the targets, its directory and graph smaller than the f32 file's. */
TEST(vmcfile_quantized_resnet8_size) {
  vmc_graph *z = NULL, *f = NULL;
  REQUIRE_OK(vmc_zoo_build("resnet8", 1, 28, 28, 10, 1, &z));
  int folded = 0;
  vmc_status st = vmc_graph_fold_bn_copy(z, &f, &folded);
  vmc_graph_free(z);
  REQUIRE_OK(st);
  char fpath[512], qpath[512], q4path[512];
  tmp_path(fpath, sizeof fpath, "r8_f32.vmc");
  tmp_path(qpath, sizeof qpath, "r8_q.vmc");
  tmp_path(q4path, sizeof q4path, "r8_q4.vmc");
  CHECK_OK(vmc_model_save(f, fpath));
  uint64_t fdata, fdir, frest;
  file_parts(fpath, &fdata, &fdir, &frest);
  for (int bits = 8; bits >= 4; bits -= 4) {
    vmc_graph *q = NULL;
    CHECK_OK(vmc_graph_clone(f, &q));
    if (!q) break;
    uint64_t dir_growth = 0;
    for (int i = 0; i < q->n_nodes; i++) {
      const vmc_node *nd = &q->nodes[i];
      if (strcmp(nd->op->name, "conv2d") && strcmp(nd->op->name, "linear")) continue;
      vmc_param *w = &q->params[nd->param[0]];
      const int ch = w->shape.d[0];
      const size_t k = vmc_shape_count(&w->shape) / (size_t)ch;
      const vmc_qscheme scheme = bits == 8 ? VMC_QSCHEME_S8 : VMC_QSCHEME_S4;
      vmc_qparams *qp = malloc((size_t)ch * sizeof *qp);
      void *codes = malloc((size_t)ch * k);
      float *scales = malloc((size_t)ch * sizeof *scales);
      REQUIRE(qp && codes && scales);
      CHECK_OK(vmc_quantize_weights(w->data, ch, k, scheme, 1, qp, codes));
      CHECK_OK(vmc_qfake_quantize(w->data, ch, k, qp, w->data));
      for (int c = 0; c < ch; c++) scales[c] = qp[c].scale;
      CHECK_OK(vmc_param_set_quantized(q, nd->param[0], bits == 8 ? VMC_S8 : VMC_S4, scales, ch));
      dir_growth += 4 + strlen(w->name) + 6 * 4 + 4 + 16; /* the scale tensor's entry */
      free(qp);
      free(codes);
      free(scales);
    }
    CHECK_OK(vmc_model_write_version(q, NULL, 0, 3, qpath));
    CHECK_OK(vmc_model_save(q, q4path));
    uint64_t qdata, qdir, qrest, q4data, q4dir, q4rest;
    file_parts(qpath, &qdata, &qdir, &qrest);
    file_parts(q4path, &q4data, &q4dir, &q4rest);
    const uint64_t q4 = q4data + q4dir + q4rest, f32b = fdata + fdir + frest;
    CHECK((double)q4 <= (bits == 8 ? 0.26 : 0.15) * (double)f32b);
    CHECK(q4 < qdata + qdir + qrest && q4data < qdata);
    CHECK(q4dir < fdir && q4rest < frest);
    const double ratio = (double)qdata / (double)fdata;
    if (getenv("VMC_TEST_VERBOSE"))
      printf("  resnet8 s%d: data %llu of %llu bytes (%.1f %%), file %llu of %llu (%.1f %%)\n",
             bits, (unsigned long long)qdata, (unsigned long long)fdata, 100 * ratio,
             (unsigned long long)(qdata + qdir + qrest), (unsigned long long)(fdata + fdir + frest),
             100.0 * (double)(qdata + qdir + qrest) / (double)(fdata + fdir + frest));
    CHECK(ratio <= (bits == 8 ? 0.26 : 0.15));
    CHECK_EQ_INT(qdir, fdir + dir_growth);
    CHECK(qrest >= frest - 63 && qrest <= frest + 63); /* padding before the data */
    for (int v = 0; v < 2; v++) {
      vmc_graph *h = NULL;
      CHECK_OK(vmc_model_load(v ? q4path : qpath, &h));
      if (h) {
        check_same_graph(q, h);
        check_same_storage(q, h);
      }
      vmc_graph_free(h);
    }
    vmc_graph_free(q);
  }
  vmc_graph_free(f);
}

/* ---- entropy-coded codes (version 3) ------------------------------------------ */

/* input 3x8x8 -> conv1 3x3x3x3 (s4 per channel, 81 mostly-zero codes: its
 * own table) -> relu -> conv2 32x3x3x3 (s8 per channel, Gaussian: defines
 * the shared s8 table) -> relu -> conv3 32x32x1x1 (s8 per tensor, Gaussian:
 * the shared table) -> relu -> conv4 8x32x1x1 (s8 per tensor, uniform:
 * raw) -> relu -> gap -> flatten -> fc 5x8 (s8 per channel, all zero: its
 * own one-symbol table) + f32 bias. */
static vmc_status build_ctiny(uint64_t seed, vmc_graph **out) {
  vmc_graph *g;
  vmc_rng rng;
  vmc_rng_seed(&rng, seed);
  VMC_TRY(vmc_graph_create(3, 8, 8, &g));
  int w[4] = {0, 0, 0, 0}, fw = 0, fb = 0, v = g->input;
  static const char *const names[4] = {"conv1", "conv2", "conv3", "conv4"};
  static const int out_c[4] = {3, 32, 32, 8}, in_c[4] = {3, 3, 32, 32}, k[4] = {3, 3, 1, 1};
  static const float sigma[4] = {0.6f, 5.0f, 5.0f, -1.0f};
  vmc_status s = VMC_OK;
  for (int l = 0; l < 4 && !s; l++) {
    char pn[32];
    snprintf(pn, sizeof pn, "%s.weight", names[l]);
    s = add_param(g, pn, vmc_shape4(out_c[l], in_c[l], k[l], k[l]), 1, &w[l], &rng);
    if (!s) s = quantize_param(g, w[l], l ? VMC_S8 : VMC_S4, l == 0 || l == 1 ? out_c[l] : 1,
                               sigma[l], &rng);
    if (!s) s = add_conv(g, names[l], out_c[l], k[l], &w[l], &v);
    snprintf(pn, sizeof pn, "relu%d", l + 1);
    if (!s) s = vmc_graph_add_node(g, "relu", pn, &v, 1, NULL, 0, NULL, 0, &v);
  }
  if (!s) s = add_param(g, "fc.weight", vmc_shape2(5, 8), 1, &fw, &rng);
  if (!s) s = add_param(g, "fc.bias", (vmc_shape){1, {5}}, 1, &fb, &rng);
  if (!s) s = quantize_param(g, fw, VMC_S8, 5, 0.0f, &rng);
  return finish_model(g, s, v, fw, fb, "ctiny", out);
}


/* Directory index of each parameter's codes (conv1..conv4, fc weight). */
static const int ctiny_codes_at[5] = {0, 2, 4, 6, 8};

TEST(vmcfile_coded_round_trip) {
  vmc_graph *g;
  REQUIRE_OK(build_ctiny(7, &g));
  check_resave(g, "cround.vmc", 3, "ctiny.vmc");
  check_resave(g, "cround4.vmc", 4, "ctiny4.vmc");
  vmc_graph_free(g);
}

TEST(vmcfile_coded_layout) {
  size_t n = 0;
  layout L;
  uint8_t *b = walked_file(build_ctiny, 7, 3, 11, &n, &L); /* 6 parameters + 5 scale tensors */
  REQUIRE(b != NULL);
  vmc_graph *g;
  REQUIRE_OK(build_ctiny(7, &g));
  /* conv1: own table; conv2 defines the shared s8 table, conv3 uses it;
   * conv4 raw; fc: its own table. */
  static const int mode[5] = {VMC_CODED_OWN_TABLE, VMC_CODED_DEFINE_SHARED,
                              VMC_CODED_SHARED_TABLE, -1, VMC_CODED_OWN_TABLE};
  vmc_huff_decoder shared, own;
  for (int k = 0; k < 5; k++) {
    const vmc_param *p = &g->params[k];
    const tensor_at *d = &L.t[ctiny_codes_at[k]];
    const size_t count = vmc_shape_count(&p->shape), raw = vmc_dtype_bytes(p->store, count);
    const uint64_t off = rd64(b + d->off), nb = rd64(b + d->nbytes);
    const uint8_t *src = b + off;
    const int qmax = p->store == VMC_S8 ? 127 : 7;
    CHECK_EQ_INT(off % 64, 0);
    CHECK_EQ_INT(rd32(b + d->dtype), p->store);
    CHECK_EQ_INT(rd32(b + d->flags), VMC_TFLAG_TRAINABLE | (mode[k] >= 0 ? VMC_TFLAG_CODED : 0));
    CHECK_EQ_INT(rd32(b + L.t[ctiny_codes_at[k] + 1].flags), 0); /* scales: raw f32 */
    if (mode[k] < 0) {
      CHECK_EQ_INT(nb, raw);
      continue;
    }
    CHECK(nb < raw && count <= 8 * nb);
    CHECK_EQ_INT(src[0], mode[k]);
    /* Decoded as the format says: the table (unless shared), the bits. */
    size_t used = 1;
    if (mode[k] != VMC_CODED_SHARED_TABLE) {
      vmc_huff_table t;
      size_t tb = 0;
      CHECK_OK(vmc_huff_read_table(src + 1, nb - 1, -qmax, qmax, &t, &tb));
      vmc_huff_decoder_init(mode[k] == VMC_CODED_OWN_TABLE ? &own : &shared, &t);
      used += tb;
    }
    int8_t *codes = malloc(count);
    REQUIRE(codes);
    CHECK_OK(vmc_huff_decode(mode[k] == VMC_CODED_OWN_TABLE ? &own : &shared, src + used,
                             (size_t)nb - used, count, codes));
    for (size_t i = 0; i < count; i++)
      if (codes[i] != vmc_param_code(p, i)) {
        vmc_test_fail(__FILE__, __LINE__, "%s code %zu: %d, want %d", p->name, i, codes[i],
                      vmc_param_code(p, i));
        break;
      }
    free(codes);
  }
  /* The all-zero fc weight: 40 codes of one bit, 0, after a 3-byte table. */
  const tensor_at *fc = &L.t[8];
  CHECK_EQ_INT(rd64(b + fc->nbytes), 1 + 3 + 5);
  vmc_graph_free(g);
  free(b);
}

TEST(vmcfile_coded_rejects_bad_fields) {
  size_t n = 0;
  layout L;
  uint8_t *b = walked_file(build_ctiny, 7, 3, 11, &n, &L);
  REQUIRE(b != NULL);
  const tensor_at *w1 = &L.t[0], *s1 = &L.t[1], *w2 = &L.t[2], *w3 = &L.t[4], *w4 = &L.t[6],
                  *fw = &L.t[8], *fb = &L.t[10];
  const uint64_t c1 = rd64(b + w1->off), c2 = rd64(b + w2->off), c3 = rd64(b + w3->off),
                 cf = rd64(b + fw->off), n2 = rd64(b + w2->nbytes);
  const corruption cases[] = {
      {"coded in version 2", VMC_FH_VERSION, 4, 2, VMC_ERR_FORMAT, "needs format version 3", NULL, 0, 0, 0},
      /* directory entries */
      {"coded flag dropped", w2->flags, 4, VMC_TFLAG_TRAINABLE, VMC_ERR_FORMAT, "conv2.weight", NULL, 0, 0, 0},
      {"raw codes flagged coded", w4->flags, 4, VMC_TFLAG_TRAINABLE | VMC_TFLAG_CODED, VMC_ERR_FORMAT, "fewer bytes than raw", NULL, 0, 0, 0},
      {"coded scales", s1->flags, 4, VMC_TFLAG_CODED, VMC_ERR_FORMAT, "flag CODED on a f32 tensor of role 1", NULL, 0, 0, 0},
      {"coded f32 bias", fb->flags, 4, VMC_TFLAG_TRAINABLE | VMC_TFLAG_CODED, VMC_ERR_FORMAT, "only the s8 and s4 codes", NULL, 0, 0, 0},
      {"less than a bit per code", fw->nbytes, 8, 4, VMC_ERR_FORMAT, "at least one bit per code", NULL, 0, 0, 0},
      {"no coded bytes", fw->nbytes, 8, 0, VMC_ERR_FORMAT, "fc.weight", NULL, 0, 0, 0},
      {"coded bytes one short", w2->nbytes, 8, n2 - 1, VMC_ERR_FORMAT, "more than its", NULL, 0, 0, 0},
      {"coded bytes one more", w2->nbytes, 8, n2 + 1, VMC_ERR_FORMAT, "1 bytes follow the last", NULL, 0, 0, 0},
      /* table modes */
      {"unknown table mode", c2, 1, 3, VMC_ERR_FORMAT, "unknown code table mode 3", NULL, 0, 0, 0},
      {"shared table never defined", c2, 1, VMC_CODED_OWN_TABLE, VMC_ERR_FORMAT, "'conv3.weight' uses the shared s8 code table, but no earlier", NULL, 0, 0, 0},
      {"s4 shared table never defined", c1, 1, VMC_CODED_SHARED_TABLE, VMC_ERR_FORMAT, "'conv1.weight' uses the shared s4", NULL, 0, 0, 0},
      {"shared table defined twice", cf, 1, VMC_CODED_DEFINE_SHARED, VMC_ERR_FORMAT, "tensor 'conv2.weight' defined already", NULL, 0, 0, 0},
      /* tables */
      {"s8 table from -128", c2 + 1, 1, 0x80, VMC_ERR_FORMAT, "'conv2.weight' (entropy-coded s8): its code table covers", NULL, 0, 0, 0},
      {"s4 table from -8", c1 + 1, 1, 0xf8, VMC_ERR_FORMAT, "outside -7..7", NULL, 0, 0, 0},
      {"s4 table one symbol longer", c1 + 2, 1, b[c1 + 2] + 1, VMC_ERR_FORMAT, "conv1.weight", NULL, 0, 0, 0},
      {"s8 table lengths", c2 + 3, 1, 0xff, VMC_ERR_FORMAT, "Kraft sum", NULL, 0, 0, 0},
      {"fc table length 2", cf + 3, 1, 2, VMC_ERR_FORMAT, "not a complete prefix code", NULL, 0, 0, 0},
      /* bits */
      {"a 1 bit in a one-symbol stream", cf + 6, 1, 0x20, VMC_ERR_FORMAT, "'fc.weight' (entropy-coded s8): element 18 of 40: no symbol", NULL, 0, 0, 0},
      {"shared stream cut", w3->nbytes, 8, 2, VMC_ERR_FORMAT, "conv3.weight", NULL, 0, 0, 0},
      {"shared stream of zeros", c3 + 1, 8, 0, VMC_OK, NULL, NULL, 0, 0, 0},
  };
  size_t k = 0;
  for (; k + 1 < sizeof cases / sizeof cases[0]; k++) expect_rejected(b, n, &cases[k]);
  /* Zeros in the middle of a stream decode to other legal codes: read, but
   * a different model (only the CRC protects the values). */
  uint8_t *c = malloc(n);
  REQUIRE(c);
  memcpy(c, b, n);
  set_field(c, cases[k].at, cases[k].width, cases[k].value);
  fix_crc(c, n);
  vmc_status s = try_read(c, n);
  CHECK(s == VMC_OK || s == VMC_ERR_FORMAT);
  free(c);
  free(b);
}

TEST(vmcfile_coded_corruption_sweeps) { check_corruption_sweeps(build_ctiny, 7, 3); }

TEST(vmcfile_coded_alloc_failures) { check_alloc_failures(build_ctiny, 7, 3); }

/* ---- the compact layout (version 4) ----------------------------------------- */

static vmc_status add_fakequant(vmc_graph *g, const char *name, float scale, int zp, int *v) {
  vmc_attr a[] = {vmc_attr_float("scale", scale), vmc_attr_int("zero_point", zp),
                  vmc_attr_int("qmin", 0), vmc_attr_int("qmax", 255)};
  return vmc_graph_add_node(g, "fakequant", name, v, 1, a, 4, NULL, 0, v);
}

/* Puts parameter `bias` (n elements) on the s32 grid of quantized weight w
 * and activation scale sx: (float)q * (scale * sx), q drawn up to `mag` in
 * size, with 0, -1 and (mag > 2^16) +-2^30 among them. */
static void grid_bias(vmc_graph *g, int bias, int w, float sx, int mag, vmc_rng *rng) {
  const vmc_param *wp = &g->params[w];
  vmc_param *b = &g->params[bias];
  for (int c = 0; c < b->shape.d[0]; c++) {
    int32_t q = (int32_t)vmc_rng_below(rng, 2 * (uint32_t)mag + 1) - mag;
    if (c < 2 || (c < 4 && mag > 1 << 16))
      q = c == 0 ? 0 : c == 1 ? -1 : c == 2 ? (1 << 30) : -(1 << 30);
    b->data[c] = (float)q * (wp->qscale[wp->n_qscale == 1 ? 0 : c] * sx);
  }
}

/* input 3x8x8 -> fakequant (scale 0.02) -> conv1 16x3x3x3 (s8 per channel,
 * Gaussian) + a bias on its s32 grid -> relu1 (with attributes of all three
 * forms, a NaN among them) -> fakequant (0.05) -> conv2 8x16x1x1 (s4 per
 * tensor) + a bias on its grid -> relu2 -> conv3 8x8x3x3 (f32 weights) ->
 * gap -> flatten -> fc 5x8 (s8 per channel) + an f32 bias off any grid
 * (-0, a subnormal).  Version 4 stores the two grid biases as s32 codes,
 * the scales and f32 weights coded. */
static vmc_status build_vtiny(uint64_t seed, vmc_graph **out) {
  vmc_graph *g;
  vmc_rng rng;
  vmc_rng_seed(&rng, seed);
  VMC_TRY(vmc_graph_create(3, 8, 8, &g));
  int w1 = 0, b1 = 0, w2 = 0, b2 = 0, w3 = 0, fw = 0, fb = 0, v = g->input;
  vmc_status s = add_param(g, "conv1.weight", vmc_shape4(16, 3, 3, 3), 1, &w1, &rng);
  if (!s) s = add_param(g, "conv1.bias", (vmc_shape){1, {16}}, 1, &b1, &rng);
  if (!s) s = add_param(g, "conv2.weight", vmc_shape4(8, 16, 1, 1), 1, &w2, &rng);
  if (!s) s = add_param(g, "conv2.bias", (vmc_shape){1, {8}}, 1, &b2, &rng);
  if (!s) s = add_param(g, "conv3.weight", vmc_shape4(8, 8, 3, 3), 1, &w3, &rng);
  if (!s) s = add_param(g, "fc.weight", vmc_shape2(5, 8), 1, &fw, &rng);
  if (!s) s = add_param(g, "fc.bias", (vmc_shape){1, {5}}, 1, &fb, &rng);
  if (!s) s = quantize_param(g, w1, VMC_S8, 16, 8.0f, &rng);
  if (!s) s = quantize_param(g, w2, VMC_S4, 1, 2.0f, &rng);
  if (!s) s = quantize_param(g, fw, VMC_S8, 5, 30.0f, &rng);
  if (s) return finish_model(g, s, v, fw, fb, "vtiny", out);
  grid_bias(g, b1, w1, 0.02f, 100000, &rng);
  grid_bias(g, b2, w2, 0.05f, 300, &rng);
  g->params[fb].data[0] = -0.0f;
  g->params[fb].data[1] = 1e-40f;
  vmc_attr c1[] = {vmc_attr_int("out_c", 16), vmc_attr_int("kh", 3), vmc_attr_int("kw", 3),
                   vmc_attr_int("ph", 1), vmc_attr_int("pw", 1)};
  vmc_attr c2[] = {vmc_attr_int("out_c", 8), vmc_attr_int("kh", 1), vmc_attr_int("kw", 1)};
  vmc_attr c3[] = {vmc_attr_int("out_c", 8), vmc_attr_int("kh", 3), vmc_attr_int("kw", 3),
                   vmc_attr_int("ph", 1), vmc_attr_int("pw", 1)};
  vmc_attr note[] = {{.key = "note", .i = 7, .f = 0.5f}, {.key = "nan", .i = 0, .f = NAN},
                     vmc_attr_float("pi", 3.25f)};
  int p1[] = {w1, b1}, p2[] = {w2, b2};
  s = add_fakequant(g, "input.quant", 0.02f, 128, &v);
  if (!s) s = vmc_graph_add_node(g, "conv2d", "conv1", &v, 1, c1, 5, p1, 2, &v);
  if (!s) s = vmc_graph_add_node(g, "relu", "relu1", &v, 1, note, 3, NULL, 0, &v);
  if (!s) s = add_fakequant(g, "relu1.activation.quant", 0.05f, 0, &v);
  if (!s) s = vmc_graph_add_node(g, "conv2d", "conv2", &v, 1, c2, 3, p2, 2, &v);
  if (!s) s = vmc_graph_add_node(g, "relu", "relu2", &v, 1, NULL, 0, NULL, 0, &v);
  if (!s) s = vmc_graph_add_node(g, "conv2d", "conv3", &v, 1, c3, 5, &w3, 1, &v);
  return finish_model(g, s, v, fw, fb, "vtiny", out);
}

/* Where the fields of a well-formed version 4 file are, walked
 * independently of the reader from docs/file-format.md. */
typedef struct tensor_at4 {
  size_t name, dtype, role, flags, link, axis, ndim, dims, nbytes;
  uint64_t off, len; /* its data */
} tensor_at4;
typedef struct node_at4 {
  size_t op, name, n_in, first_in, n_attr, n_param, first_param;
  size_t attr_key[VMC_MAX_ATTRS], attr_form[VMC_MAX_ATTRS], attr_value[VMC_MAX_ATTRS];
} node_at4;
typedef struct layout4 {
  size_t strings, tensors, graph, data, output;
  int ns, nt, nn;
  char str[64][VMC_NAME_MAX];
  size_t str_at[64]; /* each string's shared-prefix field */
  tensor_at4 t[16];
  node_at4 node[16];
} layout4;

static uint32_t uv_at(const uint8_t *b, size_t *at) {
  uint32_t v = 0;
  for (int k = 0;; k++) {
    const uint8_t c = b[(*at)++];
    v |= (uint32_t)(c & 127) << (7 * k);
    if (!(c & 128)) return v;
  }
}

static void walk4(const uint8_t *b, size_t n, layout4 *L) {
  memset(L, 0, sizeof *L);
  L->strings = rd64(b + VMC_FH_STRINGS_OFF);
  L->tensors = rd64(b + VMC_FH_TENSORS_OFF);
  L->graph = rd64(b + VMC_FH_GRAPH_OFF);
  L->data = rd64(b + VMC_FH_DATA_OFF);
  L->nt = (int)rd32(b + VMC_FH_N_TENSORS);
  L->nn = (int)rd32(b + VMC_FH_N_NODES);
  size_t at = L->strings;
  L->ns = (int)uv_at(b, &at);
  for (int i = 0; i < L->ns && i < 64; i++) {
    L->str_at[i] = at;
    const uint32_t p = uv_at(b, &at), k = uv_at(b, &at);
    if (i) memcpy(L->str[i], L->str[i - 1], p);
    memcpy(L->str[i] + p, b + at, k);
    L->str[i][p + k] = 0;
    at += k;
  }
  uint64_t data = L->data;
  at = L->tensors;
  for (int i = 0; i < L->nt && i < 16; i++) {
    tensor_at4 *t = &L->t[i];
    t->name = at;
    (void)uv_at(b, &at);
    t->dtype = at;
    t->role = at + 1;
    t->flags = at + 2;
    at += 3;
    t->link = at;
    (void)uv_at(b, &at);
    t->axis = at;
    (void)uv_at(b, &at);
    t->ndim = at;
    const int nd = b[at++];
    t->dims = at;
    for (int k = 0; k < nd; k++) (void)uv_at(b, &at);
    t->nbytes = at;
    t->off = data;
    t->len = uv_at(b, &at);
    data += t->len;
  }
  at = L->graph;
  for (int k = 0; k < 3; k++) (void)uv_at(b, &at);
  for (int i = 0; i < L->nn && i < 16; i++) {
    node_at4 *d = &L->node[i];
    d->op = at;
    (void)uv_at(b, &at);
    d->name = at;
    (void)uv_at(b, &at);
    d->n_in = at;
    uint32_t k = uv_at(b, &at);
    d->first_in = at;
    while (k--) (void)uv_at(b, &at);
    d->n_attr = at;
    k = uv_at(b, &at);
    for (uint32_t j = 0; j < k && j < VMC_MAX_ATTRS; j++) {
      d->attr_key[j] = at;
      (void)uv_at(b, &at);
      d->attr_form[j] = at;
      const int form = b[at++];
      d->attr_value[j] = at;
      if (form != VMC_ATTR_FORM_FLOAT) (void)uv_at(b, &at);
      if (form != VMC_ATTR_FORM_INT) at += 4;
    }
    d->n_param = at;
    k = uv_at(b, &at);
    d->first_param = at;
    while (k--) (void)uv_at(b, &at);
  }
  L->output = at;
  (void)n;
}

/* The stream at src[0..nb) as the format says: the table mode, the table
 * (own or the shared one of *shared), the Huffman bits of n symbols into
 * out; returns the bytes used (0: a failed check). */
static size_t hand_stream(const uint8_t *src, size_t nb, int min, int max,
                          vmc_huff_decoder *shared, size_t n, int8_t *out) {
  vmc_huff_decoder own;
  const vmc_huff_decoder *d = shared;
  size_t used = 1, hb = 0;
  if (src[0] != VMC_CODED_SHARED_TABLE) {
    vmc_huff_table t;
    size_t tb = 0;
    if (vmc_huff_read_table(src + 1, nb - 1, min, max, &t, &tb)) return 0;
    vmc_huff_decoder_init(src[0] == VMC_CODED_OWN_TABLE ? &own : shared, &t);
    if (src[0] == VMC_CODED_OWN_TABLE) d = &own;
    used += tb;
  }
  if (vmc_huff_decode_prefix(d, src + used, nb - used, n, out, &hb)) return 0;
  return used + hb;
}

TEST(vmcfile_v4_round_trip) {
  vmc_graph *g;
  REQUIRE_OK(build_vtiny(3, &g));
  check_resave(g, "vround.vmc", 4, "vtiny.vmc");
  /* The same values as the version 3 file of the same graph, and smaller. */
  char p3[512], p4[512];
  tmp_path(p3, sizeof p3, "vround3.vmc");
  tmp_path(p4, sizeof p4, "vround.vmc");
  CHECK_OK(vmc_model_write_version(g, NULL, 0, 3, p3));
  vmc_graph *h3 = NULL, *h4 = NULL;
  CHECK_OK(vmc_model_load(p3, &h3));
  CHECK_OK(vmc_model_load(p4, &h4));
  if (h3 && h4) {
    check_same_graph(h3, h4);
    check_same_storage(h3, h4);
    for (int k = 0; k < 3; k++) { /* the forms of relu1's attributes, the NaN's bits */
      const vmc_attr *a = &g->nodes[2].attr[k], *c = &h4->nodes[2].attr[k];
      CHECK(a->i == c->i && !memcmp(&a->f, &c->f, 4));
    }
  }
  vmc_graph_free(h3);
  vmc_graph_free(h4);
  size_t n3 = 0, n4 = 0;
  uint8_t *b3 = slurp(p3, &n3), *b4 = slurp(p4, &n4);
  CHECK(b3 && b4 && n4 < n3);
  free(b3);
  free(b4);
  /* A checkpoint of a quantized model: extras in a version 4 file. */
  vmc_blob e[2];
  float store[109];
  make_extras(e, store);
  CHECK_OK(vmc_model_write(g, e, 2, p4));
  vmc_blob *re = NULL;
  int nre = 0;
  vmc_graph *h = NULL;
  CHECK_OK(vmc_model_read(p4, &h, &re, &nre));
  CHECK_EQ_INT(nre, 2);
  for (int i = 0; i < nre && i < 2; i++) {
    CHECK(!strcmp(re[i].name, e[i].name) && vmc_shape_eq(&re[i].shape, &e[i].shape));
    CHECK(!memcmp(re[i].data, e[i].data, vmc_shape_count(&e[i].shape) * sizeof(float)));
  }
  if (h) check_same_graph(g, h);
  vmc_blobs_free(re, nre);
  vmc_graph_free(h);
  h = NULL;
  CHECK_OK(vmc_model_load(p4, &h)); /* the extras checked, not returned */
  vmc_graph_free(h);
  vmc_graph_free(g);
}

/* The version 4 file of build_vtiny decoded by hand, as docs/file-format.md
 * says: the string table, the directory, the coded codes, scales, s32
 * biases and f32 weights, the graph's indices. */
TEST(vmcfile_v4_layout) {
  size_t n = 0;
  uint8_t *b = model_file(build_vtiny, 3, 4, "v4layout.vmc", &n);
  REQUIRE(b != NULL);
  static layout4 L;
  walk4(b, n, &L);
  CHECK_EQ_INT(rd32(b + VMC_FH_VERSION), 4);
  CHECK_EQ_INT(rd64(b + VMC_FH_META_OFF), 96);
  CHECK(L.strings <= L.tensors && L.tensors <= L.graph && L.graph <= L.data);
  for (int i = VMC_FH_RESERVED_V4; i < VMC_FILE_HEADER_BYTES; i++) CHECK_EQ_INT(b[i], 0);
  /* 7 parameters, 3 of them with a scale tensor; 10 nodes */
  REQUIRE(L.nt == 10 && L.nn == 10);
  for (int i = 1; i < L.ns; i++) CHECK(strcmp(L.str[i - 1], L.str[i]) < 0);
  vmc_graph *g;
  REQUIRE_OK(build_vtiny(3, &g));
  /* entry: parameter, dtype, role, link (back), coded */
  static const struct {
    int param, dtype, role, back, coded;
  } want[10] = {{0, VMC_S8, 0, 0, 1},  {0, VMC_F32, 1, 1, 1}, {1, VMC_S32, 0, 2, 1},
                {2, VMC_S4, 0, 0, 1},  {2, VMC_F32, 1, 1, 0}, {3, VMC_S32, 0, 2, 1},
                {4, VMC_F32, 0, 0, 1}, {5, VMC_S8, 0, 0, 0},  {5, VMC_F32, 1, 1, 0},
                {6, VMC_F32, 0, 0, 0}};
  vmc_huff_decoder shared[4];
  for (int i = 0; i < L.nt; i++) {
    const tensor_at4 *t = &L.t[i];
    const vmc_param *p = &g->params[want[i].param];
    size_t at = t->name;
    CHECK(!strcmp(L.str[uv_at(b, &at)], p->name));
    CHECK_EQ_INT(b[t->dtype], want[i].dtype);
    CHECK_EQ_INT(b[t->role], want[i].role);
    CHECK_EQ_INT(b[t->flags], (want[i].role ? 0 : VMC_TFLAG_TRAINABLE) |
                                  (want[i].coded ? VMC_TFLAG_CODED : 0));
    CHECK_EQ_INT(b[t->link], want[i].back);
    CHECK_EQ_INT(b[t->axis], 0);
    const uint8_t *src = b + t->off;
    const size_t nb = (size_t)t->len;
    if (want[i].dtype == VMC_S32) { /* t, the bit lengths, the raw bits */
      const vmc_param *w = &g->params[want[i - 2].param];
      const size_t cnt = vmc_shape_count(&p->shape);
      float tf;
      memcpy(&tf, src, 4);
      CHECK(tf == (i == 2 ? 0.02f : 0.05f));
      int8_t len[16];
      const size_t used = 4 + hand_stream(src + 4, nb - 4, 0, 32, &shared[3], cnt, len);
      REQUIRE(used > 4);
      vmc_bit_reader br = {src + used, 0, 8 * (uint64_t)(nb - used)};
      for (size_t j = 0; j < cnt; j++) {
        uint32_t u = len[j] ? 1 : 0, low = 0;
        if (len[j] > 1) {
          CHECK(vmc_bits_get(&br, len[j] - 1, &low));
          u = 1u << (len[j] - 1) | low;
        }
        const float v = (float)vmc_unzigzag(u) * (w->qscale[w->n_qscale == 1 ? 0 : j] * tf);
        CHECK(!memcmp(&v, &p->data[j], 4));
      }
      CHECK(br.end - br.at < 8);
    } else if (want[i].dtype == VMC_F32 && want[i].coded) { /* top bytes, low bytes */
      const float *x = want[i].role ? p->qscale : p->data;
      const size_t cnt = want[i].role ? (size_t)p->n_qscale : vmc_shape_count(&p->shape);
      int8_t top[600];
      const size_t used = hand_stream(src, nb, -128, 127, &shared[2], cnt, top);
      REQUIRE(used > 0);
      CHECK_EQ_INT(nb - used, 3 * cnt);
      for (size_t j = 0; j < cnt; j++) {
        const uint8_t *lo = src + used + 3 * j;
        const uint32_t u = (uint32_t)(uint8_t)top[j] << 24 | (uint32_t)lo[2] << 16 |
                           (uint32_t)lo[1] << 8 | lo[0];
        CHECK(!memcmp(&u, &x[j], 4));
      }
    } else if (want[i].dtype == VMC_F32) {
      const float *x = want[i].role ? p->qscale : p->data;
      CHECK(!memcmp(src, x, nb)); /* little-endian host */
    } else { /* codes: coded, or raw s8 */
      const size_t cnt = vmc_shape_count(&p->shape);
      const int qmax = p->store == VMC_S8 ? 127 : 7;
      int8_t codes[600];
      if (want[i].coded)
        CHECK_EQ_INT(hand_stream(src, nb, -qmax, qmax, &shared[p->store == VMC_S4], cnt, codes),
                     nb);
      else
        memcpy(codes, src, cnt);
      for (size_t j = 0; j < cnt; j++) CHECK_EQ_INT(codes[j], vmc_param_code(p, j));
    }
  }
  CHECK_EQ_INT(L.t[9].off + L.t[9].len, n - 4); /* the data back to back, to the CRC */
  /* graph: conv1 reads value 1 (input.quant), its parameters are entries 0 and 2 */
  const node_at4 *conv1 = &L.node[1], *relu1 = &L.node[2];
  size_t at = conv1->op;
  CHECK(!strcmp(L.str[uv_at(b, &at)], "conv2d"));
  CHECK_EQ_INT(b[conv1->first_in], 1);
  CHECK(b[conv1->first_param] == 0 && b[conv1->first_param + 1] == 2);
  static const int forms[3] = {VMC_ATTR_FORM_BOTH, VMC_ATTR_FORM_BOTH, VMC_ATTR_FORM_FLOAT};
  for (int k = 0; k < 3; k++) CHECK_EQ_INT(b[relu1->attr_form[k]], forms[k]);
  CHECK_EQ_INT(b[L.node[0].attr_form[0]], VMC_ATTR_FORM_FLOAT); /* scale */
  CHECK_EQ_INT(b[L.node[0].attr_form[1]], VMC_ATTR_FORM_INT);   /* zero_point */
  CHECK_EQ_INT(b[L.output], 10);
  CHECK_EQ_INT(L.output + 1, L.data);
  vmc_graph_free(g);
  free(b);
}

/* The string of the table whose text is s (its index), or -1. */
static int str_index(const layout4 *L, const char *s) {
  for (int i = 0; i < L->ns; i++)
    if (!strcmp(L->str[i], s)) return i;
  return -1;
}

TEST(vmcfile_v4_rejects_bad_fields) {
  size_t n = 0;
  uint8_t *b = model_file(build_vtiny, 3, 4, "v4bad.vmc", &n);
  REQUIRE(b != NULL);
  static layout4 L;
  walk4(b, n, &L);
  REQUIRE(L.nt == 10 && L.nn == 10 && L.ns < 64);
  const tensor_at4 *w1 = &L.t[0], *s1 = &L.t[1], *b1 = &L.t[2], *s2 = &L.t[4], *b2 = &L.t[5],
                   *w3 = &L.t[6], *fb = &L.t[9];
  const node_at4 *fq = &L.node[0], *conv1 = &L.node[1], *relu1 = &L.node[2], *fc = &L.node[9];
  const int kh = str_index(&L, "kh"), conv1w = str_index(&L, "conv1.weight"),
            longest = str_index(&L, "relu1.activation.quant");
  REQUIRE(kh >= 0 && conv1w >= 0 && longest >= 0);
  /* string 3: the bytes it adds to string 2 */
  size_t at3 = L.str_at[3];
  const uint32_t p3 = uv_at(b, &at3);
  (void)uv_at(b, &at3);
  const uint8_t NS = (uint8_t)L.ns;
  const corruption cases[] = {
      /* header */
      {"string table before the metadata", VMC_FH_STRINGS_OFF, 8, 90, VMC_ERR_FORMAT, "bad section offsets", NULL, 0, 0, 0},
      {"string table after the directory", VMC_FH_STRINGS_OFF, 8, L.tensors + 1, VMC_ERR_FORMAT, "bad section offsets", NULL, 0, 0, 0},
      {"reserved byte", VMC_FH_RESERVED_V4, 1, 1, VMC_ERR_FORMAT, "reserved header byte 80", NULL, 0, 0, 0},
      {"data offset earlier", VMC_FH_DATA_OFF, 8, L.data - 1, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"read as version 3", VMC_FH_VERSION, 4, 3, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      /* varints */
      {"a needless last byte", fq->n_in, 0, 0, VMC_ERR_FORMAT, "needless last byte 0", "\x81", 0, 0, 0},
      {"a varint of 33 bits", conv1->n_in, 0, 0, VMC_ERR_FORMAT, "more than 32 bits", "\xff\xff\xff\xff\x1f", 0, 0, 0},
      {"string count", L.strings, 1, 0x7f, VMC_ERR_FORMAT, "strings do not fit", NULL, 0, 0, 0},
      /* string table */
      {"a shared prefix too long", L.str_at[1], 1, 20, VMC_ERR_FORMAT, "string 1", NULL, 0, 0, 0},
      {"nothing new", L.str_at[3] + 1, 1, 0, VMC_ERR_FORMAT, "at least one new", NULL, 0, 0, 0},
      {"64 bytes", L.str_at[3] + 1, 1, 64 - p3, VMC_ERR_FORMAT, "expected 1..63 bytes", NULL, 0, 0, 0},
      {"NUL in a string", at3, 1, 0, VMC_ERR_FORMAT, "NUL", NULL, 0, 0, 0},
      {"out of order", at3, 1, 1, VMC_ERR_FORMAT, "does not sort after", NULL, 0, 0, 0},
      {"a string index past the table", w1->name, 1, NS, VMC_ERR_FORMAT, "of a table of", NULL, 0, 0, 0},
      {"an unused string", relu1->attr_key[0], 1, (uint64_t)kh, VMC_ERR_FORMAT, "('note') of the string table is not used", NULL, 0, 0, 0},
      {"an attribute key of 22 bytes", relu1->attr_key[0], 1, (uint64_t)longest, VMC_ERR_FORMAT, "has 22 bytes, at most 15", NULL, 0, 0, 0},
      /* directory */
      {"u8 tensor", fb->dtype, 1, VMC_U8, VMC_ERR_UNSUPPORTED, "u8", NULL, fb->dims, 1, 20},
      {"link before the first entry", b1->link, 1, 3, VMC_ERR_FORMAT, "3 entries back", NULL, 0, 0, 0},
      {"link on an f32 tensor", w3->link, 1, 1, VMC_ERR_FORMAT, "bad link", NULL, 0, 0, 0},
      {"axis on data", w1->axis, 1, 1, VMC_ERR_FORMAT, "bad link", NULL, 0, 0, 0},
      {"s32 without a link", b1->link, 1, 0, VMC_ERR_FORMAT, "bad link", NULL, 0, 0, 0},
      {"s32 linked to scales", b1->link, 1, 1, VMC_ERR_FORMAT, "not the codes", NULL, 0, 0, 0},
      {"s32 linked to s32", b2->link, 1, 3, VMC_ERR_FORMAT, "not the codes", NULL, 0, 0, 0},
      {"s32 not coded", b1->flags, 1, VMC_TFLAG_TRAINABLE, VMC_ERR_FORMAT, "conv1.bias", NULL, 0, 0, 0},
      {"s32 extra", b1->flags, 1, VMC_TFLAG_EXTRA | VMC_TFLAG_CODED, VMC_ERR_FORMAT, "conv1.bias", NULL, 0, 0, 0},
      {"s32 companion", b1->role, 1, VMC_TROLE_SCALE, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"s32 count vs scales", b1->dims, 1, 8, VMC_ERR_FORMAT, "uses the 16 scales", NULL, 0, 0, 0},
      {"s32 tensor 2-D", b1->ndim, 1, 2, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"coded u8", w3->dtype, 1, VMC_U8, VMC_ERR_FORMAT, "flag CODED on a u8", NULL, 0, 0, 0},
      {"scale tensor trainable", s2->flags, 1, VMC_TFLAG_TRAINABLE, VMC_ERR_FORMAT, "flags 1", NULL, 0, 0, 0},
      {"scale tensor coded and trainable", s1->flags, 1, VMC_TFLAG_TRAINABLE | VMC_TFLAG_CODED, VMC_ERR_FORMAT, "flags 5", NULL, 0, 0, 0},
      {"five dimensions", w1->ndim, 1, 5, VMC_ERR_FORMAT, "too many dimensions", NULL, 0, 0, 0},
      {"zero dimension", w1->dims, 1, 0, VMC_ERR_FORMAT, "dimension 0 is 0", NULL, 0, 0, 0},
      {"data short of the region", w3->nbytes, 1, b[w3->nbytes] - 1u, VMC_ERR_FORMAT, "the data region at", NULL, 0, 0, 0},
      {"data past the region", w3->nbytes, 1, b[w3->nbytes] + 1u, VMC_ERR_FORMAT, "'fc.bias'): data", NULL, 0, 0, 0},
      /* data */
      {"factor 0", b1->off, 4, 0, VMC_ERR_FORMAT, "its factor is 0", NULL, 0, 0, 0},
      {"factor NaN", b1->off, 4, 0x7fc00000u, VMC_ERR_FORMAT, "its factor is nan", NULL, 0, 0, 0},
      {"s32 table mode", b1->off + 4, 1, 3, VMC_ERR_FORMAT, "unknown code table mode 3", NULL, 0, 0, 0},
      {"s32 bit length 33", b1->off + 5, 1, 0x01, VMC_ERR_FORMAT, "(entropy-coded s32): its code table", NULL, b1->off + 6, 1, 33},
      {"coded scale table mode", s1->off, 1, 7, VMC_ERR_FORMAT, "'conv1.weight': unknown code table mode 7", NULL, 0, 0, 0},
      {"coded f32 table", w3->off + 1, 1, 0x7f, VMC_ERR_FORMAT, "'conv3.weight' (entropy-coded f32)", NULL, 0, 0, 0},
      {"s32 raw bits cut", b1->nbytes, 1, b1->len - 1, VMC_ERR_FORMAT, "bytes follow the bit lengths of its codes", NULL, L.t[3].nbytes, 1, L.t[3].len + 1},
      /* graph */
      {"input from the future", conv1->first_in, 1, 5, VMC_ERR_FORMAT, "input 0 is value 5", NULL, 0, 0, 0},
      {"a parameter that is a scale tensor", conv1->first_param, 1, 1, VMC_ERR_FORMAT, "directory entry 1, not a parameter's data", NULL, 0, 0, 0},
      {"a parameter past the directory", conv1->first_param, 1, 100, VMC_ERR_FORMAT, "directory entry 100", NULL, 0, 0, 0},
      {"a node named like a tensor only", conv1->name, 1, (uint64_t)conv1w, VMC_ERR_FORMAT, NULL, NULL, 0, 0, 0},
      {"unknown op", conv1->op, 1, (uint64_t)conv1w, VMC_ERR_NOT_FOUND, "unknown op 'conv1.weight'", NULL, 0, 0, 0},
      {"attribute form 3", fq->attr_form[0], 1, 3, VMC_ERR_FORMAT, "form 3", NULL, 0, 0, 0},
      {"an integral float", fq->attr_value[0], 4, 0x40400000u, VMC_ERR_FORMAT, "is in form 1, not 0", NULL, 0, 0, 0},
      {"both, but an int", relu1->attr_value[0] + 1, 4, 0x40e00000u, VMC_ERR_FORMAT, "is in form 2, not 0", NULL, 0, 0, 0},
      {"output past the nodes", L.output, 1, 11, VMC_ERR_FORMAT, "not a value of the graph", NULL, 0, 0, 0},
      {"a byte after the graph", fc->n_param, 1, 1, VMC_ERR_FORMAT, "1 unexpected bytes at the end of the graph section", NULL, 0, 0, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect_rejected(b, n, &cases[i]);
  free(b);
}

TEST(vmcfile_v4_corruption_sweeps) {
  check_corruption_sweeps(build_vtiny, 3, 4);
  check_corruption_sweeps(build_qtiny, 5, 4);
  check_corruption_sweeps(build_ctiny, 7, 4);
}

TEST(vmcfile_v4_alloc_failures) {
  check_alloc_failures(build_vtiny, 3, 4);
  check_alloc_failures(build_ctiny, 7, 4);
}

/* The file's CRC is zlib's CRC-32 (docs/file-format.md): vmc_crc32 agrees
 * with it at every length and alignment, in one call or in pieces. */
TEST(vmcfile_crc32_is_zlibs) {
  uint8_t buf[300];
  vmc_rng r;
  vmc_rng_seed(&r, 4);
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)vmc_rng_below(&r, 256);
  for (size_t off = 0; off < 9; off++)
    for (size_t n = 0; off + n <= sizeof buf; n += 7) {
      const uint32_t want = (uint32_t)crc32(0, buf + off, (uInt)n);
      CHECK_EQ_INT(vmc_crc32(0, buf + off, n), want);
      CHECK_EQ_INT(vmc_crc32(vmc_crc32(0, buf + off, n / 3), buf + off + n / 3, n - n / 3), want);
    }
}
