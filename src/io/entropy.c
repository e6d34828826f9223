/* Canonical Huffman coding of quantized weight codes (entropy.h). */
#include "io/entropy.h"

#include <string.h>

_Static_assert(VMC_HUFF_MAX_SYMS <= 256 && VMC_HUFF_MAX_LEN <= 15,
               "a LUT entry holds a symbol byte and a 4-bit length");
_Static_assert(VMC_HUFF_LUT_BITS < VMC_HUFF_MAX_LEN, "long codes take the slow path");

#define KRAFT_ONE (1u << VMC_HUFF_MAX_LEN)

void vmc_huff_count(vmc_huff_hist *h, const int8_t *codes, size_t n) {
  for (size_t i = 0; i < n; i++) h->n[codes[i] + 128]++;
}

/* Huffman code lengths of the m symbols with weights w[] (all > 0, sorted
 * ascending), by the two-queue method; returns the longest. */
static int huffman_depths(const uint64_t *w_sorted, int m, uint8_t *depth) {
  uint64_t w[2 * VMC_HUFF_MAX_SYMS];
  int parent[2 * VMC_HUFF_MAX_SYMS];
  uint8_t d[2 * VMC_HUFF_MAX_SYMS];
  if (m == 1) {
    depth[0] = 1;
    return 1;
  }
  memcpy(w, w_sorted, (size_t)m * sizeof *w);
  int leaf = 0, inner = m, next = m;
  const int root = 2 * m - 2;
  while (next <= root) {
    int pick[2];
    for (int k = 0; k < 2; k++) /* the lighter head; a leaf on ties */
      pick[k] = leaf < m && (inner >= next || w[leaf] <= w[inner]) ? leaf++ : inner++;
    w[next] = w[pick[0]] + w[pick[1]];
    parent[pick[0]] = parent[pick[1]] = next++;
  }
  d[root] = 0;
  int max = 0;
  for (int k = root - 1; k >= 0; k--) { /* a parent comes after its children */
    d[k] = (uint8_t)(d[parent[k]] + 1);
    if (k < m && d[k] > max) max = d[k];
  }
  memcpy(depth, d, (size_t)m);
  return max;
}

void vmc_huff_build(const vmc_huff_hist *h, vmc_huff_table *t) {
  int lo = 0, hi = -1;
  for (int s = 0; s < 256; s++)
    if (h->n[s]) {
      if (hi < 0) lo = s;
      hi = s;
    }
  memset(t, 0, sizeof *t);
  if (hi < 0) return; /* no symbols: an empty table (n 0), which codes nothing */
  t->lo = lo - 128;
  t->n = hi - lo + 1;
  /* Used symbols sorted by (count, value): insertion sort of <= 256. */
  int sym[VMC_HUFF_MAX_SYMS], m = 0;
  uint64_t w[VMC_HUFF_MAX_SYMS];
  for (int s = lo; s <= hi; s++) {
    if (!h->n[s]) continue;
    int k = m++;
    while (k > 0 && h->n[sym[k - 1]] > h->n[s]) {
      sym[k] = sym[k - 1];
      k--;
    }
    sym[k] = s;
  }
  for (int k = 0; k < m; k++) w[k] = h->n[sym[k]];
  uint8_t depth[VMC_HUFF_MAX_SYMS];
  /* Too deep: halve the counts (keeping them > 0, so the order stays
   * sorted) until it fits; all ones gives at most 8 bits. */
  while (huffman_depths(w, m, depth) > VMC_HUFF_MAX_LEN)
    for (int k = 0; k < m; k++) w[k] = (w[k] >> 1) | 1;
  for (int k = 0; k < m; k++) t->len[sym[k] - lo] = depth[k];
}

uint64_t vmc_huff_bits(const vmc_huff_table *t, const vmc_huff_hist *h) {
  uint64_t bits = 0;
  for (int s = 0; s < 256; s++) {
    if (!h->n[s]) continue;
    const int k = s - 128 - t->lo;
    if (k < 0 || k >= t->n || !t->len[k]) return UINT64_MAX;
    bits += h->n[s] * t->len[k];
  }
  return bits;
}

size_t vmc_huff_table_bytes(const vmc_huff_table *t) { return 2 + ((size_t)t->n + 1) / 2; }

void vmc_huff_write_table(const vmc_huff_table *t, uint8_t *dst) {
  dst[0] = (uint8_t)(int8_t)t->lo;
  dst[1] = (uint8_t)(t->n & 255); /* 256 symbols: 0 */
  memset(dst + 2, 0, ((size_t)t->n + 1) / 2);
  for (int k = 0; k < t->n; k++) dst[2 + k / 2] |= (uint8_t)(t->len[k] << (4 * (k & 1)));
}

/* Canonical codes: first[L] is the code of the first symbol of length L. */
static void canonical_first(const uint32_t *count, uint32_t *first) {
  uint32_t code = 0;
  first[0] = 0;
  for (int L = 1; L <= VMC_HUFF_MAX_LEN; L++) {
    code = (code + count[L - 1]) << 1;
    first[L] = code;
  }
}

static void length_counts(const vmc_huff_table *t, uint32_t *count) {
  memset(count, 0, (VMC_HUFF_MAX_LEN + 1) * sizeof *count);
  for (int k = 0; k < t->n; k++)
    if (t->len[k]) count[t->len[k]]++;
}

size_t vmc_huff_encode(const vmc_huff_table *t, const int8_t *codes, size_t n, uint8_t *dst) {
  uint32_t count[VMC_HUFF_MAX_LEN + 1], next[VMC_HUFF_MAX_LEN + 1], code[VMC_HUFF_MAX_SYMS];
  length_counts(t, count);
  canonical_first(count, next);
  for (int k = 0; k < t->n; k++)
    if (t->len[k]) code[k] = next[t->len[k]]++;
  uint64_t acc = 0; /* the low `have` bits are pending, the oldest highest */
  int have = 0;
  size_t out = 0;
  for (size_t i = 0; i < n; i++) {
    const int k = codes[i] - t->lo;
    acc = acc << t->len[k] | code[k];
    have += t->len[k];
    while (have >= 8) {
      have -= 8;
      dst[out++] = (uint8_t)(acc >> have);
    }
  }
  if (have) dst[out++] = (uint8_t)(acc << (8 - have));
  return out;
}

vmc_status vmc_huff_read_table(const uint8_t *src, size_t avail, int min, int max,
                               vmc_huff_table *t, size_t *used) {
  memset(t, 0, sizeof *t);
  if (avail < 2)
    return vmc_error(VMC_ERR_FORMAT, "its code table runs past the end of its coded bytes");
  t->lo = (int8_t)src[0];
  t->n = src[1] ? src[1] : 256;
  if (t->lo < min || t->lo + t->n - 1 > max)
    return vmc_error(VMC_ERR_FORMAT, "its code table covers %d symbols from %d, outside "
                     "%d..%d", t->n, t->lo, min, max);
  const size_t bytes = vmc_huff_table_bytes(t);
  if (bytes > avail)
    return vmc_error(VMC_ERR_FORMAT, "its code table of %zu bytes runs past the end of its %zu "
                     "coded bytes", bytes, avail);
  uint32_t kraft = 0, used_syms = 0;
  for (int k = 0; k < t->n; k++) {
    t->len[k] = (uint8_t)(src[2 + k / 2] >> (4 * (k & 1)) & 15);
    if (t->len[k]) {
      kraft += KRAFT_ONE >> t->len[k];
      used_syms++;
    }
  }
  if ((t->n & 1) && (src[bytes - 1] >> 4))
    return vmc_error(VMC_ERR_FORMAT, "its code table's unused last nibble is not 0");
  if (!t->len[0] || !t->len[t->n - 1])
    return vmc_error(VMC_ERR_FORMAT, "its code table's range %d..%d starts or ends with a "
                     "symbol without a code", t->lo, t->lo + t->n - 1);
  if (used_syms == 1 ? t->len[0] != 1 : kraft != KRAFT_ONE)
    return vmc_error(VMC_ERR_FORMAT, "its code lengths are not a complete prefix code (Kraft "
                     "sum %u/%u over %u symbols)", kraft, KRAFT_ONE, used_syms);
  *used = bytes;
  return VMC_OK;
}

void vmc_huff_decoder_init(vmc_huff_decoder *d, const vmc_huff_table *t) {
  memset(d, 0, sizeof *d);
  d->lo = t->lo;
  length_counts(t, d->count);
  canonical_first(d->count, d->first);
  uint32_t next[VMC_HUFF_MAX_LEN + 1];
  memcpy(next, d->first, sizeof next);
  for (int L = 1, at = 0; L <= VMC_HUFF_MAX_LEN; L++) {
    d->start[L] = (uint32_t)at;
    at += (int)d->count[L];
    if (d->count[L]) d->max_len = L;
  }
  uint32_t fill[VMC_HUFF_MAX_LEN + 1];
  memcpy(fill, d->start, sizeof fill);
  for (int k = 0; k < t->n; k++) { /* by value within each length: canonical order */
    const int L = t->len[k];
    if (!L) continue;
    const int8_t s = (int8_t)(t->lo + k);
    d->sym[fill[L]++] = s;
    const uint32_t c = next[L]++;
    if (L > VMC_HUFF_LUT_BITS) continue;
    const int shift = VMC_HUFF_LUT_BITS - L;
    for (uint32_t e = c << shift; e < (c + 1) << shift; e++)
      d->lut[e] = (uint16_t)((uint16_t)(uint8_t)s << 8 | (uint16_t)L);
  }
}

static uint64_t load_be64(const uint8_t *p) {
  uint64_t v = 0;
  for (int k = 0; k < 8; k++) v = v << 8 | p[k];
  return v;
}

/* The code at the top of buf: its length (0: no symbol has it, which only
 * a one-symbol table allows) and its symbol in *s. */
static inline int decode_one(const vmc_huff_decoder *d, uint64_t buf, int8_t *s) {
  const uint32_t e = d->lut[buf >> (64 - VMC_HUFF_LUT_BITS)];
  if (e) {
    *s = (int8_t)(e >> 8);
    return (int)(e & 15);
  }
  for (int L = VMC_HUFF_LUT_BITS + 1; L <= d->max_len; L++) {
    const uint32_t c = (uint32_t)(buf >> (64 - L)) - d->first[L];
    if (c < d->count[L]) {
      *s = d->sym[d->start[L] + c];
      return L;
    }
  }
  return 0;
}

vmc_status vmc_huff_decode_prefix(const vmc_huff_decoder *d, const uint8_t *src, size_t nbytes,
                                  size_t n, int8_t *out, size_t *used_bytes) {
  /* buf: the stream from bit 8 pos - have on, left-aligned; its first
   * `have` bits are loaded (the bits after them may be too: the same
   * bits); pos: the next byte to load. */
  uint64_t buf = 0;
  int have = 0, L = 1;
  size_t pos = 0, i = 0;
  /* 8 bytes at a time while they lie inside the stream: at least 56 bits,
   * three codes of at most 15. */
  while (i + 3 <= n && pos + 8 <= nbytes && L) {
    buf |= load_be64(src + pos) >> have;
    const int k = (63 - have) >> 3;
    pos += (size_t)k;
    have += 8 * k;
    for (int j = 0; j < 3 && L; j++) {
      L = decode_one(d, buf, &out[i]);
      buf <<= L;
      have -= L;
      i += L != 0;
    }
  }
  /* The rest, a byte at a time (past the end: zero bits, caught below). */
  while (i < n && L) {
    for (; have <= 56; pos++, have += 8)
      buf |= (uint64_t)(pos < nbytes ? src[pos] : 0) << (56 - have);
    L = decode_one(d, buf, &out[i]);
    buf <<= L;
    have -= L;
    i += L != 0;
  }
  const uint64_t used = (uint64_t)pos * 8 - (uint64_t)have;
  if (!L) /* at element i */
    return vmc_error(VMC_ERR_FORMAT, "element %zu of %zu: no symbol has the code at bit %llu",
                     i, n, (unsigned long long)used);
  const uint64_t total = (uint64_t)nbytes * 8;
  if (used > total)
    return vmc_error(VMC_ERR_FORMAT, "its %zu codes need %llu bits, more than its %zu coded "
                     "bytes hold", n, (unsigned long long)used, nbytes);
  const int pad = (int)((8 - used % 8) % 8);
  *used_bytes = (size_t)((used + 7) / 8);
  if (pad && (src[*used_bytes - 1] & ((1u << pad) - 1)))
    return vmc_error(VMC_ERR_FORMAT, "the %d padding bits after its last code are not zero",
                     pad);
  return VMC_OK;
}

vmc_status vmc_huff_decode(const vmc_huff_decoder *d, const uint8_t *src, size_t nbytes,
                           size_t n, int8_t *out) {
  size_t used = 0;
  VMC_TRY(vmc_huff_decode_prefix(d, src, nbytes, n, out, &used));
  if (used < nbytes)
    return vmc_error(VMC_ERR_FORMAT, "%zu bytes follow the last of its %zu codes", nbytes - used,
                     n);
  return VMC_OK;
}

/* ---- integers as bit lengths and raw bits ------------------------------- */

int vmc_bit_length(uint32_t u) {
  int L = 0;
  for (; u; u >>= 1) L++;
  return L;
}

void vmc_bits_put(vmc_bit_writer *w, uint32_t v, int k) {
  for (int b = k - 1; b >= 0; b--, w->at++)
    if (v >> b & 1) w->dst[w->at >> 3] |= (uint8_t)(0x80u >> (w->at & 7));
}

bool vmc_bits_get(vmc_bit_reader *r, int k, uint32_t *v) {
  if ((uint64_t)k > r->end - r->at) return false;
  uint32_t x = 0;
  for (int b = 0; b < k; b++, r->at++) x = x << 1 | (uint32_t)(r->src[r->at >> 3] >> (7 - (r->at & 7)) & 1);
  *v = x;
  return true;
}
