/* Data layer: datasets held in memory as u8 images (CHW per image) with u8
 * labels, plus the batch function that normalises and augments them.
 *
 * Formats (each in its own file):
 *   idx.c        IDX files (MNIST, Fashion-MNIST), gzipped or plain
 *   cifar.c      CIFAR-10 binary batches
 *   imgfolder.c  image folders: <root>/{train,test}/<class>/<image>
 *   dataset.c    vmc_dataset_open (spec resolution, format detection,
 *                normalisation constants), the public accessors, batches.
 */
#ifndef VMC_DATA_H
#define VMC_DATA_H

#include "core/core.h"

/* Largest dataset (pixel bytes) or data file the loaders accept. */
#define VMC_DATA_MAX_BYTES ((size_t)1 << 31)
/* Largest image side (IDX dims, image folder images). */
#define VMC_DATA_MAX_SIDE 8192

struct vmc_dataset {
  int n, c, h, w, n_classes;
  uint8_t *images; /* n*c*h*w, CHW per image (vmc_alloc) */
  uint8_t *labels; /* n (vmc_alloc) */
  float mean[3], std[3]; /* per channel, in units of v/255 */
  char name[32];    /* "fashion-mnist", "cifar10", or the folder's name */
  char source[512]; /* folder the data came from */
};

typedef struct vmc_augment {
  int crop_pad; /* random crop after zero padding (pixel value 0 before
                   normalisation) by this many pixels per side, 0 = off */
  int flip;     /* random horizontal flip, p = 0.5 */
} vmc_augment;

/* Gather images idx[0..n) into x (n*c*h*w floats, normalised
 * (v/255 - mean)/std per channel) and their labels into y (may be NULL).
 * aug NULL (or all zero) = none; otherwise rng must be non-NULL.  Random
 * numbers are drawn serially, per image in order: crop dy, crop dx (each
 * vmc_rng_below(2*pad+1), when crop_pad > 0), then flip (vmc_rng_below(2),
 * when flip): the same seed gives the same batch whatever the thread count.
 * Every idx[i] must be in [0, d->n).  Allocates nothing. */
void vmc_dataset_batch(const vmc_dataset *d, const int *idx, int n,
                       const vmc_augment *aug, vmc_rng *rng, float *x, int *y);

/* A dataset from memory (copied): n images of c x h x w (c is 1 or 3),
 * labels < n_classes.  mean/std NULL: computed from the images.  name may be
 * NULL.  For tests and for callers that build data themselves. */
vmc_status vmc_dataset_from_memory(const char *name, int n, int c, int h, int w,
                                   int n_classes, const uint8_t *images,
                                   const uint8_t *labels, const float *mean,
                                   const float *std, vmc_dataset **out);

/* An empty dataset record (vmc_malloc_plain, zeroed); NULL on failure. */
vmc_dataset *vmc_dataset_alloc(void);

/* ---- per-channel pixel statistics --------------------------------------- */
typedef struct vmc_pixel_stats {
  int c;
  uint64_t count;               /* pixels per channel */
  uint64_t sum[3], sumsq[3];    /* exact integer sums of v and v^2 */
} vmc_pixel_stats;
void vmc_pixel_stats_init(vmc_pixel_stats *s, int c);
/* Add n images of c x hw pixels (CHW). */
void vmc_pixel_stats_add(vmc_pixel_stats *s, const uint8_t *images, size_t n,
                         size_t hw);
/* mean and (population) std of v/255 per channel; a std below 1e-6 (constant
 * images) becomes 1.  Channels >= c get mean 0, std 1. */
void vmc_pixel_stats_finish(const vmc_pixel_stats *s, float mean[3], float std[3]);

/* ---- format readers (fill d->n, c, h, w, n_classes, images, labels) ----- */

/* IDX: images (magic 0x00000803, n x rows x cols) and labels (magic
 * 0x00000801, n); each file gzipped or plain.  n_classes = max label + 1. */
vmc_status vmc_idx_load(const char *images_path, const char *labels_path,
                        vmc_dataset *d);
/* The largest label in an IDX labels file (for n_classes across splits). */
vmc_status vmc_idx_max_label(const char *labels_path, int *max_label);

/* CIFAR-10 binary: paths[0..npaths) concatenated; records of 1 label byte
 * (0..9) + 3072 bytes (3 x 32 x 32, CHW).  n_classes = 10. */
vmc_status vmc_cifar_load(const char *const *paths, int npaths, vmc_dataset *d);

/* Image folder: root/train/<class>/<image> and root/test/<class>/<image>.
 * Classes are the sorted subfolders of train/; every image is converted to
 * the channels (1 or 3) and size of the first training image.  Also fills
 * d->mean/std from the training split's pixels. */
vmc_status vmc_imgfolder_load(const char *root, vmc_split split, vmc_dataset *d);

#endif
