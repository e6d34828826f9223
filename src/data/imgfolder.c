/* Image folders: root/train/<class>/<image> and root/test/<class>/<image>,
 * decoded with stb_image (Debian's libstb: PNG, JPEG, BMP, GIF, TGA, PNM).
 *
 * Classes are the sorted subfolder names of train/; test/ may hold a subset
 * of them.  Files in a class folder are taken in sorted order; files whose
 * extension is not an image's are ignored, hidden entries too.  Every image
 * is converted to the channel count (1 for grey or grey+alpha, 3 otherwise;
 * alpha is dropped) and size of the first training image, resizing with
 * bilinear interpolation (half-pixel centres, no antialiasing) when its size
 * differs.  Images decode in parallel; the error reported is always the one
 * of the first failing file in order. */
#include "data/data.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <stb/stb_image.h>

#define PATH_CAP 4096
#define BLOCK_IMAGES 256 /* images per block when only statistics are needed */

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_names(char **names, int count) {
  if (!names) return;
  for (int i = 0; i < count; i++) vmc_free(names[i]);
  vmc_free(names);
}

static int is_image_name(const char *name) {
  static const char *const ext[] = {"png", "jpg", "jpeg", "bmp", "gif",
                                    "tga", "pgm", "ppm",  "pnm"};
  const char *dot = strrchr(name, '.');
  if (!dot) return 0;
  for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++)
    if (strcasecmp(dot + 1, ext[i]) == 0) return 1;
  return 0;
}

static vmc_status join(char *buf, const char *a, const char *b) {
  int k = snprintf(buf, PATH_CAP, "%s/%s", a, b);
  if (k < 0 || k >= PATH_CAP)
    return vmc_error(VMC_ERR_INVALID_ARG, "path too long: %s/%s", a, b);
  return VMC_OK;
}

/* Sorted names of the entries of dir: subfolders (want_dirs) or image files. */
static vmc_status list_dir(const char *dir, int want_dirs, char ***names_out,
                           int *count_out) {
  *names_out = NULL;
  *count_out = 0;
  DIR *dp = opendir(dir);
  if (!dp) {
    if (errno == ENOENT || errno == ENOTDIR)
      return vmc_error(VMC_ERR_NOT_FOUND, "%s: folder not found", dir);
    return vmc_error(VMC_ERR_IO, "%s: cannot open folder: %s", dir, strerror(errno));
  }
  char **names = NULL;
  int count = 0, cap = 0;
  vmc_status st = VMC_OK;
  char path[PATH_CAP];
  struct dirent *e;
  while ((e = readdir(dp)) != NULL) {
    if (e->d_name[0] == '.') continue;
    int is_dir, is_reg;
    if (e->d_type == DT_DIR || e->d_type == DT_REG) {
      is_dir = e->d_type == DT_DIR;
      is_reg = e->d_type == DT_REG;
    } else { /* unknown type or a symbolic link: ask stat */
      struct stat sb;
      if ((st = join(path, dir, e->d_name)) != VMC_OK) goto fail;
      if (stat(path, &sb) != 0) continue; /* dangling link */
      is_dir = S_ISDIR(sb.st_mode);
      is_reg = S_ISREG(sb.st_mode);
    }
    if (want_dirs ? !is_dir : !(is_reg && is_image_name(e->d_name))) continue;
    if (count == cap) {
      if (cap >= INT_MAX / 2) {
        st = vmc_error(VMC_ERR_UNSUPPORTED, "%s: too many entries", dir);
        goto fail;
      }
      int ncap = cap ? cap * 2 : 64;
      char **nn = vmc_realloc_plain(names, (size_t)ncap * sizeof *nn);
      if (!nn) {
        st = vmc_error(VMC_ERR_NOMEM, "%s: out of memory listing the folder", dir);
        goto fail;
      }
      names = nn;
      cap = ncap;
    }
    size_t len = strlen(e->d_name);
    char *s = vmc_malloc_plain(len + 1);
    if (!s) {
      st = vmc_error(VMC_ERR_NOMEM, "%s: out of memory listing the folder", dir);
      goto fail;
    }
    memcpy(s, e->d_name, len + 1);
    names[count++] = s;
  }
  closedir(dp);
  if (count > 1) qsort(names, (size_t)count, sizeof *names, cmp_str);
  *names_out = names;
  *count_out = count;
  return VMC_OK;
fail:
  closedir(dp);
  free_names(names, count);
  return st;
}

/* The images of one split: full paths and labels, in class then file order. */
typedef struct file_list {
  char **paths;
  uint8_t *labels;
  int n, cap;
} file_list;

static void file_list_free(file_list *l) {
  free_names(l->paths, l->n);
  vmc_free(l->labels);
  memset(l, 0, sizeof *l);
}

static vmc_status file_list_push(file_list *l, const char *path, int label) {
  if (l->n == l->cap) {
    if (l->cap >= INT_MAX / 2)
      return vmc_error(VMC_ERR_UNSUPPORTED, "%s: too many images", path);
    int ncap = l->cap ? l->cap * 2 : 256;
    char **np = vmc_realloc_plain(l->paths, (size_t)ncap * sizeof *np);
    if (!np) return vmc_error(VMC_ERR_NOMEM, "out of memory listing images");
    l->paths = np;
    uint8_t *nl = vmc_realloc_plain(l->labels, (size_t)ncap);
    if (!nl) return vmc_error(VMC_ERR_NOMEM, "out of memory listing images");
    l->labels = nl;
    l->cap = ncap;
  }
  size_t len = strlen(path);
  char *s = vmc_malloc_plain(len + 1);
  if (!s) return vmc_error(VMC_ERR_NOMEM, "out of memory listing images");
  memcpy(s, path, len + 1);
  l->paths[l->n] = s;
  l->labels[l->n] = (uint8_t)label;
  l->n++;
  return VMC_OK;
}

/* The class names of root/train (sorted subfolders). */
static vmc_status list_classes(const char *root, char ***classes, int *n_classes) {
  char dir[PATH_CAP];
  VMC_TRY(join(dir, root, "train"));
  VMC_TRY(list_dir(dir, 1, classes, n_classes));
  if (*n_classes == 0) {
    vmc_free(*classes);
    *classes = NULL;
    return vmc_error(VMC_ERR_FORMAT, "%s: no class subfolders (expected %s/<class>/<image>)",
                     dir, dir);
  }
  if (*n_classes > 256) {
    free_names(*classes, *n_classes);
    *classes = NULL;
    return vmc_error(VMC_ERR_UNSUPPORTED, "%s: %d classes (at most 256 are supported)",
                     dir, *n_classes);
  }
  return VMC_OK;
}

/* All images of root/<split>, labelled by their class's index in classes. */
static vmc_status list_split(const char *root, const char *split, char **classes,
                             int n_classes, file_list *out) {
  memset(out, 0, sizeof *out);
  char dir[PATH_CAP], cdir[PATH_CAP], path[PATH_CAP];
  VMC_TRY(join(dir, root, split));
  char **sub = NULL;
  int nsub = 0;
  VMC_TRY(list_dir(dir, 1, &sub, &nsub));
  vmc_status st = VMC_OK;
  for (int s = 0; s < nsub && st == VMC_OK; s++) {
    char **hit = bsearch(&sub[s], classes, (size_t)n_classes, sizeof *classes, cmp_str);
    if (!hit) {
      st = vmc_error(VMC_ERR_FORMAT, "%s/%s: class '%s' has no folder in %s/train",
                     dir, sub[s], sub[s], root);
      break;
    }
    int label = (int)(hit - classes);
    if ((st = join(cdir, dir, sub[s])) != VMC_OK) break;
    char **files = NULL;
    int nfiles = 0;
    if ((st = list_dir(cdir, 0, &files, &nfiles)) != VMC_OK) break;
    for (int f = 0; f < nfiles && st == VMC_OK; f++) {
      st = join(path, cdir, files[f]);
      if (st == VMC_OK) st = file_list_push(out, path, label);
    }
    free_names(files, nfiles);
  }
  free_names(sub, nsub);
  if (st == VMC_OK && out->n == 0)
    st = vmc_error(VMC_ERR_FORMAT,
                   "%s: no images (expected %s/<class>/*.png or *.jpg)", dir, dir);
  if (st != VMC_OK) file_list_free(out);
  return st;
}

/* Bilinear resize of an interleaved HWC image (sh x sw x c) into CHW
 * (c x h x w), half-pixel centres. */
static void resize_bilinear(const uint8_t *src, int sh, int sw, int c, uint8_t *dst,
                            int h, int w) {
  float ry = (float)sh / (float)h, rx = (float)sw / (float)w;
  for (int y = 0; y < h; y++) {
    float fy = ((float)y + 0.5f) * ry - 0.5f;
    if (fy < 0) fy = 0;
    int y0 = (int)fy;
    if (y0 > sh - 1) y0 = sh - 1;
    int y1 = y0 + 1 < sh ? y0 + 1 : sh - 1;
    float wy = fy - (float)y0;
    for (int x = 0; x < w; x++) {
      float fx = ((float)x + 0.5f) * rx - 0.5f;
      if (fx < 0) fx = 0;
      int x0 = (int)fx;
      if (x0 > sw - 1) x0 = sw - 1;
      int x1 = x0 + 1 < sw ? x0 + 1 : sw - 1;
      float wx = fx - (float)x0;
      for (int k = 0; k < c; k++) {
        float a = src[((size_t)y0 * sw + x0) * c + k];
        float b = src[((size_t)y0 * sw + x1) * c + k];
        float cc = src[((size_t)y1 * sw + x0) * c + k];
        float dd = src[((size_t)y1 * sw + x1) * c + k];
        float v = (1 - wy) * ((1 - wx) * a + wx * b) + wy * ((1 - wx) * cc + wx * dd);
        int iv = (int)lrintf(v);
        dst[(size_t)k * h * w + (size_t)y * w + x] =
            (uint8_t)(iv < 0 ? 0 : iv > 255 ? 255 : iv);
      }
    }
  }
}

/* Decode one image into dst (c x h x w, CHW).  On failure, reason gets
 * stb's message. */
static int load_image(const char *path, int c, int h, int w, uint8_t *dst,
                      char *reason, size_t reason_cap) {
  int iw = 0, ih = 0, ic = 0;
  uint8_t *px = stbi_load(path, &iw, &ih, &ic, c);
  if (!px) {
    const char *r = stbi_failure_reason();
    snprintf(reason, reason_cap, "%s", r ? r : "unknown error");
    return 0;
  }
  if (ih == h && iw == w) {
    size_t hw = (size_t)h * w;
    for (size_t p = 0; p < hw; p++)
      for (int k = 0; k < c; k++) dst[(size_t)k * hw + p] = px[p * c + k];
  } else {
    resize_bilinear(px, ih, iw, c, dst, h, w);
  }
  stbi_image_free(px);
  return 1;
}

/* Decode files[first .. first+count) into dst, in parallel. */
static vmc_status load_range(const file_list *l, int first, int count, int c, int h,
                             int w, uint8_t *dst) {
  size_t chw = (size_t)c * h * w;
  int bad = INT_MAX;
  char bad_reason[160] = "";
#pragma omp parallel for schedule(dynamic, 8)
  for (int i = 0; i < count; i++) {
    char reason[160];
    if (!load_image(l->paths[first + i], c, h, w, dst + (size_t)i * chw, reason,
                    sizeof reason)) {
#pragma omp critical(vmc_imgfolder_bad)
      if (i < bad) {
        bad = i;
        memcpy(bad_reason, reason, sizeof reason);
      }
    }
  }
  if (bad != INT_MAX)
    return vmc_error(VMC_ERR_FORMAT, "%s: cannot read image: %s",
                     l->paths[first + bad], bad_reason);
  return VMC_OK;
}

/* Channels and size of the first training image. */
static vmc_status first_shape(const file_list *train, int *c, int *h, int *w) {
  const char *path = train->paths[0];
  int iw = 0, ih = 0, ic = 0;
  if (!stbi_info(path, &iw, &ih, &ic)) {
    const char *r = stbi_failure_reason();
    return vmc_error(VMC_ERR_FORMAT, "%s: cannot read image: %s", path,
                     r ? r : "unknown error");
  }
  if (iw <= 0 || ih <= 0 || iw > VMC_DATA_MAX_SIDE || ih > VMC_DATA_MAX_SIDE)
    return vmc_error(VMC_ERR_UNSUPPORTED,
                     "%s: %dx%d image (the first training image sets the dataset's "
                     "size; at most %d per side)",
                     path, iw, ih, VMC_DATA_MAX_SIDE);
  *c = ic >= 3 ? 3 : 1;
  *h = ih;
  *w = iw;
  return VMC_OK;
}

/* Pixel statistics of the training split, decoding it block by block. */
static vmc_status train_stats(const file_list *train, int c, int h, int w,
                              vmc_pixel_stats *s) {
  size_t chw = (size_t)c * h * w;
  uint8_t *buf = vmc_alloc(chw * BLOCK_IMAGES);
  if (!buf) return vmc_error(VMC_ERR_NOMEM, "out of memory decoding training images");
  vmc_pixel_stats_init(s, c);
  vmc_status st = VMC_OK;
  for (int i = 0; i < train->n && st == VMC_OK; i += BLOCK_IMAGES) {
    int k = train->n - i < BLOCK_IMAGES ? train->n - i : BLOCK_IMAGES;
    st = load_range(train, i, k, c, h, w, buf);
    if (st == VMC_OK) vmc_pixel_stats_add(s, buf, (size_t)k, (size_t)h * w);
  }
  vmc_free(buf);
  return st;
}

vmc_status vmc_imgfolder_load(const char *root, vmc_split split, vmc_dataset *d) {
  char **classes = NULL;
  int n_classes = 0;
  file_list train = {0}, test = {0};
  uint8_t *images = NULL, *labels = NULL;
  VMC_TRY(list_classes(root, &classes, &n_classes));
  vmc_status st = list_split(root, "train", classes, n_classes, &train);
  if (st != VMC_OK) goto done;
  if (split == VMC_SPLIT_TEST &&
      (st = list_split(root, "test", classes, n_classes, &test)) != VMC_OK)
    goto done;
  const file_list *use = split == VMC_SPLIT_TEST ? &test : &train;

  int c = 0, h = 0, w = 0;
  if ((st = first_shape(&train, &c, &h, &w)) != VMC_OK) goto done;
  size_t chw = (size_t)c * h * w, total;
  if (!vmc_mul_size(chw, (size_t)use->n, &total) || total > VMC_DATA_MAX_BYTES) {
    st = vmc_error(VMC_ERR_UNSUPPORTED,
                   "%s: %d images of %dx%dx%d exceed %zu bytes in memory", root,
                   use->n, c, h, w, (size_t)VMC_DATA_MAX_BYTES);
    goto done;
  }
  images = vmc_alloc(total);
  labels = vmc_alloc((size_t)use->n);
  if (!images || !labels) {
    st = vmc_error(VMC_ERR_NOMEM, "%s: cannot allocate %zu bytes for %d images", root,
                   total, use->n);
    goto done;
  }
  if ((st = load_range(use, 0, use->n, c, h, w, images)) != VMC_OK) goto done;
  memcpy(labels, use->labels, (size_t)use->n);

  vmc_pixel_stats s;
  if (split == VMC_SPLIT_TRAIN) {
    vmc_pixel_stats_init(&s, c);
    vmc_pixel_stats_add(&s, images, (size_t)use->n, (size_t)h * w);
  } else if ((st = train_stats(&train, c, h, w, &s)) != VMC_OK) {
    goto done;
  }
  vmc_pixel_stats_finish(&s, d->mean, d->std);
  d->n = use->n;
  d->c = c;
  d->h = h;
  d->w = w;
  d->n_classes = n_classes;
  d->images = images;
  d->labels = labels;
  images = labels = NULL;
done:
  vmc_free(images);
  vmc_free(labels);
  file_list_free(&train);
  file_list_free(&test);
  free_names(classes, n_classes);
  return st;
}
