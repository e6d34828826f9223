/* vmc — compress and accelerate vision CNNs.  Public API.
 *
 * Lifecycle of the objects (all opaque to callers that only use this header):
 *   vmc_graph    a model: named tensors, nodes, parameters.  Built by the zoo,
 *                loaded from a .vmc file, or assembled by hand.
 *   vmc_plan     a graph bound to a batch size and a mode (inference or
 *                training): every activation buffer planned in one arena, so
 *                running it allocates nothing.
 *   vmc_dataset  images (u8) and labels in memory, with normalisation.
 *
 * Every function that can fail returns vmc_status; vmc_last_error() gives a
 * message naming the file, tensor or option that was wrong.  The library never
 * exits or aborts on bad input.
 */
#ifndef VMC_H
#define VMC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VMC_VERSION_STRING "0.1.0"

typedef enum vmc_status {
  VMC_OK = 0,
  VMC_ERR_INVALID_ARG,   /* an argument or option is out of range */
  VMC_ERR_NOMEM,         /* an allocation failed */
  VMC_ERR_IO,            /* open/read/write/rename failed */
  VMC_ERR_FORMAT,        /* a file is malformed (bad magic, truncated, checksum) */
  VMC_ERR_VERSION,       /* a file's format version is not supported */
  VMC_ERR_SHAPE,         /* tensor shapes do not fit together */
  VMC_ERR_NOT_FOUND,     /* a named tensor, op, model or file is missing */
  VMC_ERR_UNSUPPORTED,   /* valid request this build cannot do */
  VMC_ERR_INTERNAL,
  VMC_STATUS_COUNT
} vmc_status;

const char *vmc_status_str(vmc_status s);
/* Message of the last error set on this thread ("" if none). */
const char *vmc_last_error(void);

/* ---- CPU and threads ---------------------------------------------------- */
enum {
  VMC_CPU_AVX2 = 1u << 0, VMC_CPU_FMA = 1u << 1, VMC_CPU_AVX512F = 1u << 2,
  VMC_CPU_AVX512BW = 1u << 3, VMC_CPU_AVX512VL = 1u << 4,
  VMC_CPU_AVX512VNNI = 1u << 5, VMC_CPU_AVXVNNI = 1u << 6
};
unsigned vmc_cpu_features(void);
/* Space-separated names of the detected features, e.g. "avx2 fma avx512f". */
const char *vmc_cpu_features_str(void);
/* Name of the ISA path the kernels use: "avx512", "avx2" or "ref".
 * VMC_ISA=avx512|avx2|ref in the environment forces one (never above the CPU). */
const char *vmc_isa_name(void);
/* Whether name is one of those paths' names (what VMC_ISA may say). */
int vmc_isa_known(const char *name);
void vmc_set_threads(int n); /* n <= 0: one per core */
int vmc_get_threads(void);

/* ---- Graph -------------------------------------------------------------- */
typedef struct vmc_graph vmc_graph;

/* Build a zoo model: "lenet5", "resnet8", "resnet20", "mobilenetv2-tiny".
 * Weights are initialised from seed (Kaiming-normal, as PyTorch's zoo). */
vmc_status vmc_zoo_build(const char *name, int in_c, int in_h, int in_w,
                         int n_classes, uint64_t seed, vmc_graph **out);
/* NULL-terminated list of zoo names. */
const char *const *vmc_zoo_names(void);

void vmc_graph_free(vmc_graph *g);
int vmc_graph_num_params(const vmc_graph *g);   /* trainable scalars */
/* Metadata (architecture, dataset, accuracy, history ...): string key/values. */
const char *vmc_graph_meta(const vmc_graph *g, const char *key);
vmc_status vmc_graph_set_meta(vmc_graph *g, const char *key, const char *value);
/* Append "entry" to the "history" metadata (one line per step done). */
vmc_status vmc_graph_add_history(vmc_graph *g, const char *entry);

/* .vmc model files: versioned, checksummed, written atomically. */
vmc_status vmc_model_save(const vmc_graph *g, const char *path);
vmc_status vmc_model_load(const char *path, vmc_graph **out);

/* ---- Plans (execution) -------------------------------------------------- */
typedef struct vmc_plan vmc_plan;
typedef enum { VMC_MODE_INFER = 0, VMC_MODE_TRAIN = 1 } vmc_mode;

vmc_status vmc_plan_create(vmc_graph *g, int batch, vmc_mode mode, vmc_plan **out);
void vmc_plan_destroy(vmc_plan *p);
/* Input buffer (batch x C x H x W floats), output logits (batch x classes). */
float *vmc_plan_input(vmc_plan *p);
const float *vmc_plan_output(const vmc_plan *p);
int vmc_plan_batch(const vmc_plan *p);
/* Run forward for the first n images of the batch (n <= batch). */
vmc_status vmc_plan_forward(vmc_plan *p, int n);
/* Bytes of the activation arena. */
size_t vmc_plan_arena_bytes(const vmc_plan *p);

/* ---- Data --------------------------------------------------------------- */
typedef struct vmc_dataset vmc_dataset;
typedef enum { VMC_SPLIT_TRAIN = 0, VMC_SPLIT_TEST = 1 } vmc_split;

/* spec: "fashion-mnist", "mnist", "cifar10", or a path: a folder holding IDX
 * files (train-images-idx3-ubyte[.gz] ...), CIFAR-10 binary batches, or an
 * image folder (one subfolder per class, with train/ and test/ inside). */
vmc_status vmc_dataset_open(const char *spec, vmc_split split, vmc_dataset **out);
void vmc_dataset_free(vmc_dataset *d);
int vmc_dataset_size(const vmc_dataset *d);
void vmc_dataset_shape(const vmc_dataset *d, int *c, int *h, int *w);
int vmc_dataset_classes(const vmc_dataset *d);

/* ---- Training ------------------------------------------------------------ */
typedef enum { VMC_OPT_SGD = 0, VMC_OPT_ADAMW = 1 } vmc_optimizer_kind;
typedef enum { VMC_SCHED_CONSTANT = 0, VMC_SCHED_STEP, VMC_SCHED_COSINE,
               VMC_SCHED_ONECYCLE } vmc_sched_kind;

typedef struct vmc_train_config {
  int epochs;
  int batch;
  vmc_optimizer_kind optimizer;
  float lr, momentum, weight_decay;
  int nesterov;
  float beta1, beta2, eps;           /* AdamW */
  vmc_sched_kind sched;
  int step_size; float gamma;        /* step schedule, in epochs */
  float warmup_frac;                 /* one-cycle: fraction rising */
  float label_smoothing;
  int augment;                       /* random crop (crop_pad) + h-flip; off by default */
  int crop_pad;
  int flip;                          /* horizontal flip on/off */
  uint64_t seed;
  int limit_train;                   /* 0 = all images */
  int limit_test;
  const char *checkpoint;            /* written each epoch (NULL: none) */
  const char *resume;                /* checkpoint to continue from */
  int quiet;
} vmc_train_config;

void vmc_train_config_default(vmc_train_config *c);

/* Hooks for compression techniques.  All may be NULL. */
typedef struct vmc_train_hooks {
  void *user;
  /* Before forward of each step. */
  vmc_status (*before_step)(void *user, vmc_plan *p, long step);
  /* After forward: may add to the loss and to dlogits (batch x classes,
   * already holding the CE gradient).  Returns the extra loss. */
  float (*extra_loss)(void *user, vmc_plan *p, const float *x, const int *labels, int n,
                      float *dlogits);
  /* After the optimizer step (e.g. re-apply pruning masks). */
  vmc_status (*after_step)(void *user, vmc_plan *p, long step);
  /* After forward, before the loss: the plan's activations of this batch
   * are readable (e.g. range observers). */
  vmc_status (*after_forward)(void *user, vmc_plan *p, long step);
  /* After backward, before the optimizer step: the parameter gradients of
   * this batch are complete (e.g. a straight-through mask, or swapping
   * fake-quantized weights for the float weights the optimizer updates). */
  vmc_status (*before_optim)(void *user, vmc_plan *p, long step);
  /* Checkpoints (vmc_train_config.checkpoint / .resume) of a technique
   * with state outside the parameters: VMC_CKPT_SAVE just before the graph
   * is written (put what must be saved into the parameters, and into
   * metadata keys starting "checkpoint."), VMC_CKPT_SAVED right after
   * (put back what training uses), VMC_CKPT_LOADED after a resume restored
   * the parameters and those metadata keys into g. */
  vmc_status (*checkpoint)(void *user, vmc_graph *g, int phase);
} vmc_train_hooks;

enum { VMC_CKPT_SAVE = 1, VMC_CKPT_SAVED = 2, VMC_CKPT_LOADED = 3 };

typedef struct vmc_epoch_result {
  int epoch;
  float lr, train_loss, train_acc, test_loss, test_acc;
  double seconds, images_per_sec;
} vmc_epoch_result;

typedef struct vmc_train_result {
  int epochs_run;
  vmc_epoch_result last;
  double total_seconds;
  float best_test_acc;
} vmc_train_result;

/* Per-epoch callback (logging, JSON lines).  May be NULL. */
typedef void (*vmc_epoch_cb)(void *user, const vmc_epoch_result *r);

vmc_status vmc_train(vmc_graph *g, const vmc_dataset *train, const vmc_dataset *test,
                     const vmc_train_config *c, const vmc_train_hooks *hooks, vmc_epoch_cb cb,
                     void *cb_user, vmc_train_result *result);

typedef struct vmc_eval_result {
  int n, classes;
  float loss, accuracy;
  double seconds;
} vmc_eval_result;
/* Accuracy and loss on the first `limit` images (0: all). */
vmc_status vmc_evaluate(vmc_graph *g, const vmc_dataset *d, int batch, int limit,
                        int show_progress, vmc_eval_result *r);
/* The same, also returning the logits: *logits (malloc'd, free() it) holds
 * r->n rows of r->classes floats in data set order. */
vmc_status vmc_evaluate_logits(vmc_graph *g, const vmc_dataset *d, int batch, int limit,
                               int show_progress, vmc_eval_result *r, float **logits);

#ifdef __cplusplus
}
#endif
#endif
