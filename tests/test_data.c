/* Data layer: IDX (plain and gzipped), CIFAR-10 binary, image folders,
 * normalisation, batches and augmentation, and every malformed-input error.
 * Synthetic files are written into the test's temporary folder; the real
 * Fashion-MNIST test split is checked when its Debian package is installed. */
#include "data/data.h"
#include "test.h"

#include <errno.h>
#include <omp.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <zlib.h>

#include <stb/stb_image_write.h>

/* ---- helpers ------------------------------------------------------------- */

#define P 1024

/* tmpdir/rel into buf. */
static const char *tpath(char *buf, const char *rel) {
  snprintf(buf, P, "%s/%s", vmc_test_tmpdir(), rel);
  return buf;
}

/* mkdir -p tmpdir/rel. */
static const char *tdir(char *buf, const char *rel) {
  tpath(buf, rel);
  for (char *s = buf + strlen(vmc_test_tmpdir()) + 1; *s; s++)
    if (*s == '/') {
      *s = '\0';
      mkdir(buf, 0755);
      *s = '/';
    }
  mkdir(buf, 0755);
  return buf;
}

static int write_bytes(const char *path, const void *data, size_t n, int gz) {
  if (gz) {
    gzFile f = gzopen(path, "wb");
    if (!f) return 0;
    int ok = n == 0 || gzwrite(f, data, (unsigned)n) == (int)n;
    return gzclose(f) == Z_OK && ok;
  }
  FILE *f = fopen(path, "wb");
  if (!f) return 0;
  int ok = fwrite(data, 1, n, f) == n;
  return fclose(f) == 0 && ok;
}

static void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* An IDX file: magic, dims, then payload (payload_bytes of it, which may
 * differ from the dims' product to make broken files). */
static int write_idx(const char *path, uint32_t magic, const uint32_t *dims, int ndim,
                     const uint8_t *payload, size_t payload_bytes, int gz) {
  size_t hdr = 4 + 4 * (size_t)ndim;
  uint8_t *buf = malloc(hdr + payload_bytes + 1);
  if (!buf) return 0;
  put_be32(buf, magic);
  for (int i = 0; i < ndim; i++) put_be32(buf + 4 + 4 * i, dims[i]);
  if (payload_bytes) memcpy(buf + hdr, payload, payload_bytes);
  int ok = write_bytes(path, buf, hdr + payload_bytes, gz);
  free(buf);
  return ok;
}

/* Synthetic IDX data: n images of h x w, pixel (i, p) = (i*7 + p*3) % 256,
 * label i % classes. */
#define SH 5
#define SW 4
static uint8_t syn_pixel(int i, int p) { return (uint8_t)((i * 7 + p * 3 + i * i) % 256); }

static int write_idx_split(const char *dir, const char *prefix, int n, int classes,
                           int gz) {
  uint8_t *img = malloc((size_t)n * SH * SW), *lab = malloc((size_t)n);
  for (int i = 0; i < n; i++) {
    for (int p = 0; p < SH * SW; p++) img[i * SH * SW + p] = syn_pixel(i, p);
    lab[i] = (uint8_t)(i % classes);
  }
  char path[P];
  uint32_t idims[3] = {(uint32_t)n, SH, SW}, ldims[1] = {(uint32_t)n};
  snprintf(path, P, "%s/%s-images-idx3-ubyte%s", dir, prefix, gz ? ".gz" : "");
  int ok = write_idx(path, 0x803, idims, 3, img, (size_t)n * SH * SW, gz);
  snprintf(path, P, "%s/%s-labels-idx1-ubyte%s", dir, prefix, gz ? ".gz" : "");
  ok = ok && write_idx(path, 0x801, ldims, 1, lab, (size_t)n, gz);
  free(img);
  free(lab);
  return ok;
}

/* Mean and std (of v/255) of the synthetic train images, in double. */
static void syn_stats(int n, double *mean, double *std) {
  double s = 0, s2 = 0;
  for (int i = 0; i < n; i++)
    for (int p = 0; p < SH * SW; p++) {
      double v = syn_pixel(i, p) / 255.0;
      s += v;
      s2 += v * v;
    }
  double cnt = (double)n * SH * SW;
  *mean = s / cnt;
  *std = sqrt(s2 / cnt - *mean * *mean);
}

/* An error status with a message that mentions `needle` (if given). */
#define CHECK_ERR(expr, want, needle)                                          \
  do {                                                                         \
    vmc_clear_error();                                                         \
    vmc_status e_ = (expr);                                                    \
    CHECK(e_ != VMC_OK);                                                       \
    if ((want) != VMC_OK && e_ != (want))                                      \
      vmc_test_fail(__FILE__, __LINE__, "%s -> %s, expected %s: %s", #expr,    \
                    vmc_status_str(e_), vmc_status_str(want), vmc_last_error()); \
    CHECK(vmc_last_error()[0] != '\0');                                        \
    if ((needle) && !strstr(vmc_last_error(), (needle) ? (needle) : ""))       \
      vmc_test_fail(__FILE__, __LINE__, "message \"%s\" lacks \"%s\"",         \
                    vmc_last_error(), (needle) ? (needle) : "");               \
  } while (0)

/* dir/train-labels-idx1-ubyte with 4 good labels. */
static int write_labels4(const char *dir) {
  char path[P + 64];
  const uint8_t lb[4] = {0, 1, 0, 1};
  const uint32_t n[1] = {4};
  snprintf(path, sizeof path, "%s/train-labels-idx1-ubyte", dir);
  return write_idx(path, 0x801, n, 1, lb, 4, 0);
}

/* ---- IDX ----------------------------------------------------------------- */

TEST(data_idx_plain) {
  char dir[P];
  tdir(dir, "idx-plain");
  REQUIRE(write_idx_split(dir, "train", 20, 3, 0));
  REQUIRE(write_idx_split(dir, "t10k", 6, 2, 0)); /* test labels only 0..1 */
  vmc_dataset *d = NULL;
  REQUIRE_OK(vmc_dataset_open(dir, VMC_SPLIT_TRAIN, &d));
  CHECK_EQ_INT(vmc_dataset_size(d), 20);
  int c, h, w;
  vmc_dataset_shape(d, &c, &h, &w);
  CHECK_EQ_INT(c, 1);
  CHECK_EQ_INT(h, SH);
  CHECK_EQ_INT(w, SW);
  CHECK_EQ_INT(vmc_dataset_classes(d), 3);
  CHECK(strcmp(d->name, "idx-plain") == 0);
  CHECK(strcmp(d->source, dir) == 0);
  int bad = 0;
  for (int i = 0; i < 20; i++) {
    bad += d->labels[i] != i % 3;
    for (int p = 0; p < SH * SW; p++) bad += d->images[i * SH * SW + p] != syn_pixel(i, p);
  }
  CHECK_EQ_INT(bad, 0);
  double mean, std;
  syn_stats(20, &mean, &std);
  CHECK_NEAR(d->mean[0], mean, 1e-6);
  CHECK_NEAR(d->std[0], std, 1e-6);
  vmc_dataset_free(d);

  /* The test split normalises with the train statistics and counts classes
   * over both splits. */
  REQUIRE_OK(vmc_dataset_open(dir, VMC_SPLIT_TEST, &d));
  CHECK_EQ_INT(vmc_dataset_size(d), 6);
  CHECK_EQ_INT(vmc_dataset_classes(d), 3);
  CHECK_NEAR(d->mean[0], mean, 1e-6);
  CHECK_NEAR(d->std[0], std, 1e-6);
  vmc_dataset_free(d);
}

TEST(data_idx_gz_fashion_constants) {
  char dir[P];
  tdir(dir, "my-fashion-gz/"); /* trailing slash: name is still the folder's */
  REQUIRE(write_idx_split(dir, "train", 12, 4, 1));
  REQUIRE(write_idx_split(dir, "t10k", 8, 4, 1));
  vmc_dataset *d = NULL;
  REQUIRE_OK(vmc_dataset_open(dir, VMC_SPLIT_TEST, &d));
  CHECK_EQ_INT(vmc_dataset_size(d), 8);
  CHECK_EQ_INT(vmc_dataset_classes(d), 4);
  CHECK(strcmp(d->name, "my-fashion-gz") == 0);
  CHECK_NEAR(d->mean[0], 0.2860, 1e-7);
  CHECK_NEAR(d->std[0], 0.3530, 1e-7);
  int bad = 0;
  for (int i = 0; i < 8; i++)
    for (int p = 0; p < SH * SW; p++) bad += d->images[i * SH * SW + p] != syn_pixel(i, p);
  CHECK_EQ_INT(bad, 0);
  vmc_dataset_free(d);
}

TEST(data_idx_errors) {
  char dir[P], img[P + 128], lab[P + 128];
  uint8_t px[4 * SH * SW] = {0}, lb[4] = {0, 1, 0, 1};
  uint32_t idims[3] = {4, SH, SW}, ldims[1] = {4};
  vmc_dataset *d = NULL;
  struct {
    const char *name;
    uint32_t imagic;
    size_t ibytes;       /* payload written */
    uint32_t n_labels;
    int gz;
    vmc_status want;
    const char *needle;
  } cases[] = {
      {"idx-bad-magic", 0x00000801, sizeof px, 4, 0, VMC_ERR_FORMAT, "magic"},
      {"idx-bad-magic-2", 0x12345678, sizeof px, 4, 1, VMC_ERR_FORMAT, "magic"},
      {"idx-truncated", 0x803, sizeof px - 3, 4, 0, VMC_ERR_FORMAT, "truncated"},
      {"idx-truncated-gz", 0x803, sizeof px - 1, 4, 1, VMC_ERR_FORMAT, "truncated"},
      {"idx-counts", 0x803, sizeof px, 3, 0, VMC_ERR_FORMAT, "labels"},
      {"idx-trailing", 0x803, sizeof px + 1, 4, 0, VMC_ERR_FORMAT, "past"},
  };
  uint8_t big[sizeof px + 1] = {0};
  memcpy(big, px, sizeof px);
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    tdir(dir, cases[k].name);
    snprintf(img, sizeof img, "%s/train-images-idx3-ubyte%s", dir, cases[k].gz ? ".gz" : "");
    snprintf(lab, sizeof lab, "%s/train-labels-idx1-ubyte", dir);
    ldims[0] = cases[k].n_labels;
    REQUIRE(write_idx(img, cases[k].imagic, idims, 3, big, cases[k].ibytes, cases[k].gz));
    REQUIRE(write_idx(lab, 0x801, ldims, 1, lb, cases[k].n_labels, 0));
    CHECK_ERR(vmc_dataset_open(dir, VMC_SPLIT_TRAIN, &d), cases[k].want, cases[k].needle);
    CHECK(d == NULL);
    if (!strstr(vmc_last_error(), cases[k].name))
      vmc_test_fail(__FILE__, __LINE__, "%s: message does not name the file: %s",
                    cases[k].name, vmc_last_error());
  }

  /* Empty images file, plain and gzipped (with good labels). */
  for (int gz = 0; gz < 2; gz++) {
    tdir(dir, gz ? "idx-empty-gz" : "idx-empty");
    snprintf(img, sizeof img, "%s/train-images-idx3-ubyte%s", dir, gz ? ".gz" : "");
    REQUIRE(write_bytes(img, "", 0, gz));
    REQUIRE(write_labels4(dir));
    CHECK_ERR(vmc_dataset_open(dir, VMC_SPLIT_TRAIN, &d), VMC_ERR_FORMAT, "empty");
  }
  /* Header cut inside the dims. */
  tdir(dir, "idx-short-header");
  REQUIRE(write_labels4(dir));
  snprintf(img, sizeof img, "%s/train-images-idx3-ubyte", dir);
  REQUIRE(write_bytes(img, "\0\0\x08\x03\0\0\0\x04\0", 9, 0));
  CHECK_ERR(vmc_dataset_open(dir, VMC_SPLIT_TRAIN, &d), VMC_ERR_FORMAT, "header");
  /* Absurd dims, zero dims. */
  uint32_t huge[3] = {2000000000u, 8000, 8000}, zero[3] = {0, SH, SW};
  tdir(dir, "idx-huge");
  REQUIRE(write_labels4(dir));
  snprintf(img, sizeof img, "%s/train-images-idx3-ubyte", dir);
  REQUIRE(write_idx(img, 0x803, huge, 3, px, sizeof px, 0));
  CHECK_ERR(vmc_dataset_open(dir, VMC_SPLIT_TRAIN, &d), VMC_ERR_FORMAT, "bytes");
  tdir(dir, "idx-zero");
  REQUIRE(write_labels4(dir));
  snprintf(img, sizeof img, "%s/train-images-idx3-ubyte", dir);
  REQUIRE(write_idx(img, 0x803, zero, 3, px, 0, 0));
  CHECK_ERR(vmc_dataset_open(dir, VMC_SPLIT_TRAIN, &d), VMC_ERR_FORMAT, "dimension 0");
  /* Corrupt gzip stream (valid gzip header, garbage after). */
  tdir(dir, "idx-corrupt-gz");
  snprintf(img, sizeof img, "%s/train-images-idx3-ubyte.gz", dir);
  REQUIRE(write_idx(img, 0x803, idims, 3, px, sizeof px, 1));
  {
    FILE *f = fopen(img, "r+b");
    REQUIRE(f);
    fseek(f, 12, SEEK_SET);
    fwrite("\xff\xff\xff\xff\xff\xff\xff\xff", 1, 8, f);
    fclose(f);
  }
  REQUIRE(write_labels4(dir));
  CHECK_ERR(vmc_dataset_open(dir, VMC_SPLIT_TRAIN, &d), VMC_OK, "idx-corrupt-gz");
  /* Labels missing; split missing. */
  tdir(dir, "idx-no-labels");
  snprintf(img, sizeof img, "%s/train-images-idx3-ubyte", dir);
  REQUIRE(write_idx(img, 0x803, idims, 3, px, sizeof px, 0));
  CHECK_ERR(vmc_dataset_open(dir, VMC_SPLIT_TRAIN, &d), VMC_ERR_NOT_FOUND, "labels");
  CHECK_ERR(vmc_dataset_open(dir, VMC_SPLIT_TEST, &d), VMC_ERR_NOT_FOUND, "t10k-images");
}

/* ---- missing data and bad arguments -------------------------------------- */

TEST(data_missing) {
  char dir[P];
  vmc_dataset *d = (vmc_dataset *)&d;
  CHECK_ERR(vmc_dataset_open(tpath(dir, "no-such-folder"), VMC_SPLIT_TRAIN, &d),
            VMC_ERR_NOT_FOUND, "no-such-folder");
  CHECK(d == NULL);
  CHECK_ERR(vmc_dataset_open(tdir(dir, "empty-folder"), VMC_SPLIT_TRAIN, &d),
            VMC_ERR_NOT_FOUND, "empty-folder");
  CHECK_ERR(vmc_dataset_open(NULL, VMC_SPLIT_TRAIN, &d), VMC_ERR_INVALID_ARG, NULL);
  CHECK_ERR(vmc_dataset_open("", VMC_SPLIT_TRAIN, &d), VMC_ERR_INVALID_ARG, NULL);
  CHECK_ERR(vmc_dataset_open("mnist", (vmc_split)7, &d), VMC_ERR_INVALID_ARG, NULL);
  CHECK_ERR(vmc_dataset_open("mnist", VMC_SPLIT_TRAIN, NULL), VMC_ERR_INVALID_ARG, NULL);
  char file[P];
  REQUIRE(write_bytes(tpath(file, "a-file"), "x", 1, 0));
  CHECK_ERR(vmc_dataset_open(file, VMC_SPLIT_TRAIN, &d), VMC_ERR_INVALID_ARG, "a-file");

  /* Named datasets: VMC_DATA pointing at an empty folder. */
  const char *old = getenv("VMC_DATA");
  char *saved = old ? strdup(old) : NULL;
  setenv("VMC_DATA", tdir(dir, "empty-data-root"), 1);
  struct stat sb;
  if (stat("/usr/share/datasets/mnist", &sb) != 0)
    CHECK_ERR(vmc_dataset_open("mnist", VMC_SPLIT_TRAIN, &d), VMC_ERR_NOT_FOUND,
              "empty-data-root/mnist");
  CHECK_ERR(vmc_dataset_open("cifar10", VMC_SPLIT_TEST, &d), VMC_ERR_NOT_FOUND,
            "cifar-10-binary.tar.gz");
  unsetenv("VMC_DATA");
  CHECK_ERR(vmc_dataset_open("cifar10", VMC_SPLIT_TEST, &d), VMC_ERR_NOT_FOUND,
            "VMC_DATA is not set");
  if (stat("/usr/share/datasets/fashion-mnist", &sb) != 0)
    CHECK_ERR(vmc_dataset_open("fashion-mnist", VMC_SPLIT_TEST, &d), VMC_ERR_NOT_FOUND,
              "apt-get install dataset-fashion-mnist");
  if (saved) {
    setenv("VMC_DATA", saved, 1);
    free(saved);
  }
}

/* ---- CIFAR-10 ------------------------------------------------------------ */

#define CREC 3073
static uint8_t cifar_pixel(int rec, int p) { return (uint8_t)((rec * 31 + p * 5 + p / 1024) & 255); }

/* n records numbered from first; labels (first+i) % 10 unless label >= 0. */
static int write_cifar(const char *path, int first, int n, int label, size_t cut) {
  size_t bytes = (size_t)n * CREC;
  uint8_t *buf = malloc(bytes + 1);
  for (int i = 0; i < n; i++) {
    uint8_t *r = buf + (size_t)i * CREC;
    r[0] = (uint8_t)(label >= 0 ? label : (first + i) % 10);
    for (int p = 0; p < 3072; p++) r[1 + p] = cifar_pixel(first + i, p);
  }
  int ok = write_bytes(path, buf, bytes - cut, 0);
  free(buf);
  return ok;
}

TEST(data_cifar) {
  char dir[P], path[P];
  tdir(dir, "cifar-small");
  REQUIRE(write_cifar(tpath(path, "cifar-small/data_batch_1.bin"), 0, 5, -1, 0));
  REQUIRE(write_cifar(tpath(path, "cifar-small/data_batch_2.bin"), 5, 3, -1, 0));
  REQUIRE(write_cifar(tpath(path, "cifar-small/test_batch.bin"), 100, 4, -1, 0));
  vmc_dataset *d = NULL;
  REQUIRE_OK(vmc_dataset_open(dir, VMC_SPLIT_TRAIN, &d));
  CHECK_EQ_INT(d->n, 8);
  CHECK_EQ_INT(d->c, 3);
  CHECK_EQ_INT(d->h, 32);
  CHECK_EQ_INT(d->w, 32);
  CHECK_EQ_INT(d->n_classes, 10);
  int bad = 0;
  for (int i = 0; i < 8; i++) {
    bad += d->labels[i] != i % 10;
    for (int p = 0; p < 3072; p++) bad += d->images[(size_t)i * 3072 + p] != cifar_pixel(i, p);
  }
  CHECK_EQ_INT(bad, 0);
  CHECK_NEAR(d->mean[1], 0.4822, 1e-7); /* "cifar" in the folder's name */
  CHECK_NEAR(d->std[2], 0.2616, 1e-7);
  vmc_dataset_free(d);
  REQUIRE_OK(vmc_dataset_open(dir, VMC_SPLIT_TEST, &d));
  CHECK_EQ_INT(d->n, 4);
  CHECK_EQ_INT(d->labels[3], 103 % 10);
  CHECK_EQ_INT(d->images[3 * 3072 + 2048], cifar_pixel(103, 2048));
  vmc_dataset_free(d);

  /* A folder without "cifar" in its name: statistics of the train split. */
  tdir(dir, "binbatches");
  REQUIRE(write_cifar(tpath(path, "binbatches/data_batch_1.bin"), 0, 2, -1, 0));
  REQUIRE(write_cifar(tpath(path, "binbatches/test_batch.bin"), 7, 2, -1, 0));
  REQUIRE_OK(vmc_dataset_open(dir, VMC_SPLIT_TEST, &d));
  for (int k = 0; k < 3; k++) {
    double s = 0, s2 = 0;
    for (int i = 0; i < 2; i++)
      for (int p = k * 1024; p < (k + 1) * 1024; p++) {
        double v = cifar_pixel(i, p) / 255.0;
        s += v;
        s2 += v * v;
      }
    double m = s / 2048;
    CHECK_NEAR(d->mean[k], m, 1e-6);
    CHECK_NEAR(d->std[k], sqrt(s2 / 2048 - m * m), 1e-6);
  }
  vmc_dataset_free(d);

  /* The tarball's layout: <dir>/cifar-10-batches-bin/. */
  tdir(dir, "unpacked/cifar-10-batches-bin");
  REQUIRE(write_cifar(tpath(path, "unpacked/cifar-10-batches-bin/test_batch.bin"), 0, 1, -1, 0));
  REQUIRE_OK(vmc_dataset_open(tpath(dir, "unpacked"), VMC_SPLIT_TEST, &d));
  CHECK_EQ_INT(d->n, 1);
  CHECK_NEAR(d->mean[0], 0.4914, 1e-7);
  vmc_dataset_free(d);

  /* Errors. */
  tdir(dir, "cifar-trunc");
  REQUIRE(write_cifar(tpath(path, "cifar-trunc/data_batch_1.bin"), 0, 3, -1, 100));
  CHECK_ERR(vmc_dataset_open(dir, VMC_SPLIT_TRAIN, &d), VMC_ERR_FORMAT, "data_batch_1.bin");
  CHECK(d == NULL);
  tdir(dir, "cifar-label");
  REQUIRE(write_cifar(tpath(path, "cifar-label/data_batch_1.bin"), 0, 3, 10, 0));
  CHECK_ERR(vmc_dataset_open(dir, VMC_SPLIT_TRAIN, &d), VMC_ERR_FORMAT, "label 10");
  tdir(dir, "cifar-empty");
  REQUIRE(write_bytes(tpath(path, "cifar-empty/test_batch.bin"), "", 0, 0));
  CHECK_ERR(vmc_dataset_open(dir, VMC_SPLIT_TEST, &d), VMC_ERR_FORMAT, "empty");
  CHECK_ERR(vmc_dataset_open(dir, VMC_SPLIT_TRAIN, &d), VMC_ERR_NOT_FOUND, "data_batch_1");
  tdir(dir, "cifar-gap");
  REQUIRE(write_cifar(tpath(path, "cifar-gap/data_batch_1.bin"), 0, 1, -1, 0));
  REQUIRE(write_cifar(tpath(path, "cifar-gap/data_batch_3.bin"), 0, 1, -1, 0));
  CHECK_ERR(vmc_dataset_open(dir, VMC_SPLIT_TRAIN, &d), VMC_ERR_NOT_FOUND, "data_batch_2");
}

/* ---- image folders -------------------------------------------------------- */

#define IW 6
#define IH 5

static int write_png(const char *path, int w, int h, int comp, const uint8_t *px) {
  return stbi_write_png(path, w, h, comp, px, w * comp) != 0;
}

/* RGB test image k: value of (y, x, ch). */
static uint8_t rgb_val(int k, int y, int x, int ch) {
  return (uint8_t)(k * 40 + y * 20 + x * 7 + ch * 60);
}

static void make_rgb(int k, uint8_t *px) {
  for (int y = 0; y < IH; y++)
    for (int x = 0; x < IW; x++)
      for (int ch = 0; ch < 3; ch++) px[(y * IW + x) * 3 + ch] = rgb_val(k, y, x, ch);
}

TEST(data_imgfolder) {
  char dir[P], path[P];
  uint8_t px[2 * IH * 2 * IW * 4];
  tdir(dir, "imgs/train/cat");
  tdir(dir, "imgs/train/dog");
  tdir(dir, "imgs/test/dog");
  make_rgb(0, px);
  REQUIRE(write_png(tpath(path, "imgs/train/cat/a.png"), IW, IH, 3, px));
  make_rgb(1, px);
  REQUIRE(write_png(tpath(path, "imgs/train/cat/b.png"), IW, IH, 3, px));
  /* Grey image: replicated into three channels. */
  for (int p = 0; p < IH * IW; p++) px[p] = (uint8_t)(p * 9);
  REQUIRE(write_png(tpath(path, "imgs/train/dog/c.png"), IW, IH, 1, px));
  /* RGBA image of twice the size in constant 2x2 blocks: an exact 2x
   * bilinear downscale (alpha dropped). */
  for (int y = 0; y < 2 * IH; y++)
    for (int x = 0; x < 2 * IW; x++)
      for (int ch = 0; ch < 4; ch++)
        px[(y * 2 * IW + x) * 4 + ch] = ch == 3 ? 128 : rgb_val(2, y / 2, x / 2, ch);
  REQUIRE(write_png(tpath(path, "imgs/train/dog/d.png"), 2 * IW, 2 * IH, 4, px));
  make_rgb(3, px);
  REQUIRE(write_png(tpath(path, "imgs/test/dog/e.png"), IW, IH, 3, px));
  /* A JPEG of another size in the test split (lossy: only its shape counts). */
  tdir(dir, "imgs/test/cat");
  for (int p = 0; p < 2 * IH * 2 * IW * 3; p++) px[p] = (uint8_t)(p % 200);
  REQUIRE(stbi_write_jpg(tpath(path, "imgs/test/cat/f.jpg"), 2 * IW, 2 * IH, 3, px, 95));
  REQUIRE(write_bytes(tpath(path, "imgs/train/dog/notes.txt"), "not an image", 12, 0));
  REQUIRE(write_bytes(tpath(path, "imgs/train/cat/.hidden.png"), "junk", 4, 0));

  vmc_dataset *d = NULL;
  REQUIRE_OK(vmc_dataset_open(tpath(dir, "imgs"), VMC_SPLIT_TRAIN, &d));
  CHECK_EQ_INT(d->n, 4);
  CHECK_EQ_INT(d->c, 3);
  CHECK_EQ_INT(d->h, IH);
  CHECK_EQ_INT(d->w, IW);
  CHECK_EQ_INT(d->n_classes, 2);
  CHECK(strcmp(d->name, "imgs") == 0);
  CHECK_EQ_INT(d->labels[0], 0);
  CHECK_EQ_INT(d->labels[1], 0);
  CHECK_EQ_INT(d->labels[2], 1);
  CHECK_EQ_INT(d->labels[3], 1);
  const size_t hw = IH * IW, chw = 3 * hw;
  int bad = 0;
  for (int y = 0; y < IH; y++)
    for (int x = 0; x < IW; x++)
      for (int ch = 0; ch < 3; ch++) {
        size_t o = ch * hw + (size_t)y * IW + x;
        bad += d->images[o] != rgb_val(0, y, x, ch);
        bad += d->images[chw + o] != rgb_val(1, y, x, ch);
        bad += d->images[2 * chw + o] != (uint8_t)((y * IW + x) * 9);
        bad += d->images[3 * chw + o] != rgb_val(2, y, x, ch);
      }
  CHECK_EQ_INT(bad, 0);
  /* Normalisation: the training split's statistics. */
  float m[3], s[3];
  for (int ch = 0; ch < 3; ch++) {
    double sum = 0, sq = 0;
    for (int i = 0; i < 4; i++)
      for (size_t p = 0; p < hw; p++) {
        double v = d->images[i * chw + ch * hw + p] / 255.0;
        sum += v;
        sq += v * v;
      }
    m[ch] = (float)(sum / (4 * hw));
    s[ch] = (float)sqrt(sq / (4 * hw) - (double)m[ch] * m[ch]);
    CHECK_NEAR(d->mean[ch], m[ch], 1e-6);
    CHECK_NEAR(d->std[ch], s[ch], 1e-6);
  }
  vmc_dataset_free(d);

  REQUIRE_OK(vmc_dataset_open(tpath(dir, "imgs"), VMC_SPLIT_TEST, &d));
  CHECK_EQ_INT(d->n, 2);
  CHECK_EQ_INT(d->c, 3);
  CHECK_EQ_INT(d->h, IH);
  CHECK_EQ_INT(d->w, IW);
  CHECK_EQ_INT(d->n_classes, 2);
  CHECK_EQ_INT(d->labels[0], 0);
  CHECK_EQ_INT(d->labels[1], 1);
  CHECK_EQ_INT(d->images[chw + 2 * hw + 3 * IW + 4], rgb_val(3, 3, 4, 2));
  for (int ch = 0; ch < 3; ch++) {
    CHECK_NEAR(d->mean[ch], m[ch], 1e-6);
    CHECK_NEAR(d->std[ch], s[ch], 1e-6);
  }
  vmc_dataset_free(d);

  /* A grey first image makes the dataset grey; RGB images are converted. */
  tdir(dir, "grey/train/a");
  for (int p = 0; p < IH * IW; p++) px[p] = (uint8_t)(200 - p);
  REQUIRE(write_png(tpath(path, "grey/train/a/1.png"), IW, IH, 1, px));
  make_rgb(0, px);
  REQUIRE(write_png(tpath(path, "grey/train/a/2.png"), IW, IH, 3, px));
  REQUIRE_OK(vmc_dataset_open(tpath(dir, "grey"), VMC_SPLIT_TRAIN, &d));
  CHECK_EQ_INT(d->c, 1);
  CHECK_EQ_INT(d->n, 2);
  CHECK_EQ_INT(d->n_classes, 1);
  CHECK_EQ_INT(d->images[7], 200 - 7);
  vmc_dataset_free(d);
}

TEST(data_imgfolder_errors) {
  char dir[P], path[P];
  uint8_t px[IH * IW * 3] = {0};
  vmc_dataset *d = NULL;
  /* An unreadable image, named in the message. */
  tdir(dir, "imgbad/train/x");
  REQUIRE(write_png(tpath(path, "imgbad/train/x/0.png"), IW, IH, 3, px));
  REQUIRE(write_bytes(tpath(path, "imgbad/train/x/1.png"), "garbage!", 8, 0));
  CHECK_ERR(vmc_dataset_open(tpath(dir, "imgbad"), VMC_SPLIT_TRAIN, &d), VMC_ERR_FORMAT,
            "imgbad/train/x/1.png");
  CHECK(d == NULL);
  /* A test class that train does not have. */
  tdir(dir, "imgbad/test/y");
  REQUIRE(write_png(tpath(path, "imgbad/test/y/0.png"), IW, IH, 3, px));
  CHECK_ERR(vmc_dataset_open(tpath(dir, "imgbad"), VMC_SPLIT_TEST, &d), VMC_ERR_FORMAT,
            "'y'");
  /* No test folder; no class folders; class folders without images. */
  tdir(dir, "imgnotest/train/a");
  REQUIRE(write_png(tpath(path, "imgnotest/train/a/0.png"), IW, IH, 3, px));
  CHECK_ERR(vmc_dataset_open(tpath(dir, "imgnotest"), VMC_SPLIT_TEST, &d),
            VMC_ERR_NOT_FOUND, "imgnotest/test");
  tdir(dir, "imgnoclass/train");
  CHECK_ERR(vmc_dataset_open(tpath(dir, "imgnoclass"), VMC_SPLIT_TRAIN, &d),
            VMC_ERR_FORMAT, "class");
  tdir(dir, "imgnoimg/train/a");
  CHECK_ERR(vmc_dataset_open(tpath(dir, "imgnoimg"), VMC_SPLIT_TRAIN, &d), VMC_ERR_FORMAT,
            "no images");
  /* The first image unreadable. */
  tdir(dir, "imgfirstbad/train/a");
  REQUIRE(write_bytes(tpath(path, "imgfirstbad/train/a/0.jpg"), "", 0, 0));
  CHECK_ERR(vmc_dataset_open(tpath(dir, "imgfirstbad"), VMC_SPLIT_TRAIN, &d),
            VMC_ERR_FORMAT, "imgfirstbad/train/a/0.jpg");
}

/* ---- batches and augmentation -------------------------------------------- */

/* n images of c x h x w with pixel = (i*13 + p*7) & 255, label i % 3. */
static vmc_dataset *mem_dataset(int n, int c, int h, int w) {
  size_t chw = (size_t)c * h * w;
  uint8_t *img = malloc(n * chw), *lab = malloc((size_t)n);
  for (int i = 0; i < n; i++) {
    lab[i] = (uint8_t)(i % 3);
    for (size_t p = 0; p < chw; p++) img[i * chw + p] = (uint8_t)((i * 13 + p * 7) & 255);
  }
  const float mean[3] = {0.5f, 0.25f, 0.75f}, std[3] = {0.5f, 0.2f, 0.1f};
  vmc_dataset *d = NULL;
  vmc_status st = vmc_dataset_from_memory("mem", n, c, h, w, 3, img, lab, mean, std, &d);
  free(img);
  free(lab);
  return st == VMC_OK ? d : NULL;
}

static float norm(const vmc_dataset *d, int k, int v) {
  return ((float)v / 255.0f - d->mean[k]) / d->std[k];
}

TEST(data_batch_plain) {
  vmc_dataset *d = mem_dataset(10, 3, 4, 5);
  REQUIRE(d);
  const int idx[4] = {7, 0, 3, 7};
  const size_t chw = 60;
  float x[4 * 60];
  int y[4];
  vmc_dataset_batch(d, idx, 4, NULL, NULL, x, y);
  double err = 0;
  for (int i = 0; i < 4; i++) {
    CHECK_EQ_INT(y[i], idx[i] % 3);
    for (size_t p = 0; p < chw; p++) {
      int k = (int)(p / 20);
      double want = ((idx[i] * 13 + p * 7) & 255) / 255.0;
      want = (want - d->mean[k]) / d->std[k];
      err = fmax(err, fabs(x[i * chw + p] - want));
    }
  }
  CHECK(err < 1e-5);
  /* An all-zero augment is no augmentation (and needs no rng). */
  vmc_augment none = {0, 0};
  float x2[4 * 60];
  vmc_dataset_batch(d, idx, 4, &none, NULL, x2, NULL);
  CHECK(memcmp(x, x2, sizeof x) == 0);
  vmc_dataset_free(d);

  /* from_memory validates its input and computes statistics when asked. */
  uint8_t img[4] = {0, 255, 0, 255}, lab[1] = {3};
  d = NULL;
  CHECK_ERR(vmc_dataset_from_memory("m", 1, 1, 2, 2, 3, img, lab, NULL, NULL, &d),
            VMC_ERR_INVALID_ARG, "label");
  CHECK_ERR(vmc_dataset_from_memory("m", 1, 2, 2, 2, 3, img, lab, NULL, NULL, &d),
            VMC_ERR_INVALID_ARG, NULL);
  lab[0] = 2;
  REQUIRE_OK(vmc_dataset_from_memory("m", 1, 1, 2, 2, 3, img, lab, NULL, NULL, &d));
  CHECK_NEAR(d->mean[0], 0.5, 1e-7);
  CHECK_NEAR(d->std[0], 0.5, 1e-7);
  vmc_dataset_free(d);
}

/* Reference: crop (dy, dx) of the zero-padded image, then optional flip. */
static float ref_aug(const vmc_dataset *d, int i, int k, int y, int x, int pad, int dy,
                     int dx, int flip) {
  int xs = flip ? d->w - 1 - x : x;
  int sy = y + dy - pad, sx = xs + dx - pad;
  int v = 0;
  if (sy >= 0 && sy < d->h && sx >= 0 && sx < d->w)
    v = d->images[(size_t)i * d->c * d->h * d->w + ((size_t)k * d->h + sy) * d->w + sx];
  return norm(d, k, v);
}

TEST(data_batch_augment) {
  enum { N = 300, C = 3, H = 12, W = 10, PAD = 2 }; /* 256 images > 64K floats: threaded */
  vmc_dataset *d = mem_dataset(N, C, H, W);
  REQUIRE(d);
  static int idx[N];
  for (int i = 0; i < N; i++) idx[i] = (i * 37) % N;
  const size_t chw = C * H * W;
  float *x = malloc(N * chw * sizeof *x), *x2 = malloc(N * chw * sizeof *x);
  int y[N];
  REQUIRE(x && x2);

  /* Crop + flip against the reference, drawing the documented sequence. */
  vmc_augment aug = {PAD, 1};
  vmc_rng rng, ref;
  vmc_rng_seed(&rng, 42);
  vmc_rng_seed(&ref, 42);
  vmc_dataset_batch(d, idx, N, &aug, &rng, x, y);
  int bad = 0, flips = 0, shifted = 0;
  for (int i = 0; i < N; i++) {
    int dy = (int)vmc_rng_below(&ref, 2 * PAD + 1);
    int dx = (int)vmc_rng_below(&ref, 2 * PAD + 1);
    int f = (int)vmc_rng_below(&ref, 2);
    flips += f;
    shifted += dy != PAD || dx != PAD;
    bad += y[i] != idx[i] % 3;
    for (int k = 0; k < C; k++)
      for (int yy = 0; yy < H; yy++)
        for (int xx = 0; xx < W; xx++) {
          float want = ref_aug(d, idx[i], k, yy, xx, PAD, dy, dx, f);
          bad += fabsf(x[i * chw + ((size_t)k * H + yy) * W + xx] - want) > 1e-6f;
        }
  }
  CHECK_EQ_INT(bad, 0);
  CHECK(flips > N / 4 && flips < 3 * N / 4);
  CHECK(shifted > N / 2);
  /* The rng advanced exactly as documented. */
  CHECK(vmc_rng_u64(&rng) == vmc_rng_u64(&ref));

  /* Same seed, same batch, whatever the thread count. */
  int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  vmc_rng_seed(&rng, 42);
  vmc_dataset_batch(d, idx, N, &aug, &rng, x2, NULL);
  omp_set_num_threads(threads > 1 ? threads : 4);
  CHECK(memcmp(x, x2, N * chw * sizeof *x) == 0);
  vmc_rng_seed(&rng, 42);
  vmc_dataset_batch(d, idx, N, &aug, &rng, x2, NULL);
  omp_set_num_threads(threads);
  CHECK(memcmp(x, x2, N * chw * sizeof *x) == 0);
  vmc_rng_seed(&rng, 43);
  vmc_dataset_batch(d, idx, N, &aug, &rng, x2, NULL);
  CHECK(memcmp(x, x2, N * chw * sizeof *x) != 0);

  /* Flip alone: each image is the original or its mirror. */
  vmc_augment fl = {0, 1};
  vmc_rng_seed(&rng, 7);
  vmc_dataset_batch(d, idx, 8, &fl, &rng, x, NULL);
  bad = 0;
  for (int i = 0; i < 8; i++) {
    int same = 1, mirror = 1;
    for (int k = 0; k < C; k++)
      for (int yy = 0; yy < H; yy++)
        for (int xx = 0; xx < W; xx++) {
          float v = x[i * chw + ((size_t)k * H + yy) * W + xx];
          same &= v == ref_aug(d, idx[i], k, yy, xx, 0, 0, 0, 0);
          mirror &= v == ref_aug(d, idx[i], k, yy, xx, 0, 0, 0, 1);
        }
    bad += !(same || mirror);
  }
  CHECK_EQ_INT(bad, 0);

  /* Crop alone keeps the shape, and a pad wider than the image is safe. */
  vmc_augment wide = {20, 0};
  vmc_rng_seed(&rng, 9);
  vmc_dataset_batch(d, idx, 16, &wide, &rng, x, NULL);
  int finite = 1;
  for (size_t p = 0; p < 16 * chw; p++) finite &= isfinite(x[p]);
  CHECK(finite);
  free(x);
  free(x2);
  vmc_dataset_free(d);
}

/* ---- allocation failures -------------------------------------------------- */

TEST(data_alloc_failures) {
  char dir[P];
  char a[P], b[P], path[P];
  uint8_t px[IH * IW * 3] = {1, 2, 3};
  tdir(dir, "idx-alloc");
  REQUIRE(write_idx_split(dir, "train", 5, 2, 1));
  REQUIRE(write_idx_split(dir, "t10k", 5, 2, 1));
  tdir(a, "bin-alloc");
  REQUIRE(write_cifar(tpath(path, "bin-alloc/data_batch_1.bin"), 0, 2, -1, 0));
  REQUIRE(write_cifar(tpath(path, "bin-alloc/data_batch_2.bin"), 2, 2, -1, 0));
  REQUIRE(write_cifar(tpath(path, "bin-alloc/test_batch.bin"), 4, 2, -1, 0));
  tdir(b, "img-alloc/train/a");
  tdir(b, "img-alloc/train/b");
  tdir(b, "img-alloc/test/b");
  REQUIRE(write_png(tpath(path, "img-alloc/train/a/0.png"), IW, IH, 3, px));
  REQUIRE(write_png(tpath(path, "img-alloc/train/a/1.png"), IW, IH, 3, px));
  REQUIRE(write_png(tpath(path, "img-alloc/train/b/0.png"), IW, IH, 1, px));
  REQUIRE(write_png(tpath(path, "img-alloc/test/b/0.png"), IW, IH, 1, px));
  tpath(b, "img-alloc");
  const char *specs[3] = {dir, a, b};
  for (int s = 0; s < 3; s++) {
    for (int split = 0; split < 2; split++) {
      int ok = 0;
      for (long k = 0; k < 200 && !ok; k++) {
        vmc_dataset *d = NULL;
        vmc_fail_alloc_after(k);
        vmc_clear_error();
        vmc_status st = vmc_dataset_open(specs[s], (vmc_split)split, &d);
        vmc_fail_alloc_after(-1);
        if (st == VMC_OK) {
          ok = 1;
          vmc_dataset_free(d);
        } else {
          CHECK(d == NULL);
          if (st != VMC_ERR_NOMEM || !vmc_last_error()[0])
            vmc_test_fail(__FILE__, __LINE__, "%s split %d, failing alloc %ld: %s: %s",
                          specs[s], split, k, vmc_status_str(st), vmc_last_error());
        }
      }
      CHECK(ok);
    }
  }
}

/* ---- the real Fashion-MNIST ----------------------------------------------- */

TEST(data_fashion_mnist_real) {
  struct stat sb;
  if (stat("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz", &sb) != 0)
    SKIP("dataset-fashion-mnist is not installed");
  const char *old = getenv("VMC_DATA");
  char *saved = old ? strdup(old) : NULL;
  unsetenv("VMC_DATA");
  vmc_dataset *d = NULL;
  vmc_status st = vmc_dataset_open("fashion-mnist", VMC_SPLIT_TEST, &d);
  if (saved) {
    setenv("VMC_DATA", saved, 1);
    free(saved);
  }
  REQUIRE_OK(st);
  CHECK_EQ_INT(vmc_dataset_size(d), 10000);
  CHECK_EQ_INT(vmc_dataset_classes(d), 10);
  int c, h, w;
  vmc_dataset_shape(d, &c, &h, &w);
  CHECK_EQ_INT(c, 1);
  CHECK_EQ_INT(h, 28);
  CHECK_EQ_INT(w, 28);
  CHECK(strcmp(d->name, "fashion-mnist") == 0);
  CHECK_NEAR(d->mean[0], 0.2860, 1e-7);
  CHECK_NEAR(d->std[0], 0.3530, 1e-7);
  int hist[10] = {0};
  for (int i = 0; i < d->n; i++) hist[d->labels[i]]++;
  for (int k = 0; k < 10; k++) CHECK_EQ_INT(hist[k], 1000);
  /* The first test images are an ankle boot, a pullover, two trousers. */
  CHECK_EQ_INT(d->labels[0], 9);
  CHECK_EQ_INT(d->labels[1], 2);
  CHECK_EQ_INT(d->labels[2], 1);
  CHECK_EQ_INT(d->labels[3], 1);
  vmc_dataset_free(d);
}

TEST(data_fashion_mnist_real_train_stats) {
  const char *dir = "/usr/share/datasets/fashion-mnist";
  char path[P];
  snprintf(path, P, "%s/train-images-idx3-ubyte.gz", dir);
  struct stat sb;
  if (stat(path, &sb) != 0) SKIP("dataset-fashion-mnist is not installed");
  vmc_dataset *d = NULL;
  char lab[P];
  snprintf(lab, sizeof lab, "%s/train-labels-idx1-ubyte.gz", dir);
  d = vmc_dataset_alloc();
  REQUIRE(d);
  vmc_status st = vmc_idx_load(path, lab, d);
  if (st != VMC_OK) vmc_dataset_free(d);
  REQUIRE_OK(st);
  CHECK_EQ_INT(d->n, 60000);
  /* The published constants are the training split's own statistics. */
  vmc_pixel_stats s;
  float mean[3], std[3];
  vmc_pixel_stats_init(&s, 1);
  vmc_pixel_stats_add(&s, d->images, (size_t)d->n, 28 * 28);
  vmc_pixel_stats_finish(&s, mean, std);
  CHECK_NEAR(mean[0], 0.2860, 5e-4);
  CHECK_NEAR(std[0], 0.3530, 5e-4);
  vmc_dataset_free(d);
}
