/* Canonical Huffman coding: the entropy-coded tensors of a .vmc file
 * (format versions 3 and 4, docs/file-format.md).
 *
 * Symbols are small integers of an alphabet min..max of at most 256 values:
 * the codes themselves, -127..127 (s8) or -7..7 (s4); the top bytes of f32
 * values read as int8, -128..127; the bit lengths of integers, 0..32.  A
 * code table gives each symbol of a contiguous range lo .. lo + n - 1 a
 * code length of 0 (no code) to 15 bits; the codes are canonical (shorter
 * codes first, then by symbol value), so the lengths alone define them.
 * Bits are written most significant first, each code most significant bit
 * first; the last byte is padded with zero bits.  A table of a single
 * symbol gives it length 1, the code 0: every code takes at least one bit,
 * so a stream of b bytes holds at most 8 b codes (a reader can bound the
 * memory a coded tensor asks for by its coded size).
 *
 * Serialised table (vmc_huff_table_bytes): i8 lo, u8 n (1..255; 0 means
 * 256, which only the whole byte alphabet -128..127 has), then n 4-bit
 * lengths packed two per byte, low nibble first (an odd n leaves the last
 * high nibble 0).  The reader accepts only what the writer can write:
 * lo .. lo + n - 1 inside the alphabet, the first and last lengths not
 * 0, and a complete prefix code (Kraft sum exactly 1), or a single symbol
 * of length 1.  Every bit pattern then decodes to a symbol of the range
 * (but a 1 bit under a one-symbol table, an error), so a decoded stream
 * holds only legal codes; the decoder also checks that it ends exactly
 * where the stream ends (trailing bits zero, no byte left).
 *
 * Decoding needs no allocation: vmc_huff_decoder is a fixed-size table
 * (a 1024-entry lookup for codes of up to 10 bits, canonical ranges for
 * longer ones). */
#ifndef VMC_ENTROPY_H
#define VMC_ENTROPY_H

#include "core/core.h"

#define VMC_HUFF_MAX_LEN 15   /* bits of the longest code */
#define VMC_HUFF_MAX_SYMS 256 /* -128..127 */
#define VMC_HUFF_LUT_BITS 10  /* codes decoded by one lookup */

/* Histogram of symbols: n[symbol + 128]. */
typedef struct vmc_huff_hist {
  uint64_t n[256];
} vmc_huff_hist;

/* A code table: code length len[k] of symbol lo + k (0: no code). */
typedef struct vmc_huff_table {
  int lo, n;
  uint8_t len[VMC_HUFF_MAX_SYMS];
} vmc_huff_table;

typedef struct vmc_huff_decoder {
  int lo, single;                        /* single: the one-symbol table's symbol is lo */
  int max_len;
  uint16_t lut[1 << VMC_HUFF_LUT_BITS];  /* (uint8_t)symbol << 8 | length; 0: longer code */
  uint32_t first[VMC_HUFF_MAX_LEN + 1];  /* canonical code of the first symbol of a length */
  uint32_t count[VMC_HUFF_MAX_LEN + 1];  /* symbols of that length */
  uint32_t start[VMC_HUFF_MAX_LEN + 1];  /* their index in sym[] */
  int8_t sym[VMC_HUFF_MAX_SYMS];         /* symbols by (length, value) */
} vmc_huff_decoder;

/* Adds codes[0..n) (each -128..127) to h. */
void vmc_huff_count(vmc_huff_hist *h, const int8_t *codes, size_t n);
/* The table of h's symbols (those with a count not 0; none: n 0, a table
 * that codes nothing), optimal lengths limited to VMC_HUFF_MAX_LEN (counts
 * are halved until they fit).  Deterministic: the same histogram gives the
 * same table. */
void vmc_huff_build(const vmc_huff_hist *h, vmc_huff_table *t);
/* Bits of the codes counted in h under t; UINT64_MAX if a counted symbol
 * has no code in t. */
uint64_t vmc_huff_bits(const vmc_huff_table *t, const vmc_huff_hist *h);
/* Bytes of t serialised: 2 + ceil(n / 2). */
size_t vmc_huff_table_bytes(const vmc_huff_table *t);
void vmc_huff_write_table(const vmc_huff_table *t, uint8_t *dst);
/* Writes the bit stream of codes[0..n) (each with a code in t) to dst:
 * (vmc_huff_bits + 7) / 8 bytes, returned. */
size_t vmc_huff_encode(const vmc_huff_table *t, const int8_t *codes, size_t n, uint8_t *dst);

/* Reads a serialised table from src[0..avail) into t, with symbols in the
 * alphabet min..max (-128 <= min <= max <= 127); *used: its bytes.
 * VMC_ERR_FORMAT naming the fault. */
vmc_status vmc_huff_read_table(const uint8_t *src, size_t avail, int min, int max,
                               vmc_huff_table *t, size_t *used);
/* The decoder of a table vmc_huff_read_table accepted. */
void vmc_huff_decoder_init(vmc_huff_decoder *d, const vmc_huff_table *t);
/* Decodes exactly n codes from the nbytes of src into out; VMC_ERR_FORMAT
 * when the stream is shorter, longer, or its padding bits are not zero. */
vmc_status vmc_huff_decode(const vmc_huff_decoder *d, const uint8_t *src, size_t nbytes,
                           size_t n, int8_t *out);
/* The same for a stream followed by other bytes: decodes n codes from the
 * start of src[0..nbytes), which must end inside it with zero padding bits
 * up to the next byte; *used: the bytes they take. */
vmc_status vmc_huff_decode_prefix(const vmc_huff_decoder *d, const uint8_t *src, size_t nbytes,
                                  size_t n, int8_t *out, size_t *used);

/* ---- integers as bit lengths and raw bits (format version 4) -----------
 * An s32 value q is coded as u = zigzag(q) (2q for q >= 0, -2q - 1 below:
 * 0, -1, 1, -2 ... become 0, 1, 2, 3 ...), whose bit length L (0 for 0,
 * else 1..32) is a Huffman symbol, and the L - 1 bits of u below its
 * leading 1 (none when L <= 1), most significant first, are raw bits in a
 * separate bit stream.  Bit streams are filled from each byte's most
 * significant bit down and padded with 0 bits to a whole byte. */
#define VMC_INT_MAX_LEN 32 /* bit lengths 0..32 */

static inline uint32_t vmc_zigzag(int32_t q) {
  return q >= 0 ? (uint32_t)q << 1 : ((uint32_t)(-(q + 1)) << 1) | 1u;
}
static inline int32_t vmc_unzigzag(uint32_t u) {
  return (u & 1) ? -(int32_t)(u >> 1) - 1 : (int32_t)(u >> 1);
}
/* Bits of u without its leading zeros: 0 for 0. */
int vmc_bit_length(uint32_t u);

/* Appends bit streams: bits go at bit `at` of dst (zeroed beforehand). */
typedef struct vmc_bit_writer {
  uint8_t *dst;
  uint64_t at;
} vmc_bit_writer;
/* Appends the low k (0..32) bits of v, most significant first. */
void vmc_bits_put(vmc_bit_writer *w, uint32_t v, int k);

/* Reads a bit stream of nbytes bytes. */
typedef struct vmc_bit_reader {
  const uint8_t *src;
  uint64_t at, end; /* bit positions */
} vmc_bit_reader;
/* The next k (0..32) bits into *v; false (and nothing read) past the end. */
bool vmc_bits_get(vmc_bit_reader *r, int k, uint32_t *v);

#endif
