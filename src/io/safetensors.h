/* safetensors: read by memory-mapping (every dtype of the format), write atomically.
 * Files are untrusted: the header length, JSON, dtypes, shapes and offsets are all checked
 * against each other and the file size before any tensor is exposed. */
#ifndef RB_IO_SAFETENSORS_H
#define RB_IO_SAFETENSORS_H

#include "core/tensor.h"

typedef struct rb_st_entry {
    char *name;
    rb_tensor t; /* points into the mapping; read-only */
} rb_st_entry;

typedef struct rb_safetensors {
    char *path;
    void *map;
    size_t map_size;
    int n;
    rb_st_entry *entries; /* in file order of data offsets */
    int n_meta;
    char **meta_keys, **meta_values; /* __metadata__ */
} rb_safetensors;

rb_status rb_st_open(rb_safetensors *f, const char *path);
void rb_st_close(rb_safetensors *f);
/* NULL if absent */
const rb_tensor *rb_st_get(const rb_safetensors *f, const char *name);
const char *rb_st_meta(const rb_safetensors *f, const char *key);

/* Writes tensors (any layout; written contiguous, in the given order) to a temporary file in the
 * same folder, fsyncs it, and renames it over `path`. Metadata pairs may be NULL/0. */
rb_status rb_st_write(const char *path, int n, const char *const *names, const rb_tensor *const *tensors,
                      int n_meta, const char *const *meta_keys, const char *const *meta_values);

#endif
