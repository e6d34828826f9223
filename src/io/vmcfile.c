/* The .vmc model file: versioned, checksummed, written atomically.  The byte
 * layout is documented in docs/file-format.md and its constants live in
 * io/io.h.
 *
 * Writing serialises the whole file into memory, then writes it to a temporary
 * file that is fsync'ed and renamed over the destination.  Reading loads the
 * whole file, checks the envelope (magic, version, size, CRC-32), then parses
 * it with a bounds-checked cursor: every count, length, offset and dimension
 * is checked before use, so a malformed file gives a status and a message
 * naming the file (and the tensor or node), never a crash or a leak.
 *
 * Versions.  A model whose tensors are all f32 is written as version 1,
 * which every reader knows: fixed-width fields, each tensor's data at a
 * 64-byte aligned offset.  A model with quantized weights (vmc_param.store
 * VMC_S8 / VMC_S4, stored as their codes and a companion tensor of f32
 * scales) is written as version 4: compact sections (one sorted, front-coded
 * string table, LEB128 varints, the data back to back), the codes and the
 * f32 values entropy-coded (canonical Huffman, io/entropy.h) where that
 * makes them smaller, and the biases that lie on the s32 grid of their layer
 * stored as those integers.  Versions 2 (raw codes) and 3 (entropy-coded
 * codes in the version 2 layout) are still read, and written on request
 * (vmc_model_write_version) for older readers. */
#include "io/io.h"

#include "graph/op.h"
#include "io/entropy.h"
#include "kernels/qgemm.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(sizeof(VMC_FILE_MAGIC) - 1 == 8, "the magic is 8 bytes");
_Static_assert(VMC_FH_RESERVED + 24 == VMC_FILE_HEADER_BYTES, "header layout");
_Static_assert(VMC_FH_RESERVED_V4 + 16 == VMC_FILE_HEADER_BYTES, "version 4 header layout");
_Static_assert(sizeof(float) == 4, "f32 tensors");

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define VMC_HOST_LE 1
#else
#define VMC_HOST_LE 0
#endif

/* Smallest encodings, used to bound counts against section sizes. */
enum {
  MIN_META_BYTES = 4 + 1 + 4,               /* key of 1 byte, empty value */
  MIN_TENSOR_BYTES = 4 + 1 + 6 * 4 + 2 * 8, /* 1-byte name, ndim 0 */
  MIN_NODE_BYTES = 2 * (4 + 1) + 3 * 4,     /* op, name, three zero counts */
  /* version 4 */
  MIN_META_BYTES_V4 = 1 + 1 + 1,            /* key of 1 byte, empty value */
  MIN_STRING_BYTES_V4 = 1 + 1 + 1,          /* prefix, length, one byte */
  MIN_TENSOR_BYTES_V4 = 1 + 3 + 2 + 1 + 1,  /* name, dtype role flags, link axis, ndim 0, nbytes */
  MIN_NODE_BYTES_V4 = 2 + 3                 /* op, name, three zero counts */
};

/* ---- little-endian helpers ---------------------------------------------- */
static uint32_t ld_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t ld_u64(const uint8_t *p) { return ld_u32(p) | (uint64_t)ld_u32(p + 4) << 32; }
static void st_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void st_u64(uint8_t *p, uint64_t v) {
  st_u32(p, (uint32_t)v);
  st_u32(p + 4, (uint32_t)(v >> 32));
}
static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* Re-sets the last error with "what: " in front of it. */
static vmc_status wrap_error(vmc_status s, const char *what) {
  char msg[512];
  snprintf(msg, sizeof msg, "%s", vmc_last_error());
  return vmc_error(s, "%s: %s", what, msg);
}

/* The same for the reader: what the graph layer calls a bad argument is, in
 * a file, a malformed file. */
static vmc_status file_error(vmc_status s, const char *what) {
  return wrap_error(s == VMC_ERR_INVALID_ARG ? VMC_ERR_FORMAT : s, what);
}

static bool name_ok(const char *s, size_t cap) {
  size_t n = strnlen(s, cap);
  return n >= 1 && n < cap;
}

/* A tensor directory entry, as written and as parsed. */
typedef struct tensor_ent {
  char name[VMC_NAME_MAX];
  uint32_t dtype, role, flags, link, axis;
  vmc_shape shape;
  uint64_t off, nbytes;
} tensor_ent;

/* ---- quantized storage ---------------------------------------------------- */

static bool is_quantized(const vmc_param *p) { return p->store == VMC_S8 || p->store == VMC_S4; }
static vmc_dtype file_dtype(const vmc_param *p) { return is_quantized(p) ? p->store : VMC_F32; }
static int qmax_of(uint32_t dtype) { return dtype == VMC_S8 ? 127 : 7; }
/* A usable scale: positive, normal and finite (false for NaN). */
static bool scale_ok(float s) { return s >= FLT_MIN && s <= FLT_MAX; }

uint64_t vmc_param_file_bytes(const vmc_param *p) {
  const size_t count = vmc_shape_count(&p->shape);
  uint64_t n = vmc_dtype_bytes(file_dtype(p), count);
  if (is_quantized(p) && p->n_qscale > 0) n += (uint64_t)p->n_qscale * 4;
  return n;
}

/* Checks that quantized parameter p is what the reader will restore: every
 * element an in-range code times its scale; writes the codes to codes[]
 * unless it is NULL. */
static vmc_status param_codes(const vmc_param *p, int8_t *codes, const char *path) {
  const int nq = p->n_qscale;
  if (!p->qscale || (nq != 1 && nq != p->shape.d[0]))
    return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': parameter '%s' is stored as %s with "
                     "%d scales for %d channels", path, p->name, vmc_dtype_name(p->store), nq,
                     p->shape.d[0]);
  for (int c = 0; c < nq; c++)
    if (!scale_ok(p->qscale[c]))
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': parameter '%s': scale %d is %g",
                       path, p->name, c, (double)p->qscale[c]);
  const size_t n = vmc_shape_count(&p->shape), blk = n / (size_t)nq;
  const float qmax = (float)qmax_of(p->store);
  for (size_t i = 0; i < n; i++) {
    const float s = p->qscale[i / blk], v = p->data[i], r = nearbyintf(v / s);
    if (!(r >= -qmax && r <= qmax) || r * s != v)
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': parameter '%s' is stored as %s, "
                       "but element %zu (%g) is not a code in -%d..%d times its scale %g "
                       "(re-quantize it or store it as f32)", path, p->name,
                       vmc_dtype_name(p->store), i, (double)v, qmax_of(p->store), qmax_of(p->store),
                       (double)s);
    if (codes) codes[i] = (int8_t)r;
  }
  return VMC_OK;
}

/* ---- entropy-coded streams ------------------------------------------------
 * A coded tensor's bytes hold a stream: the table mode, the code table
 * (unless the mode says the shared one), the Huffman-coded symbols, then
 * (version 4) raw bytes or bits.  The symbols and the shared tables are per
 * dtype: s8 and s4 codes (the codes themselves), f32 values (the top byte
 * of each, as an int8), s32 codes (the bit lengths of their zigzag form). */
enum { SLOT_S8, SLOT_S4, SLOT_F32, SLOT_INT, N_SLOTS };
static const struct {
  int min, max; /* the alphabet */
  const char *what;
} slot_info[N_SLOTS] = {
    {-127, 127, "s8"}, {-7, 7, "s4"}, {-128, 127, "f32"}, {0, VMC_INT_MAX_LEN, "s32"}};

static int slot_of(uint32_t dtype) {
  return dtype == VMC_S8 ? SLOT_S8 : dtype == VMC_S4 ? SLOT_S4 : dtype == VMC_F32 ? SLOT_F32
                                                                                 : SLOT_INT;
}

/* The symbol of an f32 value: its top byte (sign, high 7 exponent bits). */
static int8_t f32_top(float x) { return (int8_t)(uint8_t)(f32_bits(x) >> 24); }

/* The s32 code q whose value (float)q * S is b bit for bit, the one nearest
 * b / S; false when there is none (e.g. b is -0, or not on the grid). */
static bool int_code(float b, float S, int32_t *q) {
  const double r = nearbyint((double)b / (double)S);
  if (!(r >= (double)INT32_MIN && r <= (double)INT32_MAX)) return false;
  const int32_t c = (int32_t)r;
  if (f32_bits((float)c * S) != f32_bits(b)) return false;
  *q = c;
  return true;
}

/* ======================================================================== */
/* Writing                                                                  */
/* ======================================================================== */

typedef struct wbuf {
  uint8_t *p;
  size_t n, cap;
  bool oom;
} wbuf;

static void wb_need(wbuf *b, size_t k) {
  if (b->oom || k <= b->cap - b->n) return;
  size_t nc = b->cap ? b->cap : 4096;
  while (nc - b->n < k) {
    if (nc > SIZE_MAX / 2) {
      b->oom = true;
      return;
    }
    nc *= 2;
  }
  uint8_t *q = vmc_realloc_plain(b->p, nc);
  if (!q) {
    b->oom = true;
    return;
  }
  b->p = q;
  b->cap = nc;
}
static void wb_put(wbuf *b, const void *src, size_t k) {
  wb_need(b, k);
  if (b->oom || !k) return;
  memcpy(b->p + b->n, src, k);
  b->n += k;
}
static void wb_zeros(wbuf *b, size_t k) {
  wb_need(b, k);
  if (b->oom) return;
  memset(b->p + b->n, 0, k);
  b->n += k;
}
static void wb_u8(wbuf *b, uint8_t v) { wb_put(b, &v, 1); }
static void wb_u32(wbuf *b, uint32_t v) {
  uint8_t t[4];
  st_u32(t, v);
  wb_put(b, t, 4);
}
static void wb_u64(wbuf *b, uint64_t v) {
  uint8_t t[8];
  st_u64(t, v);
  wb_put(b, t, 8);
}
static void wb_f32(wbuf *b, float f) { wb_u32(b, f32_bits(f)); }
/* An unsigned LEB128 varint: 7 bits a byte, the low ones first, the top
 * bit set on every byte but the last. */
static void wb_uv(wbuf *b, uint32_t v) {
  uint8_t t[VMC_FILE_VARINT_MAX_BYTES];
  size_t k = 0;
  do {
    t[k] = (uint8_t)(v & 127);
    v >>= 7;
    if (v) t[k] |= 128;
    k++;
  } while (v);
  wb_put(b, t, k);
}
/* A string with its length: u32 (versions 1..3) or a varint (4). */
static void wb_str(wbuf *b, const char *s, bool compact) {
  size_t n = strlen(s);
  if (compact) wb_uv(b, (uint32_t)n);
  else wb_u32(b, (uint32_t)n);
  wb_put(b, s, n);
}
static void wb_f32s(wbuf *b, const float *x, size_t count) {
#if VMC_HOST_LE
  wb_put(b, x, count * 4);
#else
  for (size_t i = 0; i < count; i++) wb_f32(b, x[i]);
#endif
}
static void wb_align(wbuf *b) { wb_zeros(b, vmc_align_up(b->n, VMC_FILE_ALIGN) - b->n); }

/* How a tensor's data is stored: raw, or entropy-coded with its own code
 * table, with the table it shares with the later tensors of its dtype, or
 * with that shared table (io.h). */
typedef enum { CODES_RAW = -1, CODES_OWN = VMC_CODED_OWN_TABLE,
               CODES_DEFINE = VMC_CODED_DEFINE_SHARED, CODES_SHARED = VMC_CODED_SHARED_TABLE } codes_kind;

typedef struct code_plan {
  codes_kind kind;
  uint64_t nbytes;     /* of the directory entry */
  uint64_t raw;        /* bytes stored raw; UINT64_MAX: no raw form (s32 codes) */
  uint64_t alt, use;   /* while planning: bytes raw or with its own table (the smaller),
                        * and with the shared table */
  vmc_huff_table own;  /* CODES_OWN */
} code_plan;

/* What a directory entry stores: f32 values (a parameter, scales, an extra),
 * the codes of a quantized parameter, or an f32 parameter as s32 codes. */
typedef enum { WE_F32, WE_CODES, WE_INTS } went_kind;

/* A directory entry to write, and where its data comes from. */
typedef struct went {
  tensor_ent e;       /* e.nbytes: as planned */
  went_kind kind;
  int slot;           /* SLOT_*: it may be entropy-coded; -1: stored raw */
  int param;          /* the parameter whose data (or scales) it holds; -1: an extra */
  const float *x;     /* WE_F32, WE_INTS: the values */
  size_t count;       /* elements */
  const vmc_param *p; /* WE_CODES: the quantized parameter; WE_INTS: the quantized
                       * tensor whose scales times t make its grid */
  float t;            /* WE_INTS */
  code_plan cp;
} went;

/* What check_for_write and the planning learn about the file to write. */
typedef struct write_plan {
  uint64_t data_bytes; /* the data region, padding included, nothing coded */
  int n_tensors;       /* directory entries: parameters, scale tensors, extras */
  size_t max_codes;    /* elements of the largest quantized parameter (0: none,
                        * a version 1 file) */
  size_t max_count;    /* elements of the largest tensor (scratch bytes) */
  uint32_t version;    /* to write */
  went *ents;          /* n_tensors */
  int *param_ent;      /* per parameter: its directory entry (the codes of a quantized one) */
  vmc_huff_table shared[N_SLOTS]; /* the shared tables (n 0: none) */
} write_plan;

static vmc_status too_many(const char *path) {
  return vmc_error(VMC_ERR_INVALID_ARG,
                   "cannot save '%s': more than %u metadata entries, tensors or nodes", path,
                   VMC_FILE_MAX_COUNT);
}

/* Checks that g and the extras can be written and read back. */
static vmc_status check_for_write(const vmc_graph *g, const vmc_blob *extra, int n_extra,
                                  const char *path, write_plan *plan) {
  if ((uint64_t)g->n_meta > VMC_FILE_MAX_COUNT || (uint64_t)g->n_nodes > VMC_FILE_MAX_COUNT ||
      (uint64_t)g->n_params + (uint64_t)n_extra > VMC_FILE_MAX_COUNT)
    return too_many(path);
  if (g->input < 0 || g->input >= g->n_values || strcmp(g->values[g->input].name, "input") ||
      g->in_shape.ndim != 4)
    return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': the graph has no image input 'input'",
                     path);
  if (g->output < 0 || g->output >= g->n_values)
    return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': the graph has no output", path);
  /* Never write a file the reader would reject: the graph must be valid. */
  vmc_shape *shapes = vmc_malloc_plain((size_t)g->n_values * sizeof *shapes);
  if (!shapes) return vmc_error(VMC_ERR_NOMEM, "saving '%s'", path);
  vmc_status s = vmc_graph_infer_shapes(g, 1, shapes);
  vmc_free(shapes);
  if (s) {
    char what[300];
    snprintf(what, sizeof what, "cannot save '%s'", path);
    return wrap_error(s, what);
  }
  for (int i = 0; i < g->n_meta; i++) {
    size_t kn = strlen(g->meta[i].key), vn = strlen(g->meta[i].value);
    if (kn < 1 || kn >= VMC_FILE_META_KEY_MAX || vn >= VMC_FILE_META_VALUE_MAX)
      return vmc_error(VMC_ERR_INVALID_ARG,
                       "cannot save '%s': metadata '%.64s' has a key of %zu or a value of %zu "
                       "bytes (limits 1..%u, 0..%u)",
                       path, g->meta[i].key, kn, vn, VMC_FILE_META_KEY_MAX - 1,
                       VMC_FILE_META_VALUE_MAX - 1);
  }
  uint64_t total = 0;
  uint64_t n_tensors = (uint64_t)g->n_params + (uint64_t)n_extra;
  for (int i = 0; i < g->n_params; i++) {
    const vmc_param *p = &g->params[i];
    if (!name_ok(p->name, VMC_NAME_MAX) || p->shape.ndim < 1 || p->shape.ndim > VMC_MAX_DIMS ||
        !p->data)
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': parameter %d is malformed", path,
                       i);
    const size_t count = vmc_shape_count(&p->shape);
    if (p->store != VMC_F32 && !is_quantized(p))
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': parameter '%s' is stored as %s "
                       "(f32, s8 or s4 expected)", path, p->name, vmc_dtype_name(p->store));
    total += vmc_align_up(vmc_dtype_bytes(file_dtype(p), count), VMC_FILE_ALIGN);
    if (count > plan->max_count) plan->max_count = count;
    if (is_quantized(p)) { /* its codes are checked by param_codes */
      total += vmc_align_up((size_t)p->n_qscale * 4, VMC_FILE_ALIGN);
      n_tensors++;
      if (count > plan->max_codes) plan->max_codes = count;
      if ((size_t)p->n_qscale > plan->max_count) plan->max_count = (size_t)p->n_qscale;
    }
  }
  if (n_tensors > VMC_FILE_MAX_COUNT) return too_many(path);
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    if (!name_ok(n->name, VMC_NAME_MAX) || !n->op || !name_ok(n->op->name, VMC_NAME_MAX) ||
        n->out < 0 || n->out >= g->n_values || strcmp(g->values[n->out].name, n->name))
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': node %d is malformed", path, i);
    for (int k = 0; k < n->n_attr; k++)
      if (!name_ok(n->attr[k].key, VMC_ATTR_KEY_MAX))
        return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': node '%s' has a bad attribute key",
                         path, n->name);
  }
  for (int i = 0; i < n_extra; i++) {
    const vmc_blob *e = &extra[i];
    if (!name_ok(e->name, VMC_NAME_MAX))
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': extra tensor %d has a bad name",
                       path, i);
    bool dup = vmc_graph_find_param(g, e->name) >= 0;
    for (int k = 0; k < i && !dup; k++) dup = !strcmp(extra[k].name, e->name);
    if (dup)
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': tensor name '%s' is used twice",
                       path, e->name);
    if (e->shape.ndim < 0 || e->shape.ndim > VMC_MAX_DIMS)
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': extra tensor '%s' has %d dimensions",
                       path, e->name, e->shape.ndim);
    size_t count = 1;
    for (int k = 0; k < e->shape.ndim; k++)
      if (e->shape.d[k] < 1 || !vmc_mul_size(count, (size_t)e->shape.d[k], &count) ||
          count > (VMC_FILE_MAX_BYTES >> 2))
        return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': extra tensor '%s' has a bad shape",
                         path, e->name);
    if (!e->data)
      return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': extra tensor '%s' has no data", path,
                       e->name);
    if (count > plan->max_count) plan->max_count = count;
    total += vmc_align_up(count * 4, VMC_FILE_ALIGN);
  }
  if (total > VMC_FILE_MAX_BYTES)
    return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': %llu bytes of tensors exceed the 4 GiB "
                     "limit of a .vmc file", path, (unsigned long long)total);
  plan->data_bytes = total;
  plan->n_tensors = (int)n_tensors;
  return VMC_OK;
}

/* ---- what each entry holds --------------------------------------------------- */

/* An f32 data tensor (role data, no link). */
static tensor_ent f32_entry(const char *name, const vmc_shape *shape, uint32_t flags) {
  tensor_ent e = {.dtype = VMC_F32, .role = VMC_TROLE_DATA, .flags = flags,
                  .link = VMC_FILE_LINK_NONE, .shape = *shape,
                  .nbytes = (uint64_t)vmc_shape_count(shape) * 4};
  snprintf(e.name, sizeof e.name, "%s", name);
  return e;
}

/* The grid step of element j of WE_INTS entry w: its tensor's scale times t. */
static float ints_step(const went *w, size_t j) {
  return w->p->qscale[w->p->n_qscale == 1 ? 0 : j] * w->t;
}

/* The symbols of w's coded stream into scratch[0..count) and their
 * histogram h: the codes (checked: param_codes), the top bytes of f32
 * values, the bit lengths of s32 codes; *extra: the bytes its coded form
 * holds besides the table mode, the table and the Huffman bits (f32: the
 * three low bytes of each value; s32: the factor t and the raw bits). */
static vmc_status entry_symbols(const went *w, const char *path, int8_t *scratch,
                                vmc_huff_hist *h, uint64_t *extra) {
  *extra = 0;
  if (w->kind == WE_CODES) {
    VMC_TRY(param_codes(w->p, scratch, path));
  } else if (w->kind == WE_F32) {
    for (size_t i = 0; i < w->count; i++) scratch[i] = f32_top(w->x[i]);
    *extra = 3 * (uint64_t)w->count;
  } else {
    uint64_t bits = 0;
    for (size_t j = 0; j < w->count; j++) {
      int32_t q = 0;
      (void)int_code(w->x[j], ints_step(w, j), &q); /* exact: ints_candidate */
      const int L = vmc_bit_length(vmc_zigzag(q));
      scratch[j] = (int8_t)L;
      bits += L > 1 ? (uint64_t)L - 1 : 0;
    }
    *extra = 4 + (bits + 7) / 8;
  }
  memset(h, 0, sizeof *h);
  vmc_huff_count(h, scratch, w->count);
  return VMC_OK;
}

/* A coded stream's bytes: the table mode, the table (0 bytes for the shared
 * one), the bits, the rest. */
static uint64_t coded_bytes(size_t table_bytes, uint64_t bits, uint64_t extra) {
  return 1 + table_bytes + (bits + 7) / 8 + extra;
}

/* The smaller of w stored raw and coded with its own table. */
static vmc_status own_or_raw(went *w, const char *path, int8_t *scratch, vmc_huff_hist *h) {
  uint64_t extra = 0;
  VMC_TRY(entry_symbols(w, path, scratch, h, &extra));
  code_plan *cp = &w->cp;
  vmc_huff_build(h, &cp->own);
  const uint64_t own =
      coded_bytes(vmc_huff_table_bytes(&cp->own), vmc_huff_bits(&cp->own, h), extra);
  cp->kind = own < cp->raw ? CODES_OWN : CODES_RAW;
  cp->nbytes = cp->alt = own < cp->raw ? own : cp->raw;
  return VMC_OK;
}

/* Whether f32 parameter `id` lies on the s32 grid of its layer: it is 1-D,
 * parameter k >= 1 of a node whose parameter 0 (an earlier one) is
 * quantized with one scale or one per element of it, and each element is
 * exactly (float)q * (scale * t) for an s32 q, t the "scale" attribute of
 * the node that produces the layer's input (found through single-input
 * nodes without parameters, such as flatten).  Then *w becomes that s32
 * entry when it is smaller than the f32 one.  user / user_at: the first
 * node using each parameter and the position; prod: the node producing
 * each value (-1: none). */
static vmc_status ints_candidate(const vmc_graph *g, int id, const int *user, const int *user_at,
                                 const int *prod, const write_plan *plan, const char *path,
                                 int8_t *scratch, went *w) {
  const vmc_param *p = &g->params[id];
  if (p->shape.ndim != 1 || user[id] < 0 || user_at[id] < 1) return VMC_OK;
  const vmc_node *n = &g->nodes[user[id]];
  const vmc_param *wq = &g->params[n->param[0]];
  if (n->param[0] >= id || !is_quantized(wq) || !wq->qscale ||
      (wq->n_qscale != 1 && wq->n_qscale != p->shape.d[0]) || n->n_in < 1)
    return VMC_OK;
  float t = 0;
  int v = n->in[0];
  for (int step = 0; step < 8 && v >= 0 && prod[v] >= 0; step++) {
    const vmc_node *m = &g->nodes[prod[v]];
    if (vmc_node_has_attr(m, "scale")) {
      t = vmc_node_attr_f(m, "scale", 0.0f);
      break;
    }
    if (m->n_in != 1 || m->n_param) break;
    v = m->in[0];
  }
  if (!scale_ok(t)) return VMC_OK;
  went iw = *w;
  iw.kind = WE_INTS;
  iw.p = wq;
  iw.t = t;
  for (size_t j = 0; j < iw.count; j++) {
    int32_t q;
    const float step = ints_step(&iw, j);
    if (!scale_ok(step) || !int_code(p->data[j], step, &q)) return VMC_OK;
  }
  iw.e.dtype = VMC_S32;
  iw.e.link = (uint32_t)plan->param_ent[n->param[0]];
  iw.slot = SLOT_INT;
  iw.cp.raw = UINT64_MAX;
  vmc_huff_hist h;
  VMC_TRY(own_or_raw(&iw, path, scratch, &h));
  VMC_TRY(own_or_raw(w, path, scratch, &h));
  if (iw.cp.nbytes < w->cp.nbytes) *w = iw;
  return VMC_OK;
}

/* The directory entries of the file (plan->ents, plan->param_ent):
 * parameters in graph order (a quantized one as its codes, then its scale
 * tensor), then the extras; which may be coded (version 3: codes;
 * version 4: all), and (version 4) the biases stored as s32 codes. */
static vmc_status plan_entries(const vmc_graph *g, const vmc_blob *extra, int n_extra,
                               const char *path, int8_t *scratch, write_plan *plan) {
  const bool v4 = plan->version >= 4;
  int *user = vmc_malloc_plain((size_t)(g->n_params + 1) * 2 * sizeof *user);
  int *prod = vmc_malloc_plain((size_t)(g->n_values + 1) * sizeof *prod);
  if (!user || !prod) {
    vmc_free(user);
    vmc_free(prod);
    return vmc_error(VMC_ERR_NOMEM, "saving '%s'", path);
  }
  int *user_at = user + g->n_params + 1;
  for (int i = 0; i < g->n_params; i++) user[i] = -1;
  for (int i = 0; i < g->n_values; i++) prod[i] = -1;
  for (int i = g->n_nodes - 1; i >= 0; i--) {
    const vmc_node *n = &g->nodes[i];
    if (n->out >= 0 && n->out < g->n_values) prod[n->out] = i;
    for (int k = 0; k < n->n_param; k++)
      if (n->param[k] >= 0 && n->param[k] < g->n_params) {
        user[n->param[k]] = i;
        user_at[n->param[k]] = k;
      }
  }
  vmc_status s = VMC_OK;
  int nt = 0;
  for (int i = 0; i < g->n_params && !s; i++) {
    const vmc_param *p = &g->params[i];
    went *w = &plan->ents[nt];
    memset(w, 0, sizeof *w);
    w->e = f32_entry(p->name, &p->shape, p->trainable ? VMC_TFLAG_TRAINABLE : 0);
    w->param = i;
    w->count = vmc_shape_count(&p->shape);
    w->kind = WE_F32;
    w->x = p->data;
    w->slot = v4 ? SLOT_F32 : -1;
    w->cp.raw = w->e.nbytes;
    plan->param_ent[i] = nt;
    if (is_quantized(p)) {
      w->kind = WE_CODES;
      w->p = p;
      w->x = NULL;
      w->e.dtype = p->store;
      w->e.nbytes = w->cp.raw = vmc_dtype_bytes(p->store, w->count);
      w->slot = plan->version >= 3 ? slot_of(p->store) : -1;
      /* its scales: same name, linked to it, along axis 0 */
      went *sw = &plan->ents[++nt];
      memset(sw, 0, sizeof *sw);
      const vmc_shape qs = {1, {p->n_qscale}};
      sw->e = f32_entry(p->name, &qs, 0);
      sw->e.role = VMC_TROLE_SCALE;
      sw->e.link = (uint32_t)nt - 1;
      sw->kind = WE_F32;
      sw->param = i;
      sw->x = p->qscale;
      sw->count = (size_t)p->n_qscale;
      sw->slot = v4 ? SLOT_F32 : -1;
      sw->cp.raw = sw->e.nbytes;
    } else if (v4) {
      s = ints_candidate(g, i, user, user_at, prod, plan, path, scratch, w);
    }
    nt++;
  }
  for (int i = 0; i < n_extra && !s; i++, nt++) {
    went *w = &plan->ents[nt];
    memset(w, 0, sizeof *w);
    w->e = f32_entry(extra[i].name, &extra[i].shape, VMC_TFLAG_EXTRA);
    w->kind = WE_F32;
    w->param = -1;
    w->x = extra[i].data;
    w->count = vmc_shape_count(&extra[i].shape);
    w->slot = v4 ? SLOT_F32 : -1;
    w->cp.raw = w->e.nbytes;
  }
  vmc_free(user);
  vmc_free(prod);
  return s;
}

/* Chooses how each entry that may be coded is stored, the smallest way:
 * raw; with its own code table; or with a table shared by the entries of
 * its dtype, built from the symbols of those that their own tables make
 * smaller than raw, and used by the ones it makes smaller than both other
 * ways if together they save more than the table's bytes -- the first of
 * them (in directory order) carries it, so it is one that the table plus
 * its stream still keep smaller than raw.  Coded data are always fewer
 * bytes than raw.  scratch: max_count bytes. */
static vmc_status plan_codes(write_plan *plan, const char *path, int8_t *scratch) {
  vmc_huff_hist all[N_SLOTS], h;
  memset(all, 0, sizeof all);
  for (int i = 0; i < plan->n_tensors; i++) {
    went *w = &plan->ents[i];
    if (w->slot < 0) continue;
    VMC_TRY(own_or_raw(w, path, scratch, &h));
    if (w->cp.kind == CODES_RAW) continue;
    vmc_huff_hist *a = &all[w->slot];
    for (int k = 0; k < 256; k++) a->n[k] += h.n[k];
  }
  for (int slot = 0; slot < N_SLOTS; slot++) {
    vmc_huff_table *sh = &plan->shared[slot];
    vmc_huff_build(&all[slot], sh); /* n 0 when no entry of this dtype codes smaller */
    if (!sh->n) continue;
    const uint64_t tb = vmc_huff_table_bytes(sh);
    int first = -1;
    int64_t gain = -(int64_t)tb;
    for (int i = 0; i < plan->n_tensors; i++) {
      went *w = &plan->ents[i];
      if (w->slot != slot) continue;
      code_plan *cp = &w->cp;
      uint64_t extra = 0;
      VMC_TRY(entry_symbols(w, path, scratch, &h, &extra));
      const uint64_t bits = vmc_huff_bits(sh, &h); /* UINT64_MAX: a symbol it lacks */
      cp->use = bits == UINT64_MAX ? UINT64_MAX : coded_bytes(0, bits, extra);
      if (first < 0 && cp->use < cp->alt && cp->use + tb < cp->raw) first = i;
      if (first >= 0 && cp->use < cp->alt) gain += (int64_t)(cp->alt - cp->use);
    }
    if (first < 0 || gain <= 0) continue;
    for (int i = first; i < plan->n_tensors; i++) {
      code_plan *cp = &plan->ents[i].cp;
      if (plan->ents[i].slot != slot || cp->use >= cp->alt) continue;
      cp->kind = i == first ? CODES_DEFINE : CODES_SHARED;
      cp->nbytes = cp->use + (i == first ? tb : 0);
    }
  }
  for (int i = 0; i < plan->n_tensors; i++) {
    went *w = &plan->ents[i];
    if (w->slot < 0) continue;
    w->e.nbytes = w->cp.nbytes;
    if (w->cp.kind != CODES_RAW) w->e.flags |= VMC_TFLAG_CODED;
  }
  return VMC_OK;
}

static bool plan_coded(const write_plan *plan) {
  for (int i = 0; i < plan->n_tensors; i++)
    if (plan->ents[i].e.flags & VMC_TFLAG_CODED) return true;
  return false;
}

/* ---- the data of an entry ------------------------------------------------------ */

/* The table mode, the table unless shared, the Huffman bits of the count
 * symbols in scratch (b has room: wb_entry_data reserved the entry's
 * bytes). */
static void wb_stream(wbuf *b, const code_plan *cp, const vmc_huff_table *shared,
                      const int8_t *scratch, size_t count) {
  if (b->oom) return;
  const vmc_huff_table *t = cp->kind == CODES_OWN ? &cp->own : shared;
  const size_t tb = cp->kind == CODES_SHARED ? 0 : vmc_huff_table_bytes(t);
  uint8_t *q = b->p + b->n;
  size_t k = 0;
  q[k++] = (uint8_t)cp->kind;
  if (cp->kind != CODES_SHARED) {
    vmc_huff_write_table(t, q + k);
    k += tb;
  }
  k += vmc_huff_encode(t, scratch, count, q + k);
  b->n += k;
}

/* Entry w's data as planned: raw (f32, s8, packed s4), or coded (the
 * stream, then for f32 the three low bytes of each value, for s32 the
 * factor before and the raw bits after).  scratch: max_count bytes. */
static void wb_entry_data(wbuf *b, const went *w, const write_plan *plan, int8_t *scratch) {
  const size_t start = b->n, count = w->count;
  const code_plan *cp = &w->cp;
  const vmc_huff_table *shared = w->slot >= 0 ? &plan->shared[w->slot] : NULL;
  const bool coded = w->slot >= 0 && cp->kind != CODES_RAW;
  vmc_huff_hist h;
  uint64_t extra = 0;
  if (coded) (void)entry_symbols(w, "", scratch, &h, &extra); /* checked by plan_codes */
  wb_need(b, (size_t)w->e.nbytes);
  if (w->kind == WE_F32 && !coded) {
    wb_f32s(b, w->x, count);
  } else if (w->kind == WE_F32) {
    wb_stream(b, cp, shared, scratch, count);
    wb_need(b, 3 * count);
    if (!b->oom) {
      uint8_t *q = b->p + b->n;
      for (size_t i = 0; i < count; i++) {
        const uint32_t u = f32_bits(w->x[i]);
        q[3 * i] = (uint8_t)u;
        q[3 * i + 1] = (uint8_t)(u >> 8);
        q[3 * i + 2] = (uint8_t)(u >> 16);
      }
      b->n += 3 * count;
    }
  } else if (w->kind == WE_CODES && coded) {
    wb_stream(b, cp, shared, scratch, count);
  } else if (w->kind == WE_CODES) {
    (void)param_codes(w->p, scratch, ""); /* checked by plan_codes */
    if (w->p->store == VMC_S8) {
      wb_put(b, scratch, count);
    } else {
      const size_t nb = vmc_dtype_bytes(VMC_S4, count);
      wb_need(b, nb);
      if (!b->oom) {
        vmc_s4_pack(scratch, count, b->p + b->n);
        b->n += nb;
      }
    }
  } else { /* WE_INTS: t, the stream of bit lengths, the raw bits */
    wb_f32(b, w->t);
    wb_stream(b, cp, shared, scratch, count);
    const size_t at = b->n, raw = (size_t)extra - 4;
    wb_zeros(b, raw);
    if (!b->oom) {
      vmc_bit_writer bw = {b->p + at, 0};
      for (size_t j = 0; j < count; j++) {
        int32_t q = 0;
        (void)int_code(w->x[j], ints_step(w, j), &q);
        const uint32_t u = vmc_zigzag(q);
        const int L = vmc_bit_length(u);
        if (L > 1) vmc_bits_put(&bw, u, L - 1); /* the bits below the leading 1 */
      }
    }
  }
  assert(b->oom || b->n - start == w->e.nbytes); /* what the directory says */
  (void)start;
}

/* ---- serialising ---------------------------------------------------------------- */

/* The header, then the CRC of everything before it. */
static void wb_finish(wbuf *b, const vmc_graph *g, const write_plan *plan, size_t meta_off,
                      size_t strings_off, size_t tensors_off, size_t graph_off, size_t data_off) {
  if (b->oom) return;
  uint8_t *h = b->p;
  memcpy(h + VMC_FH_MAGIC, VMC_FILE_MAGIC, 8);
  st_u32(h + VMC_FH_VERSION, plan->version);
  st_u32(h + VMC_FH_HEADER_BYTES, VMC_FILE_HEADER_BYTES);
  st_u64(h + VMC_FH_FILE_BYTES, (uint64_t)b->n + 4);
  st_u32(h + VMC_FH_N_META, (uint32_t)g->n_meta);
  st_u32(h + VMC_FH_N_TENSORS, (uint32_t)plan->n_tensors);
  st_u32(h + VMC_FH_N_NODES, (uint32_t)g->n_nodes);
  st_u32(h + VMC_FH_FLAGS, 0);
  st_u64(h + VMC_FH_META_OFF, meta_off);
  st_u64(h + VMC_FH_TENSORS_OFF, tensors_off);
  st_u64(h + VMC_FH_GRAPH_OFF, graph_off);
  st_u64(h + VMC_FH_DATA_OFF, data_off);
  if (plan->version >= 4) st_u64(h + VMC_FH_STRINGS_OFF, strings_off);
  wb_u32(b, vmc_crc32(0, b->p, b->n));
}

/* One fixed-width directory entry (versions 1..3; e->off is ignored);
 * returns the buffer position of its offset field, patched once the data
 * is laid out. */
static size_t wb_tensor_entry(wbuf *b, const tensor_ent *e) {
  wb_str(b, e->name, false);
  wb_u32(b, e->dtype);
  wb_u32(b, e->role);
  wb_u32(b, e->flags);
  wb_u32(b, e->link);
  wb_u32(b, e->axis);
  wb_u32(b, (uint32_t)e->shape.ndim);
  for (int k = 0; k < e->shape.ndim; k++) wb_u32(b, (uint32_t)e->shape.d[k]);
  size_t at = b->n;
  wb_u64(b, 0);
  wb_u64(b, e->nbytes);
  return at;
}

/* Room for the header (wb_finish fills it in), then the metadata section,
 * strings with u32 lengths or (compact, version 4) varint ones; its offset. */
static size_t wb_begin(wbuf *b, const vmc_graph *g, const write_plan *plan, bool compact) {
  wb_need(b, (size_t)plan->data_bytes + 65536);
  wb_zeros(b, VMC_FILE_HEADER_BYTES);
  const size_t meta_off = b->n;
  for (int i = 0; i < g->n_meta; i++) {
    wb_str(b, g->meta[i].key, compact);
    wb_str(b, g->meta[i].value, compact);
  }
  return meta_off;
}

/* Serialises a version 1..3 file into b: fixed-width fields, names as
 * strings, each tensor's data at a 64-byte aligned offset.  entry_at:
 * n_tensors scratch entries. */
static void serialise_fixed(const vmc_graph *g, const write_plan *plan, int8_t *scratch,
                            wbuf *b, size_t *entry_at) {
  const size_t meta_off = wb_begin(b, g, plan, false);
  /* tensor directory: parameters in graph order, then extras */
  const size_t tensors_off = b->n;
  for (int i = 0; i < plan->n_tensors; i++) entry_at[i] = wb_tensor_entry(b, &plan->ents[i].e);
  /* graph */
  const size_t graph_off = b->n;
  for (int k = 1; k < 4; k++) wb_u32(b, (uint32_t)g->in_shape.d[k]);
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    wb_str(b, n->op->name, false);
    wb_str(b, n->name, false);
    wb_u32(b, (uint32_t)n->n_in);
    for (int k = 0; k < n->n_in; k++) wb_str(b, g->values[n->in[k]].name, false);
    wb_u32(b, (uint32_t)n->n_attr);
    for (int k = 0; k < n->n_attr; k++) {
      wb_str(b, n->attr[k].key, false);
      wb_u32(b, (uint32_t)n->attr[k].i);
      wb_f32(b, n->attr[k].f);
    }
    wb_u32(b, (uint32_t)n->n_param);
    for (int k = 0; k < n->n_param; k++) wb_str(b, g->params[n->param[k]].name, false);
  }
  wb_str(b, g->values[g->output].name, false);
  /* data region */
  wb_align(b);
  const size_t data_off = b->n;
  for (int i = 0; i < plan->n_tensors; i++) {
    wb_align(b);
    if (!b->oom) st_u64(b->p + entry_at[i], b->n);
    wb_entry_data(b, &plan->ents[i], plan, scratch);
  }
  wb_finish(b, g, plan, meta_off, 0, tensors_off, graph_off, data_off);
}

/* The version 4 string table: every name the file uses (tensors, nodes,
 * ops, attribute keys), sorted bytewise, each once. */
typedef struct strtab {
  const char **s;
  int n;
} strtab;

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static vmc_status strtab_build(const vmc_graph *g, const vmc_blob *extra, int n_extra,
                               const char *path, strtab *t) {
  const size_t cap = (size_t)g->n_params + (size_t)n_extra +
                     (size_t)g->n_nodes * (2 + VMC_MAX_ATTRS) + 1;
  t->s = vmc_malloc_plain(cap * sizeof *t->s);
  if (!t->s) return vmc_error(VMC_ERR_NOMEM, "saving '%s'", path);
  size_t n = 0;
  for (int i = 0; i < g->n_params; i++) t->s[n++] = g->params[i].name;
  for (int i = 0; i < n_extra; i++) t->s[n++] = extra[i].name;
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *nd = &g->nodes[i];
    t->s[n++] = nd->op->name;
    t->s[n++] = nd->name;
    for (int k = 0; k < nd->n_attr; k++) t->s[n++] = nd->attr[k].key;
  }
  qsort(t->s, n, sizeof *t->s, cmp_str);
  size_t u = 0;
  for (size_t i = 0; i < n; i++)
    if (!u || strcmp(t->s[u - 1], t->s[i])) t->s[u++] = t->s[i];
  t->n = (int)u;
  return VMC_OK;
}

static uint32_t strtab_index(const strtab *t, const char *s) {
  const char **at = bsearch(&s, t->s, (size_t)t->n, sizeof *t->s, cmp_str);
  assert(at); /* every name is in the table */
  return at ? (uint32_t)(at - t->s) : 0;
}

/* The form of an attribute in a version 4 file (io.h). */
static int attr_form(int32_t i, float f) {
  if (f32_bits((float)i) == f32_bits(f)) return VMC_ATTR_FORM_INT;
  if (f >= -2147483648.0f && f < 2147483648.0f && i == (int32_t)f) return VMC_ATTR_FORM_FLOAT;
  return VMC_ATTR_FORM_BOTH;
}

/* Value indices of a version 4 file: 0 the input, k the output of node
 * k - 1.  Every node's inputs must be the input or an earlier node's
 * output, as the reader requires. */
static vmc_status value_indices(const vmc_graph *g, const char *path, int *vi) {
  for (int v = 0; v < g->n_values; v++) vi[v] = -1;
  vi[g->input] = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    for (int k = 0; k < n->n_in; k++)
      if (n->in[k] < 0 || n->in[k] >= g->n_values || vi[n->in[k]] < 0)
        return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': input %d of node '%s' is "
                         "neither 'input' nor an earlier node", path, k, n->name);
    vi[n->out] = i + 1;
  }
  if (vi[g->output] < 0)
    return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': the output is no node's", path);
  return VMC_OK;
}

/* Serialises a version 4 file into b: varints, names as indices into the
 * string table st, values as value indices vi, the data back to back. */
static void serialise_compact(const vmc_graph *g, const write_plan *plan, const strtab *st,
                              const int *vi, int8_t *scratch, wbuf *b) {
  const size_t meta_off = wb_begin(b, g, plan, true);
  /* string table: each string as the bytes it shares with the one before,
   * and the rest */
  const size_t strings_off = b->n;
  wb_uv(b, (uint32_t)st->n);
  const char *prev = "";
  for (int i = 0; i < st->n; i++) {
    const char *s = st->s[i];
    size_t p = 0;
    while (prev[p] && prev[p] == s[p]) p++;
    const size_t k = strlen(s) - p;
    wb_uv(b, (uint32_t)p);
    wb_uv(b, (uint32_t)k);
    wb_put(b, s + p, k);
    prev = s;
  }
  /* tensor directory */
  const size_t tensors_off = b->n;
  for (int i = 0; i < plan->n_tensors; i++) {
    const tensor_ent *e = &plan->ents[i].e;
    wb_uv(b, strtab_index(st, e->name));
    wb_u8(b, (uint8_t)e->dtype);
    wb_u8(b, (uint8_t)e->role);
    wb_u8(b, (uint8_t)e->flags);
    wb_uv(b, e->link == VMC_FILE_LINK_NONE ? 0 : (uint32_t)i - e->link);
    wb_uv(b, e->axis);
    wb_u8(b, (uint8_t)e->shape.ndim);
    for (int k = 0; k < e->shape.ndim; k++) wb_uv(b, (uint32_t)e->shape.d[k]);
    wb_uv(b, (uint32_t)e->nbytes);
  }
  /* graph */
  const size_t graph_off = b->n;
  for (int k = 1; k < 4; k++) wb_uv(b, (uint32_t)g->in_shape.d[k]);
  for (int i = 0; i < g->n_nodes; i++) {
    const vmc_node *n = &g->nodes[i];
    wb_uv(b, strtab_index(st, n->op->name));
    wb_uv(b, strtab_index(st, n->name));
    wb_uv(b, (uint32_t)n->n_in);
    for (int k = 0; k < n->n_in; k++) wb_uv(b, (uint32_t)vi[n->in[k]]);
    wb_uv(b, (uint32_t)n->n_attr);
    for (int k = 0; k < n->n_attr; k++) {
      const vmc_attr *a = &n->attr[k];
      const int form = attr_form(a->i, a->f);
      wb_uv(b, strtab_index(st, a->key));
      wb_u8(b, (uint8_t)form);
      if (form != VMC_ATTR_FORM_FLOAT) wb_uv(b, vmc_zigzag(a->i));
      if (form != VMC_ATTR_FORM_INT) wb_f32(b, a->f);
    }
    wb_uv(b, (uint32_t)n->n_param);
    for (int k = 0; k < n->n_param; k++) wb_uv(b, (uint32_t)plan->param_ent[n->param[k]]);
  }
  wb_uv(b, (uint32_t)vi[g->output]);
  /* data region: each entry's data right after the previous one's */
  const size_t data_off = b->n;
  for (int i = 0; i < plan->n_tensors; i++) wb_entry_data(b, &plan->ents[i], plan, scratch);
  wb_finish(b, g, plan, meta_off, strings_off, tensors_off, graph_off, data_off);
}

/* Best effort: make the rename itself durable. */
static void fsync_parent_dir(char *path_copy) {
  char *slash = strrchr(path_copy, '/');
  const char *dir = ".";
  if (slash == path_copy) {
    dir = "/";
  } else if (slash) {
    *slash = 0;
    dir = path_copy;
  }
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)fsync(fd);
    close(fd);
  }
}

/* Writes p[0..n) to path through "<path>.tmp.<pid>" + fsync + rename. */
static vmc_status write_atomic(const char *path, const uint8_t *p, size_t n) {
  size_t cap = strlen(path) + 32;
  char *tmp = vmc_malloc_plain(cap);
  if (!tmp) return vmc_error(VMC_ERR_NOMEM, "saving '%s'", path);
  snprintf(tmp, cap, "%s.tmp.%ld", path, (long)getpid());
  vmc_status s = VMC_OK;
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    s = vmc_error(VMC_ERR_IO, "cannot save '%s': cannot create '%s': %s", path, tmp,
                  strerror(errno));
    vmc_free(tmp);
    return s;
  }
  int err = 0;
  if (fwrite(p, 1, n, f) != n || fflush(f) != 0 || fsync(fileno(f)) != 0) err = errno ? errno : EIO;
  if (fclose(f) != 0 && !err) err = errno ? errno : EIO;
  if (err) {
    s = vmc_error(VMC_ERR_IO, "cannot save '%s': writing '%s' failed: %s", path, tmp,
                  strerror(err));
  } else if (rename(tmp, path) != 0) {
    s = vmc_error(VMC_ERR_IO, "cannot save '%s': renaming '%s' over it failed: %s", path, tmp,
                  strerror(errno));
  }
  if (s) {
    remove(tmp);
  } else {
    snprintf(tmp, cap, "%s", path);
    fsync_parent_dir(tmp);
  }
  vmc_free(tmp);
  return s;
}

/* The plan's arrays, for plan->n_tensors entries and g's parameters. */
static vmc_status plan_alloc(const vmc_graph *g, const char *path, write_plan *plan,
                             int8_t **scratch) {
  plan->ents = vmc_malloc_plain((size_t)(plan->n_tensors ? plan->n_tensors : 1) *
                                sizeof *plan->ents);
  plan->param_ent = vmc_malloc_plain((size_t)(g->n_params ? g->n_params : 1) *
                                     sizeof *plan->param_ent);
  *scratch = vmc_malloc_plain(plan->max_count ? plan->max_count : 1);
  if (!plan->ents || !plan->param_ent || !*scratch)
    return vmc_error(VMC_ERR_NOMEM, "saving '%s'", path);
  return VMC_OK;
}

static void plan_free(write_plan *plan, int8_t *scratch) {
  vmc_free(plan->ents);
  vmc_free(plan->param_ent);
  vmc_free(scratch);
}

vmc_status vmc_model_write_version(const vmc_graph *g, const vmc_blob *extra, int n_extra,
                                   uint32_t max_version, const char *path) {
  if (!g || !path || !*path || n_extra < 0 || (n_extra > 0 && !extra) ||
      max_version < VMC_FILE_VERSION_F32 || max_version > VMC_FILE_VERSION)
    return vmc_error(VMC_ERR_INVALID_ARG, "vmc_model_write: bad arguments");
  write_plan plan = {0};
  VMC_TRY(check_for_write(g, extra, n_extra, path, &plan));
  if (plan.max_codes && max_version < VMC_FILE_VERSION_RAW_CODES)
    return vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s' as format version %u: it has "
                     "quantized weights, which need version %u or later", path, max_version,
                     VMC_FILE_VERSION_RAW_CODES);
  plan.version = plan.max_codes ? max_version : VMC_FILE_VERSION_F32;
  int8_t *scratch = NULL;
  size_t *entry_at = NULL;
  int *vi = NULL;
  strtab st = {0};
  wbuf b = {0};
  vmc_status s = plan_alloc(g, path, &plan, &scratch);
  if (!s) s = plan_entries(g, extra, n_extra, path, scratch, &plan);
  if (!s) s = plan_codes(&plan, path, scratch);
  if (!s && plan.version == VMC_FILE_VERSION_CODED && !plan_coded(&plan))
    plan.version = VMC_FILE_VERSION_RAW_CODES; /* nothing codes smaller */
  if (!s && plan.version >= 4) {
    vi = vmc_malloc_plain((size_t)g->n_values * sizeof *vi);
    s = vi ? value_indices(g, path, vi) : vmc_error(VMC_ERR_NOMEM, "saving '%s'", path);
    if (!s) s = strtab_build(g, extra, n_extra, path, &st);
    if (!s) serialise_compact(g, &plan, &st, vi, scratch, &b);
  } else if (!s) {
    entry_at = vmc_malloc_plain((size_t)plan.n_tensors * sizeof *entry_at);
    if (!entry_at) s = vmc_error(VMC_ERR_NOMEM, "saving '%s'", path);
    else serialise_fixed(g, &plan, scratch, &b, entry_at);
  }
  plan_free(&plan, scratch);
  vmc_free(entry_at);
  vmc_free(vi);
  vmc_free(st.s);
  if (!s && b.oom)
    s = vmc_error(VMC_ERR_NOMEM, "saving '%s': no memory to serialise the model", path);
  else if (!s && (uint64_t)b.n > VMC_FILE_MAX_BYTES)
    s = vmc_error(VMC_ERR_INVALID_ARG, "cannot save '%s': %zu bytes exceed the 4 GiB limit", path,
                  b.n);
  else if (!s)
    s = write_atomic(path, b.p, b.n);
  vmc_free(b.p);
  return s;
}

vmc_status vmc_model_write(const vmc_graph *g, const vmc_blob *extra, int n_extra,
                           const char *path) {
  return vmc_model_write_version(g, extra, n_extra, VMC_FILE_VERSION, path);
}

vmc_status vmc_model_save(const vmc_graph *g, const char *path) {
  return vmc_model_write(g, NULL, 0, path);
}

vmc_status vmc_model_param_bytes(const vmc_graph *g, uint64_t *bytes, bool *coded) {
  if (!g || !bytes) return vmc_error(VMC_ERR_INVALID_ARG, "vmc_model_param_bytes: bad arguments");
  write_plan plan = {.version = VMC_FILE_VERSION_F32, .n_tensors = g->n_params};
  for (int i = 0; i < g->n_params; i++) {
    const vmc_param *p = &g->params[i];
    const size_t count = vmc_shape_count(&p->shape);
    if (count > plan.max_count) plan.max_count = count;
    if (!is_quantized(p)) continue;
    if (!p->data || !p->qscale)
      return vmc_error(VMC_ERR_INVALID_ARG, "parameter '%s' is stored as %s without its data "
                       "or scales", p->name, vmc_dtype_name(p->store));
    plan.version = VMC_FILE_VERSION;
    plan.n_tensors++;
    if ((size_t)p->n_qscale > plan.max_count) plan.max_count = (size_t)p->n_qscale;
  }
  int8_t *scratch = NULL;
  vmc_status s = plan_alloc(g, "the model", &plan, &scratch);
  if (!s) s = plan_entries(g, NULL, 0, "the model", scratch, &plan);
  if (!s) s = plan_codes(&plan, "the model", scratch);
  for (int i = 0; i < g->n_params && !s; i++) {
    bytes[i] = 0;
    if (coded) coded[i] = false;
  }
  for (int i = 0; i < plan.n_tensors && !s; i++) {
    const went *w = &plan.ents[i];
    bytes[w->param] += w->e.nbytes;
    if (coded && w->e.role == VMC_TROLE_DATA && (w->e.flags & VMC_TFLAG_CODED))
      coded[w->param] = true;
  }
  plan_free(&plan, scratch);
  return s;
}

/* ======================================================================== */
/* Reading                                                                  */
/* ======================================================================== */

typedef struct header {
  uint64_t file_bytes, meta_off, strings_off, tensors_off, graph_off, data_off;
  uint32_t version, n_meta, n_tensors, n_nodes;
} header;

/* A bounds-checked cursor over one section [pos, end) of the file. */
typedef struct cursor {
  const uint8_t *p;
  size_t pos, end;
  const char *what;    /* the file, for messages */
  const char *section; /* "metadata", "tensor directory", "graph" */
  bool compact;        /* version 4: lengths and counts are varints */
  char ctx[160];       /* the item being read, e.g. "node 3 ('conv1')" */
} cursor;

static vmc_status cur_fail(const cursor *c, vmc_status s, const char *fmt, ...) VMC_PRINTF(3, 4);
static vmc_status cur_fail(const cursor *c, vmc_status s, const char *fmt, ...) {
  char msg[320];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (c->ctx[0]) return vmc_error(s, "%s: %s: %s", c->what, c->ctx, msg);
  return vmc_error(s, "%s: %s section: %s", c->what, c->section, msg);
}

static vmc_status cur_take(cursor *c, size_t k, const char *field, const uint8_t **out) {
  if (k > c->end - c->pos)
    return cur_fail(c, VMC_ERR_FORMAT, "%s runs past the end of the %s section (byte %zu)", field,
                    c->section, c->end);
  *out = c->p + c->pos;
  c->pos += k;
  return VMC_OK;
}
static vmc_status cur_u8(cursor *c, const char *field, uint32_t *v) {
  const uint8_t *q = NULL;
  VMC_TRY(cur_take(c, 1, field, &q));
  *v = q[0];
  return VMC_OK;
}
static vmc_status cur_u32(cursor *c, const char *field, uint32_t *v) {
  const uint8_t *q = NULL;
  VMC_TRY(cur_take(c, 4, field, &q));
  *v = ld_u32(q);
  return VMC_OK;
}
static vmc_status cur_u64(cursor *c, const char *field, uint64_t *v) {
  const uint8_t *q = NULL;
  VMC_TRY(cur_take(c, 8, field, &q));
  *v = ld_u64(q);
  return VMC_OK;
}
/* An unsigned LEB128 varint of at most 32 bits, in its shortest form. */
static vmc_status cur_uv(cursor *c, const char *field, uint32_t *v) {
  uint32_t x = 0;
  for (int k = 0;; k++) {
    const uint8_t *q = NULL;
    VMC_TRY(cur_take(c, 1, field, &q));
    if (k == VMC_FILE_VARINT_MAX_BYTES - 1 && *q > 15)
      return cur_fail(c, VMC_ERR_FORMAT, "%s is a varint of more than 32 bits", field);
    x |= (uint32_t)(*q & 127) << (7 * k);
    if (!(*q & 128)) {
      if (k && !*q)
        return cur_fail(c, VMC_ERR_FORMAT, "%s is a varint with a needless last byte 0", field);
      *v = x;
      return VMC_OK;
    }
  }
}
/* A length or count: u32 (versions 1..3) or a varint (4). */
static vmc_status cur_len(cursor *c, const char *field, uint32_t *v) {
  return c->compact ? cur_uv(c, field, v) : cur_u32(c, field, v);
}
/* A length-prefixed string of min_len..max_len bytes without NUL. */
static vmc_status cur_str(cursor *c, const char *field, size_t min_len, size_t max_len,
                          const uint8_t **s, size_t *len) {
  uint32_t n;
  VMC_TRY(cur_len(c, field, &n));
  if (n < min_len || n > max_len)
    return cur_fail(c, VMC_ERR_FORMAT, "%s has length %u, expected %zu..%zu", field, n, min_len,
                    max_len);
  VMC_TRY(cur_take(c, n, field, s));
  if (memchr(*s, 0, n)) return cur_fail(c, VMC_ERR_FORMAT, "%s contains a NUL byte", field);
  *len = n;
  return VMC_OK;
}
/* A name into dst[cap] (1..cap-1 bytes, NUL-terminated). */
static vmc_status cur_name(cursor *c, const char *field, char *dst, size_t cap) {
  const uint8_t *s = NULL;
  size_t n = 0;
  VMC_TRY(cur_str(c, field, 1, cap - 1, &s, &n));
  memcpy(dst, s, n);
  dst[n] = 0;
  return VMC_OK;
}
static vmc_status cur_done(const cursor *c) {
  if (c->pos != c->end)
    return vmc_error(VMC_ERR_FORMAT, "%s: %zu unexpected bytes at the end of the %s section",
                     c->what, c->end - c->pos, c->section);
  return VMC_OK;
}

static cursor cur_make(const uint8_t *p, uint64_t from, uint64_t to, const char *what,
                       const char *section, bool compact) {
  cursor c = {.p = p, .pos = (size_t)from, .end = (size_t)to, .what = what, .section = section,
              .compact = compact};
  return c;
}

/* Magic, version, size, CRC and the header fields. */
static vmc_status check_envelope(const uint8_t *p, size_t n, const char *what, header *h) {
  if (n == 0) return vmc_error(VMC_ERR_FORMAT, "%s: empty file, not a .vmc model", what);
  if ((uint64_t)n > VMC_FILE_MAX_BYTES)
    return vmc_error(VMC_ERR_FORMAT, "%s: %zu bytes exceed the 4 GiB limit of a .vmc file", what,
                     n);
  if (memcmp(p, VMC_FILE_MAGIC, n < 8 ? n : 8))
    return vmc_error(VMC_ERR_FORMAT, "%s: not a .vmc file (bad magic)", what);
  if (n < VMC_FH_VERSION + 4)
    return vmc_error(VMC_ERR_FORMAT, "%s: truncated: only %zu bytes", what, n);
  uint32_t version = ld_u32(p + VMC_FH_VERSION);
  if (version < VMC_FILE_VERSION_F32 || version > VMC_FILE_VERSION)
    return vmc_error(VMC_ERR_VERSION,
                     "%s: .vmc format version %u is not supported (this build reads versions "
                     "%u..%u%s)",
                     what, version, VMC_FILE_VERSION_F32, VMC_FILE_VERSION,
                     version > VMC_FILE_VERSION ? "; the file is from a newer vmc" : "");
  h->version = version;
  if (n < VMC_FILE_HEADER_BYTES + 4)
    return vmc_error(VMC_ERR_FORMAT, "%s: truncated: only %zu bytes, shorter than the header",
                     what, n);
  h->file_bytes = ld_u64(p + VMC_FH_FILE_BYTES);
  if (h->file_bytes > n)
    return vmc_error(VMC_ERR_FORMAT, "%s: truncated: %zu bytes of the %llu the header declares",
                     what, n, (unsigned long long)h->file_bytes);
  if (h->file_bytes < n)
    return vmc_error(VMC_ERR_FORMAT, "%s: %zu bytes, but the header declares %llu", what, n,
                     (unsigned long long)h->file_bytes);
  uint32_t stored = ld_u32(p + n - 4), computed = vmc_crc32(0, p, n - 4);
  if (stored != computed)
    return vmc_error(VMC_ERR_FORMAT,
                     "%s: checksum mismatch: the file is corrupted (stored CRC-32 %08x, "
                     "computed %08x)",
                     what, stored, computed);
  /* The bytes are what was written; now check that what was written makes
   * sense. */
  const bool v4 = version >= 4;
  if (ld_u32(p + VMC_FH_HEADER_BYTES) != VMC_FILE_HEADER_BYTES)
    return vmc_error(VMC_ERR_FORMAT, "%s: header size %u, expected %d", what,
                     ld_u32(p + VMC_FH_HEADER_BYTES), VMC_FILE_HEADER_BYTES);
  if (ld_u32(p + VMC_FH_FLAGS) != 0)
    return vmc_error(VMC_ERR_FORMAT, "%s: unknown header flags 0x%x", what,
                     ld_u32(p + VMC_FH_FLAGS));
  for (int i = v4 ? VMC_FH_RESERVED_V4 : VMC_FH_RESERVED; i < VMC_FILE_HEADER_BYTES; i++)
    if (p[i]) return vmc_error(VMC_ERR_FORMAT, "%s: reserved header byte %d is not zero", what, i);
  h->n_meta = ld_u32(p + VMC_FH_N_META);
  h->n_tensors = ld_u32(p + VMC_FH_N_TENSORS);
  h->n_nodes = ld_u32(p + VMC_FH_N_NODES);
  if (h->n_meta > VMC_FILE_MAX_COUNT || h->n_tensors > VMC_FILE_MAX_COUNT ||
      h->n_nodes > VMC_FILE_MAX_COUNT)
    return vmc_error(VMC_ERR_FORMAT,
                     "%s: %u metadata entries, %u tensors, %u nodes: more than the limit of %u",
                     what, h->n_meta, h->n_tensors, h->n_nodes, VMC_FILE_MAX_COUNT);
  h->meta_off = ld_u64(p + VMC_FH_META_OFF);
  h->tensors_off = ld_u64(p + VMC_FH_TENSORS_OFF);
  h->graph_off = ld_u64(p + VMC_FH_GRAPH_OFF);
  h->data_off = ld_u64(p + VMC_FH_DATA_OFF);
  /* Before version 4 there is no string table: an empty one at tensors_off. */
  h->strings_off = v4 ? ld_u64(p + VMC_FH_STRINGS_OFF) : h->tensors_off;
  if (h->meta_off != VMC_FILE_HEADER_BYTES || h->strings_off < h->meta_off ||
      h->tensors_off < h->strings_off || h->graph_off < h->tensors_off ||
      h->data_off < h->graph_off || h->data_off > h->file_bytes - 4 ||
      (!v4 && h->data_off % VMC_FILE_ALIGN))
    return vmc_error(VMC_ERR_FORMAT,
                     "%s: bad section offsets (metadata %llu, strings %llu, tensors %llu, graph "
                     "%llu, data %llu in %llu bytes)",
                     what, (unsigned long long)h->meta_off, (unsigned long long)h->strings_off,
                     (unsigned long long)h->tensors_off, (unsigned long long)h->graph_off,
                     (unsigned long long)h->data_off, (unsigned long long)h->file_bytes);
  return VMC_OK;
}

typedef struct reader {
  const uint8_t *p;
  const char *what;
  header h;
  bool v4;
  vmc_graph *g;
  tensor_ent *ents;
  int *ent_param; /* the parameter of each data entry (-1: a companion or an extra) */
  vmc_blob *blobs; /* NULL when the caller does not want extras */
  int n_blobs;
  /* Version 4: the string table, and which strings a name used. */
  char (*strs)[VMC_NAME_MAX];
  uint8_t *str_used;
  uint32_t n_strs;
  /* Entropy-coded data (versions 3, 4): a tensor's own table, and the
   * shared table of each dtype with the tensor that defined it (-1: none
   * yet). */
  vmc_huff_decoder own, shared[N_SLOTS];
  int shared_by[N_SLOTS];
} reader;

static vmc_status read_meta(reader *r) {
  cursor c = cur_make(r->p, r->h.meta_off, r->h.strings_off, r->what, "metadata", r->v4);
  const size_t min = r->v4 ? MIN_META_BYTES_V4 : MIN_META_BYTES;
  if (r->h.n_meta > (c.end - c.pos) / min)
    return cur_fail(&c, VMC_ERR_FORMAT, "%u entries do not fit in %zu bytes", r->h.n_meta,
                    c.end - c.pos);
  for (uint32_t i = 0; i < r->h.n_meta; i++) {
    snprintf(c.ctx, sizeof c.ctx, "metadata entry %u", i);
    char key[VMC_FILE_META_KEY_MAX];
    VMC_TRY(cur_name(&c, "the key", key, sizeof key));
    snprintf(c.ctx, sizeof c.ctx, "metadata '%.64s'", key);
    const uint8_t *v = NULL;
    size_t vn = 0;
    VMC_TRY(cur_str(&c, "the value", 0, VMC_FILE_META_VALUE_MAX - 1, &v, &vn));
    if (vmc_graph_meta(r->g, key)) return cur_fail(&c, VMC_ERR_FORMAT, "the key appears twice");
    char *value = vmc_malloc_plain(vn + 1);
    if (!value) return cur_fail(&c, VMC_ERR_NOMEM, "no memory for a %zu-byte value", vn);
    memcpy(value, v, vn);
    vmc_status s = vmc_graph_set_meta(r->g, key, value);
    vmc_free(value);
    if (s) return file_error(s, r->what);
  }
  return cur_done(&c);
}

/* The version 4 string table: strictly ascending (bytewise), each string
 * the bytes it shares with the one before (all they share) and the rest. */
static vmc_status read_strings(reader *r) {
  cursor c = cur_make(r->p, r->h.strings_off, r->h.tensors_off, r->what, "string table", true);
  uint32_t n = 0;
  VMC_TRY(cur_uv(&c, "the number of strings", &n));
  /* Every string is a name some entry or node uses. */
  const uint64_t most = (uint64_t)r->h.n_tensors + (uint64_t)r->h.n_nodes * (2 + VMC_MAX_ATTRS);
  if (n > (c.end - c.pos) / MIN_STRING_BYTES_V4 || n > most)
    return cur_fail(&c, VMC_ERR_FORMAT, "%u strings do not fit in %zu bytes, or are more than "
                    "the %llu names of %u tensors and %u nodes", n, c.end - c.pos,
                    (unsigned long long)most, r->h.n_tensors, r->h.n_nodes);
  r->strs = vmc_malloc_plain((size_t)(n ? n : 1) * sizeof *r->strs);
  r->str_used = vmc_malloc_plain(n ? n : 1);
  if (!r->strs || !r->str_used)
    return vmc_error(VMC_ERR_NOMEM, "%s: a string table of %u strings", r->what, n);
  r->n_strs = n;
  size_t prev_len = 0;
  for (uint32_t i = 0; i < n; i++) {
    snprintf(c.ctx, sizeof c.ctx, "string %u", i);
    uint32_t p = 0, k = 0;
    const uint8_t *s = NULL;
    VMC_TRY(cur_uv(&c, "the shared prefix", &p));
    VMC_TRY(cur_uv(&c, "the length of the rest", &k));
    if (p > prev_len || k < 1 || (uint64_t)p + k > VMC_NAME_MAX - 1)
      return cur_fail(&c, VMC_ERR_FORMAT, "%u bytes of the previous string (of %zu) and %u more: "
                      "expected 1..%d bytes in all, at least one new", p, prev_len, k,
                      VMC_NAME_MAX - 1);
    VMC_TRY(cur_take(&c, k, "the string", &s));
    if (memchr(s, 0, k)) return cur_fail(&c, VMC_ERR_FORMAT, "contains a NUL byte");
    char *dst = r->strs[i];
    /* Sorted after the previous string, sharing all it shares with it. */
    if (i && p < prev_len && s[0] <= (uint8_t)r->strs[i - 1][p])
      return cur_fail(&c, VMC_ERR_FORMAT, "does not sort after the previous string '%s' with "
                      "%u shared bytes", r->strs[i - 1], p);
    if (i) memcpy(dst, r->strs[i - 1], p);
    memcpy(dst + p, s, k);
    dst[p + k] = 0;
    prev_len = p + k;
  }
  c.ctx[0] = 0;
  return cur_done(&c);
}

/* A name as a string index (version 4) into dst[cap]. */
static vmc_status cur_strref(reader *r, cursor *c, const char *field, char *dst, size_t cap) {
  uint32_t i = 0;
  VMC_TRY(cur_uv(c, field, &i));
  if (i >= r->n_strs)
    return cur_fail(c, VMC_ERR_FORMAT, "%s is string %u of a table of %u", field, i, r->n_strs);
  const size_t n = strlen(r->strs[i]);
  if (n >= cap)
    return cur_fail(c, VMC_ERR_FORMAT, "%s '%s' has %zu bytes, at most %zu", field, r->strs[i], n,
                    cap - 1);
  memcpy(dst, r->strs[i], n + 1);
  r->str_used[i] = 1;
  return VMC_OK;
}

/* A version 1..3 directory entry: fixed-width fields, its data offset. */
static vmc_status read_entry_fixed(reader *r, cursor *c, uint32_t i, tensor_ent *e) {
  (void)r;
  snprintf(c->ctx, sizeof c->ctx, "tensor %u", i);
  VMC_TRY(cur_name(c, "the name", e->name, sizeof e->name));
  snprintf(c->ctx, sizeof c->ctx, "tensor %u ('%s')", i, e->name);
  uint32_t ndim = 0;
  VMC_TRY(cur_u32(c, "the dtype", &e->dtype));
  VMC_TRY(cur_u32(c, "the role", &e->role));
  VMC_TRY(cur_u32(c, "the flags", &e->flags));
  VMC_TRY(cur_u32(c, "the link", &e->link));
  VMC_TRY(cur_u32(c, "the axis", &e->axis));
  VMC_TRY(cur_u32(c, "the number of dimensions", &ndim));
  e->shape.ndim = ndim > VMC_MAX_DIMS ? -1 : (int)ndim;
  return VMC_OK;
}

/* A version 4 directory entry up to its dimensions: a string index, u8
 * dtype, role and flags, the link as a varint back-reference (0: none),
 * the axis. */
static vmc_status read_entry_compact(reader *r, cursor *c, uint32_t i, tensor_ent *e) {
  snprintf(c->ctx, sizeof c->ctx, "tensor %u", i);
  VMC_TRY(cur_strref(r, c, "the name", e->name, sizeof e->name));
  snprintf(c->ctx, sizeof c->ctx, "tensor %u ('%s')", i, e->name);
  uint32_t back = 0, ndim = 0;
  VMC_TRY(cur_u8(c, "the dtype", &e->dtype));
  VMC_TRY(cur_u8(c, "the role", &e->role));
  VMC_TRY(cur_u8(c, "the flags", &e->flags));
  VMC_TRY(cur_uv(c, "the link", &back));
  VMC_TRY(cur_uv(c, "the axis", &e->axis));
  VMC_TRY(cur_u8(c, "the number of dimensions", &ndim));
  if (back > i)
    return cur_fail(c, VMC_ERR_FORMAT, "its link reaches %u entries back, before the first", back);
  e->link = back ? i - back : VMC_FILE_LINK_NONE;
  e->shape.ndim = ndim > VMC_MAX_DIMS ? -1 : (int)ndim;
  return VMC_OK;
}

/* Directory entry i: its fields (either layout), checked; its data placed
 * (versions 1..3: at its offset, aligned, after the previous one's; 4: at
 * *data_end, where the previous one's ended). */
static vmc_status read_tensor_entry(reader *r, cursor *c, uint32_t i, tensor_ent *e,
                                    uint64_t *data_end) {
  VMC_TRY(r->v4 ? read_entry_compact(r, c, i, e) : read_entry_fixed(r, c, i, e));
  if (e->dtype >= VMC_DTYPE_COUNT)
    return cur_fail(c, VMC_ERR_FORMAT, "unknown dtype %u", e->dtype);
  if (e->role >= VMC_TROLE_COUNT) return cur_fail(c, VMC_ERR_FORMAT, "unknown role %u", e->role);
  if (e->flags & ~(uint32_t)VMC_TFLAG_KNOWN)
    return cur_fail(c, VMC_ERR_FORMAT, "unknown flags 0x%x", e->flags);
  const bool extra = e->flags & VMC_TFLAG_EXTRA, coded = e->flags & VMC_TFLAG_CODED;
  const bool codes = e->role == VMC_TROLE_DATA && !extra &&
                     (e->dtype == VMC_S8 || e->dtype == VMC_S4);
  const bool ints = r->v4 && e->dtype == VMC_S32 && e->role == VMC_TROLE_DATA;
  if (coded && r->h.version < 3)
    return cur_fail(c, VMC_ERR_FORMAT, "flag CODED (entropy-coded codes) needs format version "
                    "3; the file says version %u", r->h.version);
  if (coded && !codes && !(r->v4 && (e->dtype == VMC_F32 || ints)))
    return cur_fail(c, VMC_ERR_FORMAT, "flag CODED on a %s tensor of role %u%s; only the s8 and "
                    "s4 codes of a parameter are entropy-coded%s",
                    vmc_dtype_name((vmc_dtype)e->dtype), e->role, extra ? ", extra" : "",
                    r->v4 ? ", and f32 and s32 tensors" : "");
  if (extra && (e->flags & VMC_TFLAG_TRAINABLE))
    return cur_fail(c, VMC_ERR_FORMAT, "an extra tensor cannot be trainable");
  /* Data tensors have no link, but a version 4 s32 one, which names an
   * earlier tensor; companions name another one. */
  if (e->role == VMC_TROLE_DATA ? ((ints ? e->link >= i : e->link != VMC_FILE_LINK_NONE) ||
                                   e->axis != 0)
                                : (e->link >= r->h.n_tensors || e->link == i))
    return cur_fail(c, VMC_ERR_FORMAT, "bad link %u / axis %u for its role", e->link, e->axis);
  if (e->shape.ndim < 0 || (e->shape.ndim == 0 && !extra))
    return cur_fail(c, VMC_ERR_FORMAT, "%s dimensions, expected %d..%d",
                    e->shape.ndim < 0 ? "too many" : "0", extra ? 0 : 1, VMC_MAX_DIMS);
  size_t count = 1;
  for (int k = 0; k < e->shape.ndim; k++) {
    uint32_t d = 0;
    VMC_TRY(r->v4 ? cur_uv(c, "a dimension", &d) : cur_u32(c, "a dimension", &d));
    if (d < 1 || d > INT32_MAX)
      return cur_fail(c, VMC_ERR_FORMAT, "dimension %d is %u, expected 1..%d", k, d, INT32_MAX);
    e->shape.d[k] = (int)d;
    if (!vmc_mul_size(count, d, &count) || count > 2 * VMC_FILE_MAX_BYTES)
      return cur_fail(c, VMC_ERR_FORMAT, "too many elements for a .vmc file");
  }
  if (r->v4) {
    uint32_t nb = 0;
    VMC_TRY(cur_uv(c, "the data length", &nb));
    e->off = *data_end;
    e->nbytes = nb;
  } else {
    VMC_TRY(cur_u64(c, "the data offset", &e->off));
    VMC_TRY(cur_u64(c, "the data length", &e->nbytes));
  }
  const size_t want = vmc_dtype_bytes((vmc_dtype)e->dtype, count);
  if (coded) {
    /* At least one bit per symbol, and fewer bytes than raw (s32 codes have
     * no raw form): the memory a coded tensor asks for is bounded by its
     * bytes. */
    if ((!ints && e->nbytes >= want) || e->nbytes > (uint64_t)SIZE_MAX / 8 ||
        count > e->nbytes * 8)
      return cur_fail(c, VMC_ERR_FORMAT, "holds %llu entropy-coded bytes for %zu %s values; "
                      "expected %zu .. %zu (at least one bit per code, fewer bytes than raw)",
                      (unsigned long long)e->nbytes, count, vmc_dtype_name((vmc_dtype)e->dtype),
                      (count + 7) / 8, ints ? (size_t)UINT32_MAX : want - 1);
  } else if (e->nbytes != want) {
    char sh[64];
    return cur_fail(c, VMC_ERR_FORMAT, "holds %llu bytes, but %s of shape %s needs %zu",
                    (unsigned long long)e->nbytes, vmc_dtype_name((vmc_dtype)e->dtype),
                    vmc_shape_str(&e->shape, sh, sizeof sh), want);
  }
  const uint64_t region_end = r->h.file_bytes - 4;
  if (!r->v4 && e->off % VMC_FILE_ALIGN)
    return cur_fail(c, VMC_ERR_FORMAT, "data offset %llu is not %u-byte aligned",
                    (unsigned long long)e->off, VMC_FILE_ALIGN);
  if (e->off < r->h.data_off || e->off > region_end || e->nbytes > region_end - e->off)
    return cur_fail(c, VMC_ERR_FORMAT, "data [%llu, +%llu) lies outside the data region [%llu, %llu)",
                    (unsigned long long)e->off, (unsigned long long)e->nbytes,
                    (unsigned long long)r->h.data_off, (unsigned long long)region_end);
  if (e->off < *data_end)
    return cur_fail(c, VMC_ERR_FORMAT,
                    "data at %llu overlaps the previous tensor's (tensors are stored in "
                    "directory order)",
                    (unsigned long long)e->off);
  *data_end = e->off + e->nbytes;
  return VMC_OK;
}

/* qsort has no context argument: the entries being sorted, per thread. */
static _Thread_local const tensor_ent *t_sort_ents;
static int cmp_ent_name(const void *a, const void *b) {
  return strcmp(t_sort_ents[*(const uint32_t *)a].name, t_sort_ents[*(const uint32_t *)b].name);
}

static void load_f32(float *dst, const uint8_t *src, size_t count) {
#if VMC_HOST_LE
  memcpy(dst, src, count * 4);
#else
  for (size_t i = 0; i < count; i++) dst[i] = bits_f32(ld_u32(src + 4 * i));
#endif
}

/* The directory's dtypes and roles: f32 data tensors; (version 2) s8 / s4
 * data tensors each followed directly by its scale tensor; (version 4) s32
 * data tensors linked to an s8 / s4 one with one scale or one per element
 * (io.h). */
static vmc_status check_companions(const reader *r) {
  const char *w = r->what;
  for (uint32_t i = 0; i < r->h.n_tensors; i++)
    if (r->ents[i].role == VMC_TROLE_ZERO_POINT)
      return vmc_error(VMC_ERR_UNSUPPORTED, "%s: tensor %u ('%s') is a zero point; this build "
                       "reads symmetric quantized weights only", w, i, r->ents[i].name);
  for (uint32_t i = 0; i < r->h.n_tensors; i++) {
    const tensor_ent *e = &r->ents[i];
    const char *dt = vmc_dtype_name((vmc_dtype)e->dtype);
    if (e->role == VMC_TROLE_DATA) {
      if (e->dtype == VMC_F32) continue;
      if (e->dtype == VMC_S32 && r->v4) {
        const tensor_ent *q = &r->ents[e->link]; /* an earlier entry: read_tensor_entry */
        if (!(e->flags & VMC_TFLAG_CODED) || (e->flags & VMC_TFLAG_EXTRA) || e->shape.ndim != 1)
          return vmc_error(VMC_ERR_FORMAT, "%s: s32 tensor '%s' is %s; s32 tensors are 1-D "
                           "coded parameters", w, e->name,
                           e->shape.ndim != 1 ? "not 1-D"
                           : e->flags & VMC_TFLAG_EXTRA ? "extra" : "not coded");
        if (q->role != VMC_TROLE_DATA || (q->dtype != VMC_S8 && q->dtype != VMC_S4) ||
            (q->flags & VMC_TFLAG_EXTRA))
          return vmc_error(VMC_ERR_FORMAT, "%s: s32 tensor '%s' links to tensor %u ('%s'), not "
                           "the codes of an s8 or s4 parameter", w, e->name, e->link, q->name);
        const int nq = r->ents[e->link + 1].shape.d[0]; /* its scales (checked before i) */
        if (nq != 1 && nq != e->shape.d[0])
          return vmc_error(VMC_ERR_FORMAT, "%s: s32 tensor '%s' of %d elements uses the %d "
                           "scales of '%s'; expected 1 or %d", w, e->name, e->shape.d[0], nq,
                           q->name, e->shape.d[0]);
        continue;
      }
      if (e->dtype != VMC_S8 && e->dtype != VMC_S4)
        return vmc_error(VMC_ERR_UNSUPPORTED, "%s: tensor '%s' is %s; this build loads f32, s8 "
                         "and s4 tensors%s only", w, e->name, dt,
                         r->v4 ? " (and s32 biases)" : "");
      if (r->h.version < 2)
        return vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s' is %s, which needs format version 2 "
                         "(the file says version %u)", w, e->name, dt, r->h.version);
      if (e->flags & VMC_TFLAG_EXTRA)
        return vmc_error(VMC_ERR_FORMAT, "%s: extra tensor '%s' is %s; extra tensors are f32", w,
                         e->name, dt);
      if (i + 1 >= r->h.n_tensors || r->ents[i + 1].role != VMC_TROLE_SCALE)
        return vmc_error(VMC_ERR_FORMAT, "%s: %s tensor '%s' is not followed by its scale tensor",
                         w, dt, e->name);
      continue;
    }
    const tensor_ent *d = i ? &r->ents[i - 1] : NULL; /* a scale qualifies the tensor before it */
    if (!d || e->link != i - 1 || d->role != VMC_TROLE_DATA ||
        (d->dtype != VMC_S8 && d->dtype != VMC_S4))
      return vmc_error(VMC_ERR_FORMAT, "%s: scale tensor %u ('%s', link %u) does not directly "
                       "follow the s8 or s4 tensor it qualifies", w, i, e->name, e->link);
    const uint32_t flags_ok = r->v4 ? VMC_TFLAG_CODED : 0; /* version 4: may be coded */
    if (strcmp(e->name, d->name) || e->dtype != VMC_F32 || (e->flags & ~flags_ok) || e->axis ||
        e->shape.ndim != 1 || (e->shape.d[0] != 1 && e->shape.d[0] != d->shape.d[0])) {
      char sh[64];
      return vmc_error(VMC_ERR_FORMAT, "%s: the scale tensor of '%s' is '%s', %s %s, flags %u, "
                       "axis %u; expected '%s', f32 [1] or [%d], flags 0%s, axis 0", w, d->name,
                       e->name, dt, vmc_shape_str(&e->shape, sh, sizeof sh), e->flags, e->axis,
                       d->name, d->shape.d[0], r->v4 ? " or 4 (coded)" : "");
    }
  }
  return VMC_OK;
}

/* Prefixes a coded tensor's fault with the file, the tensor and its dtype. */
static vmc_status coded_error(const reader *r, const tensor_ent *e, vmc_status s) {
  char what[VMC_NAME_MAX + 600];
  snprintf(what, sizeof what, "%s: tensor '%s' (entropy-coded %s)", r->what, e->name,
           slot_info[slot_of(e->dtype)].what);
  return wrap_error(s, what);
}

/* The start of coded tensor e's stream src[0..nb) (nb >= 1): the table
 * mode and the table; *d: the decoder of its symbols, *used: the bytes. */
static vmc_status stream_table(reader *r, const tensor_ent *e, uint32_t index, const uint8_t *src,
                               size_t nb, const vmc_huff_decoder **d, size_t *used) {
  const int slot = slot_of(e->dtype), mode = src[0];
  const char *dt = slot_info[slot].what;
  *d = &r->shared[slot];
  *used = 1;
  if (mode == VMC_CODED_OWN_TABLE || mode == VMC_CODED_DEFINE_SHARED) {
    if (mode == VMC_CODED_DEFINE_SHARED && r->shared_by[slot] >= 0)
      return vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s' defines the shared %s code table, which "
                       "tensor '%s' defined already", r->what, e->name, dt,
                       r->ents[r->shared_by[slot]].name);
    vmc_huff_table t;
    size_t tb = 0;
    vmc_status s = vmc_huff_read_table(src + 1, nb - 1, slot_info[slot].min, slot_info[slot].max,
                                       &t, &tb);
    if (s) return coded_error(r, e, s);
    *used += tb;
    if (mode == VMC_CODED_DEFINE_SHARED) {
      r->shared_by[slot] = (int)index;
      vmc_huff_decoder_init(&r->shared[slot], &t);
    } else {
      vmc_huff_decoder_init(&r->own, &t);
      *d = &r->own;
    }
  } else if (mode == VMC_CODED_SHARED_TABLE) {
    if (r->shared_by[slot] < 0)
      return vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s' uses the shared %s code table, but no "
                       "earlier tensor defines one", r->what, e->name, dt);
  } else {
    return vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s': unknown code table mode %d (0 its own, "
                     "1 its own and shared, 2 the shared one)", r->what, e->name, mode);
  }
  return VMC_OK;
}

/* Entropy-coded tensor e's codes into codes[] (its element count): the
 * table mode, the table, the bits (io.h, io/entropy.h). */
static vmc_status decode_codes(reader *r, const tensor_ent *e, uint32_t index, int8_t *codes) {
  const uint8_t *src = r->p + e->off;
  const size_t nb = (size_t)e->nbytes, n = vmc_shape_count(&e->shape);
  const vmc_huff_decoder *d = NULL;
  size_t used = 0;
  VMC_TRY(stream_table(r, e, index, src, nb, &d, &used));
  vmc_status s = vmc_huff_decode(d, src + used, nb - used, n, codes);
  return s ? coded_error(r, e, s) : VMC_OK;
}

/* The f32 values of tensor e (directory entry index) into dst[] (its
 * element count): raw, or coded (version 4: the stream of the top bytes,
 * then the three low bytes of each value). */
static vmc_status read_f32(reader *r, const tensor_ent *e, uint32_t index, float *dst) {
  const uint8_t *src = r->p + e->off;
  const size_t n = vmc_shape_count(&e->shape), nb = (size_t)e->nbytes;
  if (!(e->flags & VMC_TFLAG_CODED)) {
    load_f32(dst, src, n);
    return VMC_OK;
  }
  int8_t *top = vmc_malloc_plain(n);
  if (!top) return vmc_error(VMC_ERR_NOMEM, "%s: tensor '%s'", r->what, e->name);
  const vmc_huff_decoder *d = NULL;
  size_t used = 0, hb = 0;
  vmc_status s = stream_table(r, e, index, src, nb, &d, &used);
  if (!s) {
    s = vmc_huff_decode_prefix(d, src + used, nb - used, n, top, &hb);
    if (s) s = coded_error(r, e, s);
  }
  used += hb;
  if (!s && nb - used != 3 * n)
    s = vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s' (entropy-coded f32): %zu bytes follow the "
                  "top bytes of its %zu values, expected %zu (three each)", r->what, e->name,
                  nb - used, n, 3 * n);
  for (size_t i = 0; i < n && !s; i++) {
    const uint8_t *lo = src + used + 3 * i;
    dst[i] = bits_f32((uint32_t)(uint8_t)top[i] << 24 | (uint32_t)lo[2] << 16 |
                      (uint32_t)lo[1] << 8 | lo[0]);
  }
  vmc_free(top);
  return s;
}

/* Parameter id from s8 / s4 tensor e (directory entry index) and its scale
 * tensor sc: data = code * scale, and the storage recorded so a re-save
 * keeps it. */
static vmc_status load_quantized(reader *r, int id, uint32_t index, const tensor_ent *e,
                                 const tensor_ent *sc) {
  const size_t n = vmc_shape_count(&e->shape), nq = (size_t)sc->shape.d[0], blk = n / nq;
  const int qmax = qmax_of(e->dtype);
  const uint8_t *src = r->p + e->off;
  float *dst = r->g->params[id].data, *scale = vmc_malloc_plain(nq * sizeof *scale);
  int8_t *codes = vmc_malloc_plain(n);
  if (!scale || !codes) {
    vmc_free(scale);
    vmc_free(codes);
    return vmc_error(VMC_ERR_NOMEM, "%s: codes and scales of tensor '%s'", r->what, e->name);
  }
  vmc_status s = read_f32(r, sc, index + 1, scale);
  for (size_t c = 0; c < nq && !s; c++)
    if (!scale_ok(scale[c]))
      s = vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s': scale %zu is %g, expected a positive "
                    "finite normal number", r->what, e->name, c, (double)scale[c]);
  if (!s && (e->flags & VMC_TFLAG_CODED)) {
    s = decode_codes(r, e, index, codes);
  } else if (!s && e->dtype == VMC_S8) {
    memcpy(codes, src, n);
  } else if (!s) {
    for (size_t i = 0; i < n; i++) codes[i] = vmc_s4_get(src, i);
    if ((n & 1) && (src[n / 2] >> 4))
      s = vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s': the unused high nibble of its last byte "
                    "is not zero", r->what, e->name);
  }
  for (size_t c = 0, i = 0; c < nq && !s; c++) /* block c: elements c*blk .. (c+1)*blk - 1 */
    for (const size_t end = i + blk; i < end; i++) {
      const int code = codes[i];
      const float v = (float)code * scale[c];
      if (code < -qmax || code > qmax || !isfinite(v)) {
        s = code < -qmax || code > qmax
                ? vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s': element %zu has code %d, outside "
                            "-%d..%d", r->what, e->name, i, code, qmax, qmax)
                : vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s': element %zu, code %d times scale "
                            "%g, overflows", r->what, e->name, i, code, (double)scale[c]);
        break;
      }
      dst[i] = v;
    }
  vmc_free(codes);
  if (s) {
    vmc_free(scale);
    return s;
  }
  /* The storage, without vmc_param_set_quantized's check of every element:
   * each value is an in-range code times a normal scale, computed in f32
   * without overflow, so it divides back to exactly its code (the error of
   * the two roundings is below 127 * 2^-23, far from 1/2) and a re-save
   * writes the same codes. */
  vmc_param *p = &r->g->params[id];
  p->qscale = scale;
  p->n_qscale = (int)nq;
  p->store = (vmc_dtype)e->dtype;
  return VMC_OK;
}

/* f32 parameter id from s32 tensor e (version 4): the factor t, the stream
 * of the codes' bit lengths, their raw bits; element j is (float)q *
 * (scale * t) with the scales of the tensor e links to, and q the code the
 * writer gives it (the one nearest value / step). */
static vmc_status load_ints(reader *r, int id, uint32_t index, const tensor_ent *e) {
  const vmc_param *w = &r->g->params[r->ent_param[e->link]]; /* loaded: an earlier entry */
  const size_t n = vmc_shape_count(&e->shape), nb = (size_t)e->nbytes;
  const uint8_t *src = r->p + e->off;
  float *dst = r->g->params[id].data;
  if (nb < 5)
    return vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s' (s32): %zu bytes, fewer than its factor "
                     "and table mode", r->what, e->name, nb);
  const float t = bits_f32(ld_u32(src));
  if (!scale_ok(t))
    return vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s' (s32): its factor is %g, expected a "
                     "positive finite normal number", r->what, e->name, (double)t);
  int8_t *len = vmc_malloc_plain(n);
  if (!len) return vmc_error(VMC_ERR_NOMEM, "%s: tensor '%s'", r->what, e->name);
  const vmc_huff_decoder *d = NULL;
  size_t used = 0, hb = 0;
  vmc_status s = stream_table(r, e, index, src + 4, nb - 4, &d, &used);
  if (!s) {
    s = vmc_huff_decode_prefix(d, src + 4 + used, nb - 4 - used, n, len, &hb);
    if (s) s = coded_error(r, e, s);
  }
  used += 4 + hb;
  uint64_t bits = 0;
  for (size_t j = 0; j < n && !s; j++) bits += len[j] > 1 ? (uint64_t)len[j] - 1 : 0;
  if (!s && (uint64_t)(nb - used) != (bits + 7) / 8)
    s = vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s' (s32): %zu bytes follow the bit lengths of "
                  "its codes, which need %llu bits", r->what, e->name, nb - used,
                  (unsigned long long)bits);
  vmc_bit_reader br = {src, 0, 0};
  if (!s) br = (vmc_bit_reader){src + used, 0, 8 * (uint64_t)(nb - used)};
  for (size_t j = 0; j < n && !s; j++) {
    uint32_t u = len[j] ? 1 : 0, low = 0;
    if (len[j] > 1) {
      (void)vmc_bits_get(&br, len[j] - 1, &low); /* inside: counted above */
      u = 1u << (len[j] - 1) | low;
    }
    const int32_t q = vmc_unzigzag(u);
    const float step = w->qscale[w->n_qscale == 1 ? 0 : j] * t, v = (float)q * step;
    int32_t back = 0;
    if (!scale_ok(step))
      s = vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s' (s32): element %zu: scale times factor is "
                    "%g, not a usable step", r->what, e->name, j, (double)step);
    else if (!isfinite(v))
      s = vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s' (s32): element %zu, code %d times %g, "
                    "overflows", r->what, e->name, j, (int)q, (double)step);
    else if (!int_code(v, step, &back) || back != q)
      s = vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s' (s32): element %zu has code %d, not the "
                    "nearest to its value (%d)", r->what, e->name, j, (int)q, (int)back);
    else
      dst[j] = v;
  }
  uint32_t pad = 0;
  if (!s && (vmc_bits_get(&br, (int)(br.end - br.at), &pad), pad))
    s = vmc_error(VMC_ERR_FORMAT, "%s: tensor '%s' (s32): the padding bits after its last code "
                  "are not zero", r->what, e->name);
  vmc_free(len);
  return s;
}

static vmc_status read_tensors(reader *r, bool want_extras) {
  cursor c = cur_make(r->p, r->h.tensors_off, r->h.graph_off, r->what, "tensor directory",
                      r->v4);
  uint32_t nt = r->h.n_tensors;
  if (nt > (c.end - c.pos) / (r->v4 ? MIN_TENSOR_BYTES_V4 : MIN_TENSOR_BYTES))
    return cur_fail(&c, VMC_ERR_FORMAT, "%u tensors do not fit in %zu bytes", nt, c.end - c.pos);
  r->ents = vmc_malloc_plain((size_t)(nt ? nt : 1) * sizeof *r->ents);
  r->ent_param = vmc_malloc_plain((size_t)(nt ? nt : 1) * sizeof *r->ent_param);
  if (!r->ents || !r->ent_param)
    return vmc_error(VMC_ERR_NOMEM, "%s: tensor directory of %u entries", r->what, nt);
  uint64_t data_end = r->v4 ? r->h.data_off : 0;
  uint32_t n_extra = 0;
  for (uint32_t i = 0; i < nt; i++) {
    VMC_TRY(read_tensor_entry(r, &c, i, &r->ents[i], &data_end));
    n_extra += (r->ents[i].flags & VMC_TFLAG_EXTRA) != 0;
    r->ent_param[i] = -1;
  }
  c.ctx[0] = 0;
  VMC_TRY(cur_done(&c));
  if (r->v4 && data_end != r->h.file_bytes - 4)
    return vmc_error(VMC_ERR_FORMAT, "%s: the tensors' data end at byte %llu, the data region "
                     "at %llu", r->what, (unsigned long long)data_end,
                     (unsigned long long)(r->h.file_bytes - 4));
  /* Data tensors' names are unique (a scale tensor bears its data's). */
  uint32_t *idx = vmc_malloc_plain((size_t)(nt ? nt : 1) * sizeof *idx);
  if (!idx) return vmc_error(VMC_ERR_NOMEM, "%s: tensor directory", r->what);
  uint32_t nd = 0;
  for (uint32_t i = 0; i < nt; i++)
    if (r->ents[i].role == VMC_TROLE_DATA) idx[nd++] = i;
  t_sort_ents = r->ents;
  qsort(idx, nd, sizeof *idx, cmp_ent_name);
  t_sort_ents = NULL;
  const char *dup = NULL;
  for (uint32_t i = 1; i < nd && !dup; i++)
    if (!strcmp(r->ents[idx[i]].name, r->ents[idx[i - 1]].name)) dup = r->ents[idx[i]].name;
  vmc_free(idx);
  if (dup) return vmc_error(VMC_ERR_FORMAT, "%s: two tensors are named '%s'", r->what, dup);
  VMC_TRY(check_companions(r));
  if (want_extras && n_extra) {
    r->blobs = vmc_malloc_plain((size_t)n_extra * sizeof *r->blobs);
    if (!r->blobs) return vmc_error(VMC_ERR_NOMEM, "%s: %u extra tensors", r->what, n_extra);
  }
  for (uint32_t i = 0; i < nt; i++) {
    const tensor_ent *e = &r->ents[i];
    if (e->role != VMC_TROLE_DATA) continue; /* scales: read with their data */
    size_t count = vmc_shape_count(&e->shape);
    if (e->flags & VMC_TFLAG_EXTRA) {
      float *scratch = NULL, *dst;
      if (r->blobs) {
        vmc_blob *b = &r->blobs[r->n_blobs];
        memcpy(b->name, e->name, sizeof b->name);
        b->shape = e->shape;
        b->data = vmc_alloc(count * 4);
        if (!b->data) return vmc_error(VMC_ERR_NOMEM, "%s: tensor '%s'", r->what, e->name);
        r->n_blobs++;
        dst = b->data;
      } else if (e->flags & VMC_TFLAG_CODED) { /* checked though not returned */
        dst = scratch = vmc_malloc_plain(count * 4);
        if (!dst) return vmc_error(VMC_ERR_NOMEM, "%s: tensor '%s'", r->what, e->name);
      } else {
        continue;
      }
      vmc_status s = read_f32(r, e, i, dst);
      vmc_free(scratch);
      if (s) return s;
      continue;
    }
    int id = 0;
    vmc_status s = vmc_graph_add_param(r->g, e->name, e->shape,
                                       (e->flags & VMC_TFLAG_TRAINABLE) != 0, &id);
    if (s) return file_error(s, r->what);
    r->ent_param[i] = id;
    if (e->dtype == VMC_S8 || e->dtype == VMC_S4)
      VMC_TRY(load_quantized(r, id, i, e, &r->ents[i + 1]));
    else if (e->dtype == VMC_S32)
      VMC_TRY(load_ints(r, id, i, e));
    else
      VMC_TRY(read_f32(r, e, i, r->g->params[id].data));
  }
  return VMC_OK;
}

/* A node as read, before it joins the graph. */
typedef struct node_rec {
  char op[VMC_NAME_MAX], name[VMC_NAME_MAX];
  int in[VMC_MAX_INPUTS], params[VMC_MAX_PARAMS];
  vmc_attr attrs[VMC_MAX_ATTRS];
  uint32_t n_in, n_attr, n_param;
} node_rec;

/* A version 1..3 node: names as strings, attributes as (key, i32, f32). */
static vmc_status read_node_fixed(reader *r, cursor *c, uint32_t i, node_rec *n) {
  char ref[VMC_NAME_MAX];
  snprintf(c->ctx, sizeof c->ctx, "node %u", i);
  VMC_TRY(cur_name(c, "the op name", n->op, sizeof n->op));
  VMC_TRY(cur_name(c, "the node name", n->name, sizeof n->name));
  snprintf(c->ctx, sizeof c->ctx, "node %u ('%s', %s)", i, n->name, n->op);
  VMC_TRY(cur_u32(c, "the number of inputs", &n->n_in));
  if (n->n_in > VMC_MAX_INPUTS)
    return cur_fail(c, VMC_ERR_FORMAT, "%u inputs, at most %d", n->n_in, VMC_MAX_INPUTS);
  for (uint32_t k = 0; k < n->n_in; k++) {
    VMC_TRY(cur_name(c, "an input name", ref, sizeof ref));
    n->in[k] = vmc_graph_find_value(r->g, ref);
    if (n->in[k] < 0)
      return cur_fail(c, VMC_ERR_FORMAT, "input %u ('%s') is neither 'input' nor an earlier node",
                      k, ref);
  }
  VMC_TRY(cur_u32(c, "the number of attributes", &n->n_attr));
  if (n->n_attr > VMC_MAX_ATTRS)
    return cur_fail(c, VMC_ERR_FORMAT, "%u attributes, at most %d", n->n_attr, VMC_MAX_ATTRS);
  for (uint32_t k = 0; k < n->n_attr; k++) {
    vmc_attr *a = &n->attrs[k];
    uint32_t iv = 0, fv = 0;
    memset(a, 0, sizeof *a);
    VMC_TRY(cur_name(c, "an attribute key", a->key, sizeof a->key));
    VMC_TRY(cur_u32(c, "an attribute value", &iv));
    VMC_TRY(cur_u32(c, "an attribute value", &fv));
    memcpy(&a->i, &iv, 4);
    a->f = bits_f32(fv);
  }
  VMC_TRY(cur_u32(c, "the number of parameters", &n->n_param));
  if (n->n_param > VMC_MAX_PARAMS)
    return cur_fail(c, VMC_ERR_FORMAT, "%u parameters, at most %d", n->n_param, VMC_MAX_PARAMS);
  for (uint32_t k = 0; k < n->n_param; k++) {
    VMC_TRY(cur_name(c, "a parameter name", ref, sizeof ref));
    n->params[k] = vmc_graph_find_param(r->g, ref);
    if (n->params[k] < 0)
      return cur_fail(c, VMC_ERR_FORMAT, "parameter '%s' is not in the tensor directory", ref);
  }
  return VMC_OK;
}

/* A version 4 node: names as string indices, inputs as value indices (0
 * the input, k node k - 1), attributes by form, parameters as directory
 * indices. */
static vmc_status read_node_compact(reader *r, cursor *c, uint32_t i, node_rec *n) {
  snprintf(c->ctx, sizeof c->ctx, "node %u", i);
  VMC_TRY(cur_strref(r, c, "the op name", n->op, sizeof n->op));
  VMC_TRY(cur_strref(r, c, "the node name", n->name, sizeof n->name));
  snprintf(c->ctx, sizeof c->ctx, "node %u ('%s', %s)", i, n->name, n->op);
  VMC_TRY(cur_uv(c, "the number of inputs", &n->n_in));
  if (n->n_in > VMC_MAX_INPUTS)
    return cur_fail(c, VMC_ERR_FORMAT, "%u inputs, at most %d", n->n_in, VMC_MAX_INPUTS);
  for (uint32_t k = 0; k < n->n_in; k++) {
    uint32_t v = 0;
    VMC_TRY(cur_uv(c, "an input", &v));
    if (v > i)
      return cur_fail(c, VMC_ERR_FORMAT, "input %u is value %u, neither 'input' (0) nor an "
                      "earlier node (1..%u)", k, v, i);
    n->in[k] = v ? r->g->nodes[v - 1].out : r->g->input;
  }
  VMC_TRY(cur_uv(c, "the number of attributes", &n->n_attr));
  if (n->n_attr > VMC_MAX_ATTRS)
    return cur_fail(c, VMC_ERR_FORMAT, "%u attributes, at most %d", n->n_attr, VMC_MAX_ATTRS);
  for (uint32_t k = 0; k < n->n_attr; k++) {
    vmc_attr *a = &n->attrs[k];
    uint32_t form = 0, iv = 0, fv = 0;
    memset(a, 0, sizeof *a);
    VMC_TRY(cur_strref(r, c, "an attribute key", a->key, sizeof a->key));
    VMC_TRY(cur_u8(c, "an attribute form", &form));
    if (form > VMC_ATTR_FORM_BOTH)
      return cur_fail(c, VMC_ERR_FORMAT, "attribute '%s' has form %u (0 int, 1 float, 2 both)",
                      a->key, form);
    if (form != VMC_ATTR_FORM_FLOAT) VMC_TRY(cur_uv(c, "an attribute value", &iv));
    if (form != VMC_ATTR_FORM_INT) VMC_TRY(cur_u32(c, "an attribute value", &fv));
    a->i = vmc_unzigzag(iv);
    a->f = bits_f32(fv);
    if (form == VMC_ATTR_FORM_INT) a->f = (float)a->i;
    if (form == VMC_ATTR_FORM_FLOAT)
      a->i = a->f >= -2147483648.0f && a->f < 2147483648.0f ? (int32_t)a->f : 0;
    if (attr_form(a->i, a->f) != (int)form)
      return cur_fail(c, VMC_ERR_FORMAT, "attribute '%s' (%d, %g) is in form %u, not %d",
                      a->key, (int)a->i, (double)a->f, form, attr_form(a->i, a->f));
  }
  VMC_TRY(cur_uv(c, "the number of parameters", &n->n_param));
  if (n->n_param > VMC_MAX_PARAMS)
    return cur_fail(c, VMC_ERR_FORMAT, "%u parameters, at most %d", n->n_param, VMC_MAX_PARAMS);
  for (uint32_t k = 0; k < n->n_param; k++) {
    uint32_t t = 0;
    VMC_TRY(cur_uv(c, "a parameter", &t));
    if (t >= r->h.n_tensors || r->ent_param[t] < 0)
      return cur_fail(c, VMC_ERR_FORMAT, "parameter %u is directory entry %u, not a parameter's "
                      "data", k, t);
    n->params[k] = r->ent_param[t];
  }
  return VMC_OK;
}

static vmc_status read_node(reader *r, cursor *c, uint32_t i) {
  node_rec n;
  memset(&n, 0, sizeof n);
  VMC_TRY(r->v4 ? read_node_compact(r, c, i, &n) : read_node_fixed(r, c, i, &n));
  for (uint32_t k = 1; k < n.n_attr; k++)
    for (uint32_t j = 0; j < k; j++)
      if (!strcmp(n.attrs[j].key, n.attrs[k].key))
        return cur_fail(c, VMC_ERR_FORMAT, "attribute '%s' appears twice", n.attrs[k].key);
  if (!vmc_op_find(n.op))
    return cur_fail(c, VMC_ERR_NOT_FOUND, "unknown op '%s' (not in this build of vmc)", n.op);
  vmc_status s = vmc_graph_add_node(r->g, n.op, n.name, n.in, (int)n.n_in, n.attrs, (int)n.n_attr,
                                    n.params, (int)n.n_param, NULL);
  return s ? file_error(s, r->what) : VMC_OK;
}

static vmc_status read_graph(reader *r, cursor *c) {
  if (r->h.n_nodes > (c->end - c->pos) / (r->v4 ? MIN_NODE_BYTES_V4 : MIN_NODE_BYTES))
    return cur_fail(c, VMC_ERR_FORMAT, "%u nodes do not fit in %zu bytes", r->h.n_nodes,
                    c->end - c->pos);
  for (uint32_t i = 0; i < r->h.n_nodes; i++) VMC_TRY(read_node(r, c, i));
  snprintf(c->ctx, sizeof c->ctx, "graph output");
  if (r->v4) {
    uint32_t v = 0;
    VMC_TRY(cur_uv(c, "the output", &v));
    if (v > r->h.n_nodes)
      return cur_fail(c, VMC_ERR_FORMAT, "value %u is not a value of the graph (0..%u)", v,
                      r->h.n_nodes);
    r->g->output = v ? r->g->nodes[v - 1].out : r->g->input;
    c->ctx[0] = 0;
    VMC_TRY(cur_done(c));
    for (uint32_t i = 0; i < r->n_strs; i++)
      if (!r->str_used[i])
        return vmc_error(VMC_ERR_FORMAT, "%s: string %u ('%s') of the string table is not used",
                         r->what, i, r->strs[i]);
  } else {
    char out[VMC_NAME_MAX];
    VMC_TRY(cur_name(c, "the output name", out, sizeof out));
    r->g->output = vmc_graph_find_value(r->g, out);
    if (r->g->output < 0)
      return cur_fail(c, VMC_ERR_FORMAT, "'%s' is not a value of the graph", out);
    /* Up to data_offset: fewer than 64 zero bytes of padding. */
    size_t pad = c->end - c->pos;
    bool zero = pad < VMC_FILE_ALIGN;
    for (size_t k = 0; k < pad && zero; k++) zero = c->p[c->pos + k] == 0;
    if (!zero)
      return vmc_error(VMC_ERR_FORMAT, "%s: %zu unexpected bytes after the graph section",
                       r->what, pad);
  }
  vmc_shape *shapes = vmc_malloc_plain((size_t)r->g->n_values * sizeof *shapes);
  if (!shapes) return vmc_error(VMC_ERR_NOMEM, "%s: shape inference", r->what);
  vmc_status s = vmc_graph_infer_shapes(r->g, 1, shapes);
  vmc_free(shapes);
  return s ? file_error(s, r->what) : VMC_OK;
}

static vmc_status parse(reader *r, bool want_extras) {
  cursor gc = cur_make(r->p, r->h.graph_off, r->h.data_off, r->what, "graph", r->v4);
  uint32_t dim[3] = {0, 0, 0};
  snprintf(gc.ctx, sizeof gc.ctx, "graph input");
  for (int k = 0; k < 3; k++) VMC_TRY(cur_len(&gc, "the input shape", &dim[k]));
  if (dim[0] > INT32_MAX || dim[1] > INT32_MAX || dim[2] > INT32_MAX)
    return cur_fail(&gc, VMC_ERR_FORMAT, "input shape %ux%ux%u is out of range", dim[0], dim[1],
                    dim[2]);
  vmc_status s = vmc_graph_create((int)dim[0], (int)dim[1], (int)dim[2], &r->g);
  if (s) return file_error(s, r->what);
  VMC_TRY(read_meta(r));
  if (r->v4) VMC_TRY(read_strings(r));
  VMC_TRY(read_tensors(r, want_extras));
  return read_graph(r, &gc);
}

vmc_status vmc_model_read_memory(const void *buf, size_t n, const char *what, vmc_graph **out,
                                 vmc_blob **extra, int *n_extra) {
  if (out) *out = NULL;
  if (extra) *extra = NULL;
  if (n_extra) *n_extra = 0;
  if (!what) what = "<memory>";
  if (!out || (!buf && n))
    return vmc_error(VMC_ERR_INVALID_ARG, "vmc_model_read_memory: bad arguments");
  reader r = {.p = buf, .what = what, .shared_by = {-1, -1, -1, -1}};
  vmc_status s = check_envelope(buf, n, what, &r.h);
  if (s) return s;
  r.v4 = r.h.version >= 4;
  bool want_extras = extra && n_extra;
  s = parse(&r, want_extras);
  vmc_free(r.ents);
  vmc_free(r.ent_param);
  vmc_free(r.strs);
  vmc_free(r.str_used);
  if (s) {
    vmc_graph_free(r.g);
    vmc_blobs_free(r.blobs, r.n_blobs);
    return s;
  }
  *out = r.g;
  if (want_extras) {
    *extra = r.blobs;
    *n_extra = r.n_blobs;
  }
  return VMC_OK;
}

vmc_status vmc_model_read(const char *path, vmc_graph **out, vmc_blob **extra, int *n_extra) {
  if (out) *out = NULL;
  if (extra) *extra = NULL;
  if (n_extra) *n_extra = 0;
  if (!path || !out) return vmc_error(VMC_ERR_INVALID_ARG, "vmc_model_read: bad arguments");
  FILE *f = fopen(path, "rb");
  if (!f)
    return vmc_error(errno == ENOENT ? VMC_ERR_NOT_FOUND : VMC_ERR_IO, "cannot open '%s': %s",
                     path, strerror(errno));
  struct stat st;
  vmc_status s = VMC_OK;
  uint8_t *buf = NULL;
  size_t n = 0;
  if (fstat(fileno(f), &st) != 0)
    s = vmc_error(VMC_ERR_IO, "cannot stat '%s': %s", path, strerror(errno));
  else if (!S_ISREG(st.st_mode))
    s = vmc_error(VMC_ERR_IO, "'%s' is not a regular file", path);
  else if ((uint64_t)st.st_size > VMC_FILE_MAX_BYTES)
    s = vmc_error(VMC_ERR_FORMAT, "%s: %lld bytes exceed the 4 GiB limit of a .vmc file", path,
                  (long long)st.st_size);
  if (!s) {
    n = (size_t)st.st_size;
    buf = vmc_alloc(n);
    if (!buf) s = vmc_error(VMC_ERR_NOMEM, "reading '%s' (%zu bytes)", path, n);
  }
  if (!s && fread(buf, 1, n, f) != n)
    s = vmc_error(VMC_ERR_IO, "reading '%s' failed: %s", path,
                  ferror(f) ? strerror(errno) : "the file shrank while being read");
  fclose(f);
  if (!s) s = vmc_model_read_memory(buf, n, path, out, extra, n_extra);
  vmc_free(buf);
  return s;
}

vmc_status vmc_model_load(const char *path, vmc_graph **out) {
  return vmc_model_read(path, out, NULL, NULL);
}

void vmc_blobs_free(vmc_blob *b, int n) {
  if (!b) return;
  for (int i = 0; i < n; i++) vmc_free(b[i].data);
  vmc_free(b);
}
