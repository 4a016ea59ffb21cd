/* PyTorch checkpoints (torch.save): the zip format (records <prefix>/data.pkl, <prefix>/data/<key>)
 * and the legacy stream (magic, protocol, sys_info, object pickle, storage keys, raw storages).
 * The object is read with the restricted pickle VM (io/pickle.h) and flattened into a list of
 * (dotted key path, tensor) plus the scalars found in the same dicts ("epoch", "name", ...).
 * Tensors are views into the storages (mapped file, or an aligned copy when the file's bytes are
 * not aligned to the element size), with storage offset + extent checked against each storage. */
#ifndef RB_IO_TORCHFILE_H
#define RB_IO_TORCHFILE_H

#include "core/tensor.h"

typedef enum { RB_TORCH_ZIP = 1, RB_TORCH_LEGACY } rb_torch_format;

typedef struct rb_torch_entry {
    char *name;             /* "state_dict.module.visual.conv1.weight"; "" when the file holds one tensor */
    rb_tensor t;            /* read-only view */
    int64_t storage_offset; /* in elements, as in the file */
    int64_t storage_numel;
    int is_param; /* pickled as nn.Parameter */
} rb_torch_entry;

typedef enum { RB_TS_NONE, RB_TS_BOOL, RB_TS_INT, RB_TS_FLOAT, RB_TS_STR } rb_torch_scalar_kind;

typedef struct rb_torch_scalar {
    char *name; /* dotted path, like tensor names */
    rb_torch_scalar_kind kind;
    int64_t i; /* BOOL, INT */
    double f;
    char *s; /* STR */
} rb_torch_scalar;

typedef struct rb_torchfile {
    char *path;
    rb_torch_format format;
    char *prefix; /* zip: record prefix found from the archive ("keyposes/") */
    int n;
    rb_torch_entry *entries; /* in pickle (dict) order */
    int n_scalars;
    rb_torch_scalar *scalars;
    /* private */
    void *map;
    size_t map_size;
    int owns_map;
    void **owned; /* aligned storage copies (rb_alloc) */
    int n_owned;
} rb_torchfile;

/* 1 if the bytes start like a torch.save file (zip or legacy magic). */
int rb_torch_sniff(const uint8_t *head, size_t n);
rb_status rb_torch_open(rb_torchfile *f, const char *path);
/* Same on bytes in memory (they must outlive f). */
rb_status rb_torch_open_mem(rb_torchfile *f, const void *bytes, size_t n, const char *name);
void rb_torch_close(rb_torchfile *f);
const rb_tensor *rb_torch_get(const rb_torchfile *f, const char *name);
const rb_torch_scalar *rb_torch_scalar_get(const rb_torchfile *f, const char *name);

#endif
