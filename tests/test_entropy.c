/* The canonical Huffman coder of .vmc files (io/entropy.h): round trips
 * over the code, byte and bit-length alphabets, the limits of the code
 * lengths, the rejection of every kind of malformed table and stream, and
 * the integers' zigzag form and raw bits. */
#include "test.h"

#include "core/core.h"
#include "io/entropy.h"

#include <math.h>
#include <stdlib.h>

/* Codes through table t and back: the stream is (bits + 7) / 8 bytes, its
 * serialised table reads back as t in the alphabet -qmax..qmax (qmax 128:
 * the byte alphabet -128..127), and decoding gives the codes. */
static size_t round_trip(const vmc_huff_table *t, const vmc_huff_hist *h, const int8_t *codes,
                         size_t n, int qmax) {
  const int min = -qmax, max = qmax == 128 ? 127 : qmax;
  const uint64_t bits = vmc_huff_bits(t, h);
  const size_t nb = (size_t)((bits + 7) / 8);
  uint8_t *buf = bits != UINT64_MAX ? malloc(nb + 1) : NULL, tab[2 + 128];
  int8_t *back = malloc(n + 1);
  if (!buf || !back) {
    vmc_test_fail(__FILE__, __LINE__, "%llu bits", (unsigned long long)bits);
    free(buf);
    free(back);
    return 0;
  }
  CHECK_EQ_INT(vmc_huff_encode(t, codes, n, buf), nb);
  vmc_huff_write_table(t, tab);
  vmc_huff_table u;
  size_t used = 0;
  CHECK_OK(vmc_huff_read_table(tab, vmc_huff_table_bytes(t), min, max, &u, &used));
  CHECK_EQ_INT(used, vmc_huff_table_bytes(t));
  CHECK(u.lo == t->lo && u.n == t->n && !memcmp(u.len, t->len, (size_t)t->n));
  vmc_huff_decoder d;
  vmc_huff_decoder_init(&d, &u);
  CHECK_OK(vmc_huff_decode(&d, buf, nb, n, back));
  CHECK(!memcmp(codes, back, n));
  free(buf);
  free(back);
  return nb;
}

static vmc_huff_table build(const int8_t *codes, size_t n, vmc_huff_hist *h) {
  memset(h, 0, sizeof *h);
  vmc_huff_count(h, codes, n);
  vmc_huff_table t;
  vmc_huff_build(h, &t);
  return t;
}

static double entropy_bits(const vmc_huff_hist *h) {
  double n = 0, e = 0;
  for (int s = 0; s < 256; s++) n += (double)h->n[s];
  for (int s = 0; s < 256; s++)
    if (h->n[s]) e -= (double)h->n[s] * log2((double)h->n[s] / n);
  return e;
}

/* Kraft sum of t in units of 2^-15. */
static uint32_t kraft(const vmc_huff_table *t) {
  uint32_t k = 0;
  for (int i = 0; i < t->n; i++)
    if (t->len[i]) k += (1u << VMC_HUFF_MAX_LEN) >> t->len[i];
  return k;
}

TEST(entropy_round_trip_random) {
  vmc_rng r;
  vmc_rng_seed(&r, 3);
  static const size_t sizes[] = {1, 2, 3, 7, 8, 9, 63, 1000, 4097, 65537};
  int8_t *codes = malloc(65537);
  REQUIRE(codes);
  for (int qmax = 7; qmax <= 127; qmax += 120)
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
      const size_t n = sizes[k];
      for (size_t i = 0; i < n; i++) codes[i] = (int8_t)((int)vmc_rng_below(&r, 2 * qmax + 1) - qmax);
      vmc_huff_hist h;
      vmc_huff_table t = build(codes, n, &h);
      CHECK(t.lo >= -qmax && t.lo + t.n - 1 <= qmax);
      CHECK(kraft(&t) == 1u << VMC_HUFF_MAX_LEN || (t.n == 1 && t.len[0] == 1));
      round_trip(&t, &h, codes, n, qmax);
      /* Uniform codes: Huffman is within a bit of the entropy. */
      CHECK((double)vmc_huff_bits(&t, &h) <= entropy_bits(&h) + (double)n);
    }
  free(codes);
}

/* Gaussian-like codes, as trained weights give: close to the entropy and
 * much smaller than raw; the same histogram gives the same table. */
TEST(entropy_round_trip_skewed) {
  vmc_rng r;
  vmc_rng_seed(&r, 5);
  const size_t n = 50000;
  int8_t *codes = malloc(n);
  REQUIRE(codes);
  for (int qmax = 7; qmax <= 127; qmax += 120) {
    for (size_t i = 0; i < n; i++) {
      float v = vmc_rng_normal(&r) * (float)qmax / 6.0f;
      v = v > (float)qmax ? (float)qmax : v < (float)-qmax ? (float)-qmax : v;
      codes[i] = (int8_t)lrintf(v);
    }
    vmc_huff_hist h;
    vmc_huff_table t = build(codes, n, &h), t2 = build(codes, n, &h);
    CHECK(!memcmp(&t, &t2, sizeof t));
    const size_t nb = round_trip(&t, &h, codes, n, qmax);
    const double e = entropy_bits(&h);
    CHECK((double)nb * 8 <= e * 1.03 + 8);
    CHECK(nb < (qmax == 7 ? n / 2 * 6 / 10 : n * 85 / 100)); /* raw: n / 2 (s4), n (s8) */
  }
  free(codes);
}

/* One symbol (e.g. an all-zero tensor): one bit per code, all of them 0. */
TEST(entropy_single_symbol) {
  static const int8_t values[] = {0, 127, -127, -7, 7};
  int8_t codes[100];
  for (size_t v = 0; v < sizeof values; v++)
    for (size_t n = 1; n <= 100; n += 33) {
      memset(codes, values[v], n);
      vmc_huff_hist h;
      vmc_huff_table t = build(codes, n, &h);
      CHECK(t.n == 1 && t.lo == values[v] && t.len[0] == 1);
      CHECK_EQ_INT(round_trip(&t, &h, codes, n, abs(values[v]) > 7 ? 127 : 7), (n + 7) / 8);
    }
  /* All zero: 1 bit each, and the stream is zero bytes. */
  memset(codes, 0, 100);
  vmc_huff_hist h;
  vmc_huff_table t = build(codes, 100, &h);
  uint8_t buf[13];
  CHECK_EQ_INT(vmc_huff_encode(&t, codes, 100, buf), 13);
  for (int i = 0; i < 13; i++) CHECK_EQ_INT(buf[i], 0);
  /* A 1 bit has no symbol. */
  vmc_huff_decoder d;
  vmc_huff_decoder_init(&d, &t);
  buf[5] = 0x10;
  int8_t back[100];
  CHECK_EQ_INT(vmc_huff_decode(&d, buf, 13, 100, back), VMC_ERR_FORMAT);
  CHECK(strstr(vmc_last_error(), "element 43 of 100") != NULL);
}

/* Fibonacci counts would need codes of 30 bits: the lengths are limited to
 * 15 and the code stays complete; a hand-made table with 15-bit codes
 * decodes through the canonical ranges (longer than the lookup). */
TEST(entropy_maximum_code_lengths) {
  vmc_huff_hist h;
  memset(&h, 0, sizeof h);
  uint64_t a = 1, b = 1;
  for (int s = 0; s < 32; s++) {
    h.n[128 - 16 + s] = a;
    const uint64_t c = a + b;
    a = b;
    b = c;
  }
  vmc_huff_table t;
  vmc_huff_build(&h, &t);
  int max = 0;
  for (int k = 0; k < t.n; k++) max = t.len[k] > max ? t.len[k] : max;
  CHECK_EQ_INT(max, VMC_HUFF_MAX_LEN);
  CHECK_EQ_INT(kraft(&t), 1u << VMC_HUFF_MAX_LEN);
  /* Lengths 1, 2, ..., 14, 15, 15 for symbols -8..7, and every one used. */
  vmc_huff_table m = {.lo = -8, .n = 16};
  for (int k = 0; k < 16; k++) m.len[k] = (uint8_t)(k < 15 ? k + 1 : 15);
  CHECK_EQ_INT(kraft(&m), 1u << VMC_HUFF_MAX_LEN);
  int8_t codes[16 * 40];
  for (int i = 0; i < 16 * 40; i++) codes[i] = (int8_t)(-8 + (i * 7) % 16);
  vmc_huff_hist hm;
  memset(&hm, 0, sizeof hm);
  vmc_huff_count(&hm, codes, 16 * 40);
  round_trip(&m, &hm, codes, 16 * 40, 127);
}

/* Builds a serialised table from lengths. */
/* A serialised table: lo, then lengths (a string of digits 0..9 or letters
 * a..f for 10..15), then a change: the table cut to `avail` bytes (-1:
 * whole), its byte `at` xor'ed with `flip`. */
typedef struct table_case {
  const char *what;
  int lo;
  const char *lens;
  int qmax;
  int avail, at, flip;
  const char *msg; /* NULL: accepted */
} table_case;

TEST(entropy_table_checks) {
  static const table_case cases[] = {
      {"complete", -1, "122", 7, -1, 0, 0, NULL},
      {"bits after it", -1, "122", 7, 9, 0, 0, NULL},
      {"unused symbols inside the range", -1, "1022", 7, -1, 0, 0, NULL},
      {"a lone symbol", 3, "1", 7, -1, 0, 0, NULL},
      {"empty", -1, "122", 7, 0, 0, 0, "runs past the end"},
      {"one byte", -1, "122", 7, 1, 0, 0, "runs past the end"},
      {"truncated lengths", -1, "122", 7, 3, 0, 0, "runs past the end"},
      {"Kraft sum over 1", -1, "112", 7, -1, 0, 0, "Kraft sum 40960/32768"},
      {"Kraft sum under 1", -1, "222", 7, -1, 0, 0, "not a complete prefix code"},
      {"a lone symbol of length 2", 3, "2", 7, -1, 0, 0, "not a complete prefix code"},
      {"first length 0", -1, "0122", 7, -1, 0, 0, "starts or ends with a symbol without a code"},
      {"last length 0", -1, "1220", 7, -1, 0, 0, "starts or ends"},
      {"padding nibble", -1, "122", 7, -1, 3, 0x30, "unused last nibble"},
      {"count byte 0: 256 symbols", -1, "122", 7, -1, 1, 3, "covers 256 symbols from -1"},
      {"past +7", 6, "122", 7, -1, 0, 0, "outside -7..7"},
      {"below -7", -8, "122", 7, -1, 0, 0, "outside -7..7"},
      {"-128", -128, "122", 127, -1, 0, 0, "outside -127..127"},
      {"15-bit codes", -8, "123456789abcdeff", 127, -1, 0, 0, NULL},
      {"15-bit codes are not s4", -8, "123456789abcdeff", 7, -1, 0, 0, "outside -7..7"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const table_case *k = &cases[i];
    vmc_huff_table t = {.lo = k->lo, .n = (int)strlen(k->lens)};
    for (int j = 0; j < t.n; j++)
      t.len[j] = (uint8_t)(k->lens[j] <= '9' ? k->lens[j] - '0' : k->lens[j] - 'a' + 10);
    uint8_t tab[2 + 128 + 16] = {0};
    vmc_huff_write_table(&t, tab);
    tab[k->at] ^= (uint8_t)k->flip;
    const size_t bytes = vmc_huff_table_bytes(&t);
    vmc_huff_table u;
    size_t used = 0;
    vmc_status s = vmc_huff_read_table(tab, k->avail < 0 ? bytes : (size_t)k->avail, -k->qmax,
                                       k->qmax, &u, &used);
    if (k->msg ? s != VMC_ERR_FORMAT || !strstr(vmc_last_error(), k->msg) : s != VMC_OK)
      vmc_test_fail(__FILE__, __LINE__, "%s: %s: %s", k->what, vmc_status_str(s),
                    s ? vmc_last_error() : "accepted");
    if (!k->msg) CHECK(used == bytes && u.lo == t.lo && u.n == t.n);
  }
  /* All 255 symbols of 8 bits: Kraft 255/256; from -126, past 127. */
  uint8_t tab[2 + 128];
  memset(tab, 0x88, sizeof tab);
  tab[0] = 0x81; /* -127 .. 127 */
  tab[1] = 255;
  tab[2 + 127] = 0x08;
  vmc_huff_table u;
  size_t used = 0;
  CHECK_EQ_INT(vmc_huff_read_table(tab, sizeof tab, -127, 127, &u, &used), VMC_ERR_FORMAT);
  CHECK(strstr(vmc_last_error(), "Kraft sum 32640/32768") != NULL);
  tab[0] = 0x82;
  CHECK_EQ_INT(vmc_huff_read_table(tab, sizeof tab, -127, 127, &u, &used), VMC_ERR_FORMAT);
  CHECK(strstr(vmc_last_error(), "outside -127..127") != NULL);
}

/* A stream with one more or one fewer byte, or stray padding bits, is
 * rejected; every truncation and every byte flip is rejected or decodes to
 * legal codes, never reading past the end (the sanitizers watch). */
TEST(entropy_rejects_bad_streams) {
  vmc_rng r;
  vmc_rng_seed(&r, 9);
  const size_t n = 301;
  int8_t codes[301], back[302];
  for (size_t i = 0; i < n; i++) {
    float v = vmc_rng_normal(&r) * 20.0f;
    codes[i] = (int8_t)lrintf(v > 127 ? 127 : v < -127 ? -127 : v);
  }
  vmc_huff_hist h;
  vmc_huff_table t = build(codes, n, &h);
  const uint64_t bits = vmc_huff_bits(&t, &h);
  const size_t nb = (size_t)((bits + 7) / 8);
  uint8_t *buf = malloc(nb + 1), *cut;
  REQUIRE(buf);
  CHECK_EQ_INT(vmc_huff_encode(&t, codes, n, buf), nb);
  vmc_huff_decoder d;
  vmc_huff_decoder_init(&d, &t);
  CHECK_OK(vmc_huff_decode(&d, buf, nb, n, back));
  buf[nb] = 0;
  CHECK_EQ_INT(vmc_huff_decode(&d, buf, nb + 1, n, back), VMC_ERR_FORMAT);
  CHECK(strstr(vmc_last_error(), "1 bytes follow the last of its 301 codes") != NULL);
  CHECK_EQ_INT(vmc_huff_decode(&d, buf, nb, n + 1, back), VMC_ERR_FORMAT); /* a code short */
  CHECK_EQ_INT(vmc_huff_decode(&d, buf, nb, n - 40, back), VMC_ERR_FORMAT); /* bytes left */
  const int pad = (int)(nb * 8 - bits);
  if (pad) {
    buf[nb - 1] ^= 1;
    CHECK_EQ_INT(vmc_huff_decode(&d, buf, nb, n, back), VMC_ERR_FORMAT);
    CHECK(strstr(vmc_last_error(), "padding bits") != NULL);
    buf[nb - 1] ^= 1;
  }
  /* Truncations: exact-size copies, so a read past the end is caught. */
  for (size_t k = 0; k < nb; k++) {
    cut = malloc(k ? k : 1);
    REQUIRE(cut);
    memcpy(cut, buf, k);
    CHECK_EQ_INT(vmc_huff_decode(&d, cut, k, n, back), VMC_ERR_FORMAT);
    free(cut);
  }
  int ok = 0, bad = 0;
  for (size_t k = 0; k < nb; k++)
    for (int bit = 0; bit < 8; bit++) {
      buf[k] ^= (uint8_t)(1u << bit);
      memset(back, 100, sizeof back);
      if (vmc_huff_decode(&d, buf, nb, n, back) == VMC_OK) {
        ok++;
        for (size_t i = 0; i < n; i++)
          if (back[i] < t.lo || back[i] >= t.lo + t.n) bad++;
      }
      buf[k] ^= (uint8_t)(1u << bit);
    }
  CHECK_EQ_INT(bad, 0);
  CHECK(ok < (int)nb * 8); /* most flips change the length of the stream */
  free(buf);
}

/* The example of docs/file-format.md, byte for byte. */
TEST(entropy_documented_example) {
  const int8_t codes[5] = {0, 0, -1, 1, 0};
  vmc_huff_hist h;
  vmc_huff_table t = build(codes, 5, &h);
  CHECK(t.lo == -1 && t.n == 3 && t.len[0] == 2 && t.len[1] == 1 && t.len[2] == 2);
  uint8_t tab[4], bits[1];
  CHECK_EQ_INT(vmc_huff_table_bytes(&t), 4);
  vmc_huff_write_table(&t, tab);
  CHECK(tab[0] == 0xFF && tab[1] == 0x03 && tab[2] == 0x12 && tab[3] == 0x02);
  CHECK_EQ_INT(vmc_huff_encode(&t, codes, 5, bits), 1);
  CHECK_EQ_INT(bits[0], 0x2C);
}

/* The byte alphabet (the top bytes of f32 values): all 256 symbols, -128
 * included, a table whose count byte is 0; a code alphabet refuses it. */
TEST(entropy_byte_alphabet) {
  vmc_rng r;
  vmc_rng_seed(&r, 12);
  const size_t n = 20000;
  int8_t *codes = malloc(n);
  REQUIRE(codes);
  for (size_t i = 0; i < n; i++) /* every byte, the middle ones more often */
    codes[i] = (int8_t)(uint8_t)(i < 256 ? (int)i : 128 + (int)(vmc_rng_normal(&r) * 20.0f) % 128);
  vmc_huff_hist h;
  vmc_huff_table t = build(codes, n, &h);
  CHECK(t.lo == -128 && t.n == 256);
  CHECK_EQ_INT(kraft(&t), 1u << VMC_HUFF_MAX_LEN);
  uint8_t tab[2 + 128];
  vmc_huff_write_table(&t, tab);
  CHECK(tab[0] == 0x80 && tab[1] == 0);
  round_trip(&t, &h, codes, n, 128);
  vmc_huff_table u;
  size_t used = 0;
  CHECK_EQ_INT(vmc_huff_read_table(tab, sizeof tab, -127, 127, &u, &used), VMC_ERR_FORMAT);
  CHECK(strstr(vmc_last_error(), "covers 256 symbols from -128, outside -127..127") != NULL);
  /* Bit lengths of integers: the alphabet 0..32. */
  for (size_t i = 0; i < n; i++) codes[i] = (int8_t)vmc_rng_below(&r, 33);
  t = build(codes, n, &h);
  vmc_huff_write_table(&t, tab);
  CHECK_OK(vmc_huff_read_table(tab, vmc_huff_table_bytes(&t), 0, VMC_INT_MAX_LEN, &u, &used));
  tab[0] = 0xff; /* from -1 */
  CHECK_EQ_INT(vmc_huff_read_table(tab, vmc_huff_table_bytes(&t), 0, VMC_INT_MAX_LEN, &u, &used),
               VMC_ERR_FORMAT);
  free(codes);
}

/* A stream followed by other bytes: decoded up to its last code, its
 * padding bits checked, the bytes it used returned. */
TEST(entropy_decode_prefix) {
  const int8_t codes[7] = {0, 0, -1, 1, 0, 1, 1}; /* 1+1+2+2+1+2+2 = 11 bits: 2 bytes */
  vmc_huff_hist h;
  vmc_huff_table t = build(codes, 7, &h);
  vmc_huff_decoder d;
  vmc_huff_decoder_init(&d, &t);
  uint8_t buf[4] = {0, 0, 0xAB, 0xCD};
  CHECK_EQ_INT(vmc_huff_encode(&t, codes, 7, buf), 2);
  int8_t back[7];
  size_t used = 0;
  CHECK_OK(vmc_huff_decode_prefix(&d, buf, sizeof buf, 7, back, &used));
  CHECK_EQ_INT(used, 2);
  CHECK(!memcmp(back, codes, 7));
  CHECK_EQ_INT(vmc_huff_decode(&d, buf, sizeof buf, 7, back), VMC_ERR_FORMAT);
  CHECK(strstr(vmc_last_error(), "2 bytes follow the last of its 7 codes") != NULL);
  buf[1] |= 1; /* a padding bit */
  CHECK_EQ_INT(vmc_huff_decode_prefix(&d, buf, sizeof buf, 7, back, &used), VMC_ERR_FORMAT);
  CHECK(strstr(vmc_last_error(), "the 5 padding bits") != NULL);
  CHECK_EQ_INT(vmc_huff_decode_prefix(&d, buf, 1, 7, back, &used), VMC_ERR_FORMAT);
  CHECK(strstr(vmc_last_error(), "more than its 1 coded bytes") != NULL);
}

/* Integers as bit lengths and raw bits: the zigzag form at the edges of
 * s32, bit lengths, and bit streams written and read back at every width. */
TEST(entropy_integer_bits) {
  static const int32_t q[] = {0, -1, 1, -2, 2, 63, -64, INT32_MAX, INT32_MIN, INT32_MIN + 1};
  static const uint32_t u[] = {0, 1, 2, 3, 4, 126, 127, 0xFFFFFFFEu, 0xFFFFFFFFu, 0xFFFFFFFDu};
  static const int len[] = {0, 1, 2, 2, 3, 7, 7, 32, 32, 32};
  for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) {
    CHECK_EQ_INT(vmc_zigzag(q[i]), u[i]);
    CHECK_EQ_INT(vmc_unzigzag(u[i]), q[i]);
    CHECK_EQ_INT(vmc_bit_length(u[i]), len[i]);
  }
  vmc_rng r;
  vmc_rng_seed(&r, 21);
  uint32_t v[300];
  int k[300];
  uint8_t buf[300 * 4 + 1] = {0};
  vmc_bit_writer w = {buf, 0};
  uint64_t total = 0;
  for (int i = 0; i < 300; i++) {
    k[i] = (int)vmc_rng_below(&r, 33);
    v[i] = (uint32_t)vmc_rng_u64(&r) & (k[i] == 32 ? 0xFFFFFFFFu : (1u << k[i]) - 1);
    vmc_bits_put(&w, v[i], k[i]);
    total += (uint64_t)k[i];
  }
  CHECK_EQ_INT(w.at, total);
  vmc_bit_reader rd = {buf, 0, total};
  for (int i = 0; i < 300; i++) {
    uint32_t x = 0;
    CHECK(vmc_bits_get(&rd, k[i], &x));
    CHECK_EQ_INT(x, v[i]);
  }
  uint32_t x = 7;
  CHECK(vmc_bits_get(&rd, 0, &x) && x == 0);
  CHECK(!vmc_bits_get(&rd, 1, &x)); /* past the end */
  /* MSB first: 1, then 01 -> 101 00000 */
  uint8_t one[1] = {0};
  vmc_bit_writer w1 = {one, 0};
  vmc_bits_put(&w1, 1, 1);
  vmc_bits_put(&w1, 1, 2);
  CHECK_EQ_INT(one[0], 0xA0);
}

/* The f32 example of docs/file-format.md: the top bytes of 0.5 and -2.25
 * (symbols 63 and -64) under their own table, byte for byte. */
TEST(entropy_documented_f32_example) {
  const float x[2] = {0.5f, -2.25f};
  int8_t top[2];
  for (int i = 0; i < 2; i++) {
    uint32_t u;
    memcpy(&u, &x[i], 4);
    top[i] = (int8_t)(uint8_t)(u >> 24);
  }
  CHECK(top[0] == 63 && top[1] == -64);
  vmc_huff_hist h;
  vmc_huff_table t = build(top, 2, &h);
  CHECK(t.lo == -64 && t.n == 128 && t.len[0] == 1 && t.len[127] == 1);
  uint8_t tab[2 + 64], bits[1];
  CHECK_EQ_INT(vmc_huff_table_bytes(&t), 66);
  vmc_huff_write_table(&t, tab);
  CHECK(tab[0] == 0xC0 && tab[1] == 0x80 && tab[2] == 0x01 && tab[65] == 0x10);
  for (int i = 3; i < 65; i++) CHECK_EQ_INT(tab[i], 0);
  CHECK_EQ_INT(vmc_huff_encode(&t, top, 2, bits), 1);
  CHECK_EQ_INT(bits[0], 0x80);
}
