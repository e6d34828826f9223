/* Model files.  The .vmc format (src/io/vmcfile.c) is documented byte by byte
 * in docs/file-format.md; the constants below are that document in code, so
 * tests and future readers (checkpoints, tools) walk the same layout. */
#ifndef VMC_IO_H
#define VMC_IO_H

#include "graph/graph.h"

/* An extra named f32 tensor stored beside a model, e.g. optimizer state in a
 * checkpoint.  shape.ndim may be 0 (a scalar: one element). */
typedef struct vmc_blob {
  char name[VMC_NAME_MAX];
  vmc_shape shape;
  float *data; /* vmc_alloc'd */
} vmc_blob;

/* Writes g (and n_extra extra blobs, which may be 0 / NULL) to path
 * atomically: the bytes go to "<path>.tmp.<pid>", are fsync'ed and renamed
 * over path.  On failure path is untouched and no temporary file remains.
 * Extra names must be unique and differ from every parameter name.  The
 * graph must pass vmc_graph_infer_shapes: no file the reader would reject is
 * ever written. */
vmc_status vmc_model_write(const vmc_graph *g, const vmc_blob *extra, int n_extra,
                           const char *path);
/* vmc_model_write, with the newest format version the file may have:
 * VMC_FILE_VERSION gives the smallest file (what vmc_model_write writes);
 * VMC_FILE_VERSION_CODED or VMC_FILE_VERSION_RAW_CODES a file that older
 * vmc builds read (3: the codes entropy-coded where that makes them smaller,
 * or version 2 when none is; 2: nothing entropy-coded).  A model whose
 * tensors are all f32 is written as version 1 whatever the limit; one with
 * quantized weights needs at least version 2 (VMC_ERR_INVALID_ARG). */
vmc_status vmc_model_write_version(const vmc_graph *g, const vmc_blob *extra, int n_extra,
                                   uint32_t max_version, const char *path);
/* Reads a .vmc file.  With extra or n_extra NULL the extra blobs are checked
 * but not returned; otherwise *extra (free with vmc_blobs_free) and *n_extra
 * receive them (NULL and 0 when there are none).  On failure nothing is
 * returned and nothing leaks. */
vmc_status vmc_model_read(const char *path, vmc_graph **g, vmc_blob **extra, int *n_extra);
/* The same from n bytes in memory; `what` names the source in messages. */
vmc_status vmc_model_read_memory(const void *buf, size_t n, const char *what, vmc_graph **g,
                                 vmc_blob **extra, int *n_extra);
void vmc_blobs_free(vmc_blob *b, int n);

/* Bytes parameter p occupies in a .vmc data region without entropy coding,
 * alignment padding excluded: 4 per element when stored as f32; for
 * VMC_S8 / VMC_S4 storage the raw codes (1 byte, or half a byte rounded
 * up, per element) plus 4 per scale. */
uint64_t vmc_param_file_bytes(const vmc_param *p);
/* The bytes each parameter's data would take in a file written now by
 * vmc_model_write (version 4 when the model has quantized weights, else
 * version 1, whose alignment padding is excluded): the codes and scales of
 * a quantized parameter, the values of an f32 one, each as the writer
 * stores them, entropy-coded or raw (the tensor that carries a shared code
 * table counts it); coded[i] (coded may be NULL): whether its codes (an f32
 * parameter: its values) are entropy-coded.  Fails as the writer would on
 * quantized parameters that are not their codes times their scales. */
vmc_status vmc_model_param_bytes(const vmc_graph *g, uint64_t *bytes, bool *coded);

/* ---- the .vmc layout (format version 4), all little-endian ------------- */
#define VMC_FILE_MAGIC "VMCMODEL"     /* 8 bytes, no NUL */
#define VMC_FILE_VERSION 4u           /* the newest this build reads; written when */
                                      /* a file holds s8/s4 weights */
#define VMC_FILE_VERSION_CODED 3u     /* read; written on request: entropy-coded */
                                      /* s8/s4 codes in the version 2 layout */
#define VMC_FILE_VERSION_RAW_CODES 2u /* read; written on request: raw s8/s4 codes */
#define VMC_FILE_VERSION_F32 1u       /* written when every tensor is f32 */
#define VMC_FILE_ALIGN 64u               /* versions 1..3: tensor data and the data region */
#define VMC_FILE_MAX_BYTES (4ull << 30)  /* readers reject larger files */
#define VMC_FILE_MAX_COUNT 65536u        /* metadata entries, tensors, nodes */
#define VMC_FILE_META_KEY_MAX 256u       /* key length < this */
#define VMC_FILE_META_VALUE_MAX (16u << 20) /* value length < this */
#define VMC_FILE_LINK_NONE 0xFFFFFFFFu

/* Header: byte offsets of its fields. */
enum {
  VMC_FH_MAGIC = 0,         /* u8[8]  "VMCMODEL" */
  VMC_FH_VERSION = 8,       /* u32    format version */
  VMC_FH_HEADER_BYTES = 12, /* u32    96 */
  VMC_FH_FILE_BYTES = 16,   /* u64    whole file, CRC included */
  VMC_FH_N_META = 24,       /* u32 */
  VMC_FH_N_TENSORS = 28,    /* u32    parameters + extras */
  VMC_FH_N_NODES = 32,      /* u32 */
  VMC_FH_FLAGS = 36,        /* u32    0 */
  VMC_FH_META_OFF = 40,     /* u64    metadata section (= 96) */
  VMC_FH_TENSORS_OFF = 48,  /* u64    tensor directory */
  VMC_FH_GRAPH_OFF = 56,    /* u64    graph section */
  VMC_FH_DATA_OFF = 64,     /* u64    data region (versions 1..3: 64-aligned) */
  VMC_FH_RESERVED = 72,     /* u8[24] versions 1..3: zero */
  VMC_FH_STRINGS_OFF = 72,  /* u64    version 4: the string table */
  VMC_FH_RESERVED_V4 = 80,  /* u8[16] version 4: zero */
  VMC_FILE_HEADER_BYTES = 96
};

/* Version 4 sections count with unsigned LEB128 varints of at most 32 bits
 * (5 bytes, the shortest encoding); names are indices into the string
 * table (sorted, front-coded, each string 1..63 bytes and used). */
#define VMC_FILE_VARINT_MAX_BYTES 5
/* Version 4 attribute forms: an integer attribute (f == (float)i), a float
 * one (i == (int32_t)f), or both values. */
enum { VMC_ATTR_FORM_INT = 0, VMC_ATTR_FORM_FLOAT = 1, VMC_ATTR_FORM_BOTH = 2 };

/* Tensor directory entry: dtype is a vmc_dtype; role says what the tensor
 * is; flags qualify it.  Version 2: an s8 / s4 data tensor (symmetric codes
 * in -127..127 / -7..7) is followed directly by its scale tensor: role
 * SCALE, f32, the same name, link = the data tensor's index, axis 0, shape
 * [1] (per tensor) or [d0] (per channel along dimension 0), flags 0.
 * Version 3: an s8 / s4 data tensor with flag CODED holds its codes
 * entropy-coded in nbytes (fewer than raw, at least one per 8 codes): a
 * table mode byte (below), the code table unless the mode is SHARED_TABLE,
 * then the bits (io/entropy.h).
 * Version 4 adds flag CODED on f32 tensors (the top byte of each value
 * coded, its three low bytes raw) and on scale tensors, and s32 data
 * tensors: an f32 parameter (a bias) stored as the s32 codes q of the grid
 * of the s8 / s4 tensor it links to, value (float)q * (scale * t), always
 * coded (the factor t, then the bit lengths of the codes coded and their
 * other bits raw). */
enum { VMC_TROLE_DATA = 0, VMC_TROLE_SCALE = 1, VMC_TROLE_ZERO_POINT = 2, VMC_TROLE_COUNT };
enum { VMC_TFLAG_TRAINABLE = 1u << 0, VMC_TFLAG_EXTRA = 1u << 1, VMC_TFLAG_CODED = 1u << 2,
       VMC_TFLAG_KNOWN = 7u };
/* The first byte of a coded stream: OWN_TABLE: its code table follows;
 * DEFINE_SHARED: its code table follows, and the later tensors of its
 * dtype (s8, s4, f32 or s32) may use it (one per dtype in a file);
 * SHARED_TABLE: no table, the one an earlier tensor of its dtype defined. */
enum { VMC_CODED_OWN_TABLE = 0, VMC_CODED_DEFINE_SHARED = 1, VMC_CODED_SHARED_TABLE = 2 };

#endif
