/* Datasets: resolving a spec to a folder, detecting its format, choosing the
 * normalisation, and the batch function (normalise + augment).
 *
 * Spec resolution (vmc_dataset_open):
 *   "fashion-mnist"  $VMC_DATA/fashion-mnist, then /usr/share/datasets/fashion-mnist
 *                    (Debian package dataset-fashion-mnist)
 *   "mnist"          $VMC_DATA/mnist, then /usr/share/datasets/mnist
 *   "cifar10"        $VMC_DATA/cifar10, $VMC_DATA/cifar10/cifar-10-batches-bin,
 *                    $VMC_DATA/cifar-10-batches-bin
 *   anything else    a folder, in which the first format found is used:
 *                    IDX files, CIFAR-10 batches, an image folder (train/),
 *                    or a cifar-10-batches-bin subfolder.
 * A named dataset uses the first candidate folder that holds the requested
 * split.
 *
 * Normalisation (mean/std of v/255, per channel):
 *   fashion-mnist 0.2860/0.3530; mnist 0.1307/0.3081;
 *   cifar10 (0.4914,0.4822,0.4465)/(0.2470,0.2435,0.2616).
 *   A folder given by path uses these constants when its format fits and its
 *   name says so ("fashion" for IDX, else "mnist" for IDX, "cifar" for
 *   CIFAR-10 batches); otherwise the statistics of its training split (of the
 *   requested split when the folder has no training split).  Image folders
 *   always use their training split's statistics. */
#include "data/data.h"

#include <assert.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PATH_CAP 4096
#define CIFAR_TRAIN_BATCHES 5
#define BATCH_CHUNK 256 /* images whose random draws are made at once */

static const float FASHION_MEAN[3] = {0.2860f, 0, 0}, FASHION_STD[3] = {0.3530f, 1, 1};
static const float MNIST_MEAN[3] = {0.1307f, 0, 0}, MNIST_STD[3] = {0.3081f, 1, 1};
static const float CIFAR_MEAN[3] = {0.4914f, 0.4822f, 0.4465f};
static const float CIFAR_STD[3] = {0.2470f, 0.2435f, 0.2616f};

/* ---- small helpers ------------------------------------------------------ */

static int is_file(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int is_dir(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static vmc_status join(char *buf, const char *a, const char *b) {
  int k = snprintf(buf, PATH_CAP, "%s/%s", a, b);
  if (k < 0 || k >= PATH_CAP)
    return vmc_error(VMC_ERR_INVALID_ARG, "path too long: %s/%s", a, b);
  return VMC_OK;
}

/* Last path component of path, without trailing slashes, into out. */
static void base_name(const char *path, char *out, size_t cap) {
  size_t end = strlen(path);
  while (end > 1 && path[end - 1] == '/') end--;
  size_t start = end;
  while (start > 0 && path[start - 1] != '/') start--;
  size_t len = end - start;
  if (len >= cap) len = cap - 1;
  memcpy(out, path + start, len);
  out[len] = '\0';
}

static int contains_nocase(const char *s, const char *word) {
  size_t n = strlen(word);
  for (; *s; s++) {
    size_t i = 0;
    while (i < n && s[i] && tolower((unsigned char)s[i]) == word[i]) i++;
    if (i == n) return 1;
  }
  return 0;
}

static void set_norm(vmc_dataset *d, const float mean[3], const float std[3]) {
  memcpy(d->mean, mean, sizeof d->mean);
  memcpy(d->std, std, sizeof d->std);
}

/* ---- pixel statistics --------------------------------------------------- */

void vmc_pixel_stats_init(vmc_pixel_stats *s, int c) {
  memset(s, 0, sizeof *s);
  s->c = c;
}

void vmc_pixel_stats_add(vmc_pixel_stats *s, const uint8_t *images, size_t n,
                         size_t hw) {
  for (size_t i = 0; i < n; i++)
    for (int k = 0; k < s->c; k++) {
      const uint8_t *p = images + (i * (size_t)s->c + (size_t)k) * hw;
      uint64_t sum = 0, sq = 0;
      for (size_t j = 0; j < hw; j++) {
        sum += p[j];
        sq += (uint64_t)p[j] * p[j];
      }
      s->sum[k] += sum;
      s->sumsq[k] += sq;
    }
  s->count += n * hw;
}

void vmc_pixel_stats_finish(const vmc_pixel_stats *s, float mean[3], float std[3]) {
  for (int k = 0; k < 3; k++) {
    mean[k] = 0;
    std[k] = 1;
    if (k >= s->c || s->count == 0) continue;
    double m = (double)s->sum[k] / (double)s->count;
    double var = (double)s->sumsq[k] / (double)s->count - m * m;
    double sd = sqrt(var > 0 ? var : 0) / 255.0;
    mean[k] = (float)(m / 255.0);
    std[k] = sd < 1e-6 ? 1.0f : (float)sd;
  }
}

static void stats_of(const vmc_dataset *d, float mean[3], float std[3]) {
  vmc_pixel_stats s;
  vmc_pixel_stats_init(&s, d->c);
  vmc_pixel_stats_add(&s, d->images, (size_t)d->n, (size_t)d->h * d->w);
  vmc_pixel_stats_finish(&s, mean, std);
}

/* ---- the record --------------------------------------------------------- */

vmc_dataset *vmc_dataset_alloc(void) { return vmc_malloc_plain(sizeof(vmc_dataset)); }

void vmc_dataset_free(vmc_dataset *d) {
  if (!d) return;
  vmc_free(d->images);
  vmc_free(d->labels);
  vmc_free(d);
}

int vmc_dataset_size(const vmc_dataset *d) { return d ? d->n : 0; }

void vmc_dataset_shape(const vmc_dataset *d, int *c, int *h, int *w) {
  if (c) *c = d ? d->c : 0;
  if (h) *h = d ? d->h : 0;
  if (w) *w = d ? d->w : 0;
}

int vmc_dataset_classes(const vmc_dataset *d) { return d ? d->n_classes : 0; }

vmc_status vmc_dataset_from_memory(const char *name, int n, int c, int h, int w,
                                   int n_classes, const uint8_t *images,
                                   const uint8_t *labels, const float *mean,
                                   const float *std, vmc_dataset **out) {
  if (!out) return vmc_error(VMC_ERR_INVALID_ARG, "vmc_dataset_from_memory: out is NULL");
  *out = NULL;
  if (n <= 0 || (c != 1 && c != 3) || h <= 0 || w <= 0 || h > VMC_DATA_MAX_SIDE ||
      w > VMC_DATA_MAX_SIDE || n_classes <= 0 || n_classes > 256)
    return vmc_error(VMC_ERR_INVALID_ARG,
                     "vmc_dataset_from_memory: bad shape n=%d c=%d h=%d w=%d "
                     "classes=%d (c must be 1 or 3, sides 1..%d, classes 1..256)",
                     n, c, h, w, n_classes, VMC_DATA_MAX_SIDE);
  if (!images || !labels)
    return vmc_error(VMC_ERR_INVALID_ARG, "vmc_dataset_from_memory: images or labels is NULL");
  size_t chw = (size_t)c * h * w, total;
  if (!vmc_mul_size(chw, (size_t)n, &total) || total > VMC_DATA_MAX_BYTES)
    return vmc_error(VMC_ERR_INVALID_ARG,
                     "vmc_dataset_from_memory: %d images of %zu bytes is too much", n, chw);
  for (int i = 0; i < n; i++)
    if (labels[i] >= n_classes)
      return vmc_error(VMC_ERR_INVALID_ARG,
                       "vmc_dataset_from_memory: label %d of image %d is not below %d "
                       "classes",
                       labels[i], i, n_classes);
  for (int k = 0; std && k < c; k++)
    if (!(std[k] > 0) || !isfinite(mean ? mean[k] : 0.0f))
      return vmc_error(VMC_ERR_INVALID_ARG,
                       "vmc_dataset_from_memory: std[%d] must be > 0 and mean finite", k);
  vmc_dataset *d = vmc_dataset_alloc();
  if (!d) return vmc_error(VMC_ERR_NOMEM, "vmc_dataset_from_memory: out of memory");
  d->images = vmc_alloc(total);
  d->labels = vmc_alloc((size_t)n);
  if (!d->images || !d->labels) {
    vmc_dataset_free(d);
    return vmc_error(VMC_ERR_NOMEM, "vmc_dataset_from_memory: cannot allocate %zu bytes",
                     total);
  }
  memcpy(d->images, images, total);
  memcpy(d->labels, labels, (size_t)n);
  d->n = n;
  d->c = c;
  d->h = h;
  d->w = w;
  d->n_classes = n_classes;
  snprintf(d->name, sizeof d->name, "%s", name ? name : "memory");
  snprintf(d->source, sizeof d->source, "(memory)");
  if (mean && std) {
    for (int k = 0; k < 3; k++) {
      d->mean[k] = k < c ? mean[k] : 0;
      d->std[k] = k < c ? std[k] : 1;
    }
  } else {
    stats_of(d, d->mean, d->std);
  }
  *out = d;
  return VMC_OK;
}

/* ---- format detection inside one folder --------------------------------- */

/* The IDX file dir/<prefix>-<kind>-idx<N>-ubyte, with the usual spellings
 * (".gz" or not, "-idx" or ".idx").  Returns 1 and the path if present. */
static int find_idx(const char *dir, const char *prefix, const char *kind, int ndim,
                    char *path) {
  static const char *const form[] = {"%s/%s-%s-idx%d-ubyte.gz", "%s/%s-%s-idx%d-ubyte",
                                     "%s/%s-%s.idx%d-ubyte.gz", "%s/%s-%s.idx%d-ubyte"};
  for (size_t i = 0; i < sizeof form / sizeof form[0]; i++) {
    int k = snprintf(path, PATH_CAP, form[i], dir, prefix, kind, ndim);
    if (k > 0 && k < PATH_CAP && is_file(path)) return 1;
  }
  return 0;
}

static const char *idx_prefix(vmc_split split) {
  return split == VMC_SPLIT_TRAIN ? "train" : "t10k";
}

/* What a folder holds. */
typedef enum { FMT_NONE = 0, FMT_IDX, FMT_CIFAR, FMT_IMGFOLDER } data_format;

static data_format detect(const char *dir) {
  char path[PATH_CAP];
  if (find_idx(dir, "train", "images", 3, path) || find_idx(dir, "t10k", "images", 3, path))
    return FMT_IDX;
  if ((join(path, dir, "data_batch_1.bin") == VMC_OK && is_file(path)) ||
      (join(path, dir, "test_batch.bin") == VMC_OK && is_file(path)))
    return FMT_CIFAR;
  if (join(path, dir, "train") == VMC_OK && is_dir(path)) return FMT_IMGFOLDER;
  return FMT_NONE;
}

/* Does dir hold the files of this split (for choosing among candidates)? */
static int has_split(const char *dir, vmc_split split) {
  char path[PATH_CAP];
  switch (detect(dir)) {
  case FMT_IDX: return find_idx(dir, idx_prefix(split), "images", 3, path);
  case FMT_CIFAR:
    return join(path, dir, split == VMC_SPLIT_TRAIN ? "data_batch_1.bin" : "test_batch.bin") ==
               VMC_OK &&
           is_file(path);
  case FMT_IMGFOLDER:
    return join(path, dir, split == VMC_SPLIT_TRAIN ? "train" : "test") == VMC_OK &&
           is_dir(path);
  default: return 0;
  }
}

/* Load IDX split from dir into d (no normalisation yet). */
static vmc_status load_idx_split(const char *dir, vmc_split split, vmc_dataset *d) {
  char images[PATH_CAP], labels[PATH_CAP];
  const char *p = idx_prefix(split);
  if (!find_idx(dir, p, "images", 3, images))
    return vmc_error(VMC_ERR_NOT_FOUND,
                     "%s: has IDX files but no %s-images-idx3-ubyte[.gz] for the %s split",
                     dir, p, split == VMC_SPLIT_TRAIN ? "train" : "test");
  if (!find_idx(dir, p, "labels", 1, labels))
    return vmc_error(VMC_ERR_NOT_FOUND, "%s: found %s but no %s-labels-idx1-ubyte[.gz]",
                     dir, images, p);
  return vmc_idx_load(images, labels, d);
}

static vmc_status open_idx(const char *dir, vmc_split split, const char *name,
                           vmc_dataset *d) {
  VMC_TRY(load_idx_split(dir, split, d));
  /* Classes: the largest label of either split, so both splits agree. */
  char other[PATH_CAP];
  vmc_split osplit = split == VMC_SPLIT_TRAIN ? VMC_SPLIT_TEST : VMC_SPLIT_TRAIN;
  int omax = -1;
  if (find_idx(dir, idx_prefix(osplit), "labels", 1, other)) {
    if (vmc_idx_max_label(other, &omax) != VMC_OK) {
      omax = -1; /* the other split's problems surface when it is opened */
      vmc_clear_error();
    }
  }
  if (omax + 1 > d->n_classes) d->n_classes = omax + 1;

  if (contains_nocase(name, "fashion")) {
    set_norm(d, FASHION_MEAN, FASHION_STD);
  } else if (contains_nocase(name, "mnist")) {
    set_norm(d, MNIST_MEAN, MNIST_STD);
  } else if (split == VMC_SPLIT_TRAIN ||
             !find_idx(dir, idx_prefix(VMC_SPLIT_TRAIN), "images", 3, other)) {
    stats_of(d, d->mean, d->std);
  } else {
    vmc_dataset train = {0};
    VMC_TRY(load_idx_split(dir, VMC_SPLIT_TRAIN, &train));
    vmc_status st = VMC_OK;
    if (train.c != d->c || train.h != d->h || train.w != d->w)
      st = vmc_error(VMC_ERR_SHAPE, "%s: train images are %dx%d but test images %dx%d",
                     dir, train.h, train.w, d->h, d->w);
    else
      stats_of(&train, d->mean, d->std);
    vmc_free(train.images);
    vmc_free(train.labels);
    VMC_TRY(st);
  }
  return VMC_OK;
}

/* CIFAR-10 batch files of a split: data_batch_1.bin .. data_batch_5.bin
 * (consecutive, at least the first) or test_batch.bin. */
static vmc_status load_cifar_split(const char *dir, vmc_split split, vmc_dataset *d) {
  char paths[CIFAR_TRAIN_BATCHES][PATH_CAP];
  const char *ptrs[CIFAR_TRAIN_BATCHES];
  int n = 0;
  if (split == VMC_SPLIT_TEST) {
    VMC_TRY(join(paths[0], dir, "test_batch.bin"));
    if (!is_file(paths[0]))
      return vmc_error(VMC_ERR_NOT_FOUND, "%s: CIFAR-10 folder without test_batch.bin", dir);
    n = 1;
  } else {
    for (int i = 0; i < CIFAR_TRAIN_BATCHES; i++) {
      char file[32];
      snprintf(file, sizeof file, "data_batch_%d.bin", i + 1);
      VMC_TRY(join(paths[n], dir, file));
      if (!is_file(paths[n])) break;
      n++;
    }
    if (n == 0)
      return vmc_error(VMC_ERR_NOT_FOUND,
                       "%s: CIFAR-10 folder without data_batch_1.bin", dir);
    for (int i = n; i < CIFAR_TRAIN_BATCHES; i++) { /* a gap means a lost file */
      char file[32], path[PATH_CAP];
      snprintf(file, sizeof file, "data_batch_%d.bin", i + 1);
      VMC_TRY(join(path, dir, file));
      if (is_file(path))
        return vmc_error(VMC_ERR_NOT_FOUND, "%s: has %s but no data_batch_%d.bin", dir,
                         file, n + 1);
    }
  }
  for (int i = 0; i < n; i++) ptrs[i] = paths[i];
  return vmc_cifar_load(ptrs, n, d);
}

static vmc_status open_cifar(const char *dir, vmc_split split, const char *name,
                             vmc_dataset *d) {
  VMC_TRY(load_cifar_split(dir, split, d));
  char path[PATH_CAP];
  if (contains_nocase(name, "cifar")) {
    set_norm(d, CIFAR_MEAN, CIFAR_STD);
  } else if (split == VMC_SPLIT_TRAIN ||
             !(join(path, dir, "data_batch_1.bin") == VMC_OK && is_file(path))) {
    stats_of(d, d->mean, d->std);
  } else {
    vmc_dataset train = {0};
    VMC_TRY(load_cifar_split(dir, VMC_SPLIT_TRAIN, &train));
    stats_of(&train, d->mean, d->std);
    vmc_free(train.images);
    vmc_free(train.labels);
  }
  return VMC_OK;
}

/* Open the dataset in folder dir; name picks normalisation constants. */
static vmc_status open_folder(const char *dir, vmc_split split, const char *name,
                              vmc_dataset *d) {
  char sub[PATH_CAP];
  switch (detect(dir)) {
  case FMT_IDX: VMC_TRY(open_idx(dir, split, name, d)); break;
  case FMT_CIFAR: VMC_TRY(open_cifar(dir, split, name, d)); break;
  case FMT_IMGFOLDER: VMC_TRY(vmc_imgfolder_load(dir, split, d)); break;
  default:
    if (join(sub, dir, "cifar-10-batches-bin") == VMC_OK && is_dir(sub) &&
        detect(sub) == FMT_CIFAR)
      return open_folder(sub, split, "cifar-10-batches-bin", d);
    return vmc_error(VMC_ERR_NOT_FOUND,
                     "%s: no dataset found: expected IDX files "
                     "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                     "t10k-...), CIFAR-10 batches (data_batch_1.bin .. "
                     "data_batch_5.bin, test_batch.bin) or an image folder "
                     "(train/<class>/*.png, test/<class>/*.png)",
                     dir);
  }
  snprintf(d->source, sizeof d->source, "%s", dir);
  return VMC_OK;
}

/* ---- named datasets ----------------------------------------------------- */

typedef struct named_dataset {
  const char *name;
  const char *subdirs[3];  /* under $VMC_DATA */
  const char *system_dir;  /* or NULL */
  const char *how;         /* how to get it */
} named_dataset;

static const named_dataset NAMED[] = {
    {"fashion-mnist", {"fashion-mnist", NULL, NULL}, "/usr/share/datasets/fashion-mnist",
     "install it with `apt-get install dataset-fashion-mnist` or set VMC_DATA to a "
     "folder holding fashion-mnist/train-images-idx3-ubyte.gz and the other three IDX "
     "files"},
    {"mnist", {"mnist", NULL, NULL}, "/usr/share/datasets/mnist",
     "put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
     "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in $VMC_DATA/mnist"},
    {"cifar10", {"cifar10", "cifar10/cifar-10-batches-bin", "cifar-10-batches-bin"}, NULL,
     "download https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz and unpack it "
     "with `tar xzf cifar-10-binary.tar.gz -C $VMC_DATA`"},
};

static const named_dataset *find_named(const char *spec) {
  for (size_t i = 0; i < sizeof NAMED / sizeof NAMED[0]; i++)
    if (strcmp(spec, NAMED[i].name) == 0) return &NAMED[i];
  if (strcmp(spec, "cifar-10") == 0) return &NAMED[2];
  if (strcmp(spec, "fashion_mnist") == 0) return &NAMED[0];
  return NULL;
}

static vmc_status open_named(const named_dataset *nd, vmc_split split, vmc_dataset *d) {
  const char *root = getenv("VMC_DATA");
  char cand[4][PATH_CAP];
  int n = 0;
  for (int i = 0; i < 3 && nd->subdirs[i] && root && *root; i++)
    if (join(cand[n], root, nd->subdirs[i]) == VMC_OK) n++;
  if (nd->system_dir) snprintf(cand[n++], PATH_CAP, "%s", nd->system_dir);
  for (int i = 0; i < n; i++)
    if (has_split(cand[i], split)) {
      VMC_TRY(open_folder(cand[i], split, nd->name, d));
      return VMC_OK;
    }
  char where[1024] = "";
  size_t len = 0;
  if (!root || !*root) {
    int k = snprintf(where, sizeof where, "$VMC_DATA/%s (VMC_DATA is not set)",
                     nd->subdirs[0]);
    len = k > 0 ? (size_t)k : 0;
  }
  for (int i = 0; i < n && len < sizeof where; i++) {
    int k = snprintf(where + len, sizeof where - len, "%s%s", len ? ", " : "", cand[i]);
    if (k < 0) break;
    len += (size_t)k;
  }
  return vmc_error(VMC_ERR_NOT_FOUND, "%s (%s split) not found in %s: %s", nd->name,
                   split == VMC_SPLIT_TRAIN ? "train" : "test", where, nd->how);
}

vmc_status vmc_dataset_open(const char *spec, vmc_split split, vmc_dataset **out) {
  if (!out) return vmc_error(VMC_ERR_INVALID_ARG, "vmc_dataset_open: out is NULL");
  *out = NULL;
  if (!spec || !*spec)
    return vmc_error(VMC_ERR_INVALID_ARG,
                     "vmc_dataset_open: empty dataset spec (give fashion-mnist, mnist, "
                     "cifar10 or a folder)");
  if (split != VMC_SPLIT_TRAIN && split != VMC_SPLIT_TEST)
    return vmc_error(VMC_ERR_INVALID_ARG, "vmc_dataset_open: bad split %d", (int)split);
  vmc_dataset *d = vmc_dataset_alloc();
  if (!d) return vmc_error(VMC_ERR_NOMEM, "vmc_dataset_open: out of memory");

  vmc_status st;
  const named_dataset *nd = find_named(spec);
  if (nd) {
    st = open_named(nd, split, d);
    if (st == VMC_OK) snprintf(d->name, sizeof d->name, "%s", nd->name);
  } else if (!is_dir(spec)) {
    struct stat sb;
    st = stat(spec, &sb) == 0
             ? vmc_error(VMC_ERR_INVALID_ARG,
                         "dataset %s is a file; give the folder that holds it", spec)
             : vmc_error(VMC_ERR_NOT_FOUND,
                         "dataset %s not found: neither a folder nor one of "
                         "fashion-mnist, mnist, cifar10",
                         spec);
  } else {
    char name[256];
    base_name(spec, name, sizeof name);
    st = open_folder(spec, split, name, d);
    if (st == VMC_OK) base_name(spec, d->name, sizeof d->name);
  }
  if (st != VMC_OK) {
    vmc_dataset_free(d);
    return st;
  }
  *out = d;
  return VMC_OK;
}

/* ---- batches ------------------------------------------------------------ */

typedef struct aug_draw {
  int dy, dx, flip;
} aug_draw;

/* One image with crop offset (dy, dx) in [0, 2*pad] and optional flip. */
static void augment_one(const uint8_t *src, int c, int h, int w, int pad,
                        aug_draw a, const float (*lut)[256], float *dst) {
  size_t hw = (size_t)h * w;
  for (int k = 0; k < c; k++) {
    const uint8_t *s = src + (size_t)k * hw;
    float *o = dst + (size_t)k * hw;
    const float zero = lut[k][0];
    for (int y = 0; y < h; y++) {
      long sy = (long)y + a.dy - pad;
      float *orow = o + (size_t)y * w;
      if (sy < 0 || sy >= h) {
        for (int x = 0; x < w; x++) orow[x] = zero;
        continue;
      }
      const uint8_t *srow = s + (size_t)sy * w;
      for (int x = 0; x < w; x++) {
        long sx = (long)(a.flip ? w - 1 - x : x) + a.dx - pad;
        orow[x] = sx >= 0 && sx < w ? lut[k][srow[sx]] : zero;
      }
    }
  }
}

void vmc_dataset_batch(const vmc_dataset *d, const int *idx, int n,
                       const vmc_augment *aug, vmc_rng *rng, float *x, int *y) {
  const int c = d->c, h = d->h, w = d->w;
  const size_t chw = (size_t)c * h * w;
  float lut[3][256];
  for (int k = 0; k < c; k++)
    for (int v = 0; v < 256; v++)
      lut[k][v] = ((float)v / 255.0f - d->mean[k]) / d->std[k];
  for (int i = 0; i < n; i++) assert(idx[i] >= 0 && idx[i] < d->n);

  const int pad = aug && aug->crop_pad > 0 ? aug->crop_pad : 0;
  const int flip = aug && aug->flip;
  if (!pad && !flip) {
    const size_t hw = (size_t)h * w;
#pragma omp parallel for schedule(static) if ((size_t)n * chw > (1u << 16))
    for (int i = 0; i < n; i++) {
      const uint8_t *s = d->images + (size_t)idx[i] * chw;
      float *o = x + (size_t)i * chw;
      for (int k = 0; k < c; k++)
        for (size_t j = 0; j < hw; j++) o[(size_t)k * hw + j] = lut[k][s[(size_t)k * hw + j]];
    }
  } else {
    assert(rng);
    const uint32_t span = (uint32_t)pad * 2u + 1u;
    aug_draw draws[BATCH_CHUNK];
    for (int base = 0; base < n; base += BATCH_CHUNK) {
      int m = n - base < BATCH_CHUNK ? n - base : BATCH_CHUNK;
      for (int i = 0; i < m; i++) { /* serial, fixed order: dy, dx, flip */
        draws[i].dy = pad ? (int)vmc_rng_below(rng, span) : pad;
        draws[i].dx = pad ? (int)vmc_rng_below(rng, span) : pad;
        draws[i].flip = flip ? (int)vmc_rng_below(rng, 2) : 0;
      }
#pragma omp parallel for schedule(static) if ((size_t)m * chw > (1u << 16))
      for (int i = 0; i < m; i++)
        augment_one(d->images + (size_t)idx[base + i] * chw, c, h, w, pad, draws[i],
                    (const float(*)[256])lut, x + (size_t)(base + i) * chw);
    }
  }
  if (y)
    for (int i = 0; i < n; i++) y[i] = d->labels[idx[i]];
}
