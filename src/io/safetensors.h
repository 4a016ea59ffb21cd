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
    /* private */
    int *by_name;   /* entry indices sorted by name, for rb_st_get */
    void *aligned;  /* rb_alloc copy of tensors whose offset is not a multiple of their element size */
    int owns_map;   /* 1 when map came from mmap (rb_st_open), 0 for rb_st_open_mem */
} rb_safetensors;

/* Largest accepted JSON header (the format's own limit). */
#define RB_ST_MAX_HEADER (100u << 20)

/* 1 if the bytes look like a safetensors file (8-byte length followed by '{'). */
int rb_st_sniff(const uint8_t *head, size_t n);

rb_status rb_st_open(rb_safetensors *f, const char *path);
/* Same checks on bytes already in memory (they must outlive f); `name` is used in messages. */
rb_status rb_st_open_mem(rb_safetensors *f, const void *bytes, size_t n, const char *name);
void rb_st_close(rb_safetensors *f);
/* NULL if absent */
const rb_tensor *rb_st_get(const rb_safetensors *f, const char *name);
const char *rb_st_meta(const rb_safetensors *f, const char *key);

/* Writes tensors (any layout; written contiguous, in the given order) to a temporary file in the
 * same folder, fsyncs it, and renames it over `path`. Metadata pairs may be NULL/0. */
rb_status rb_st_write(const char *path, int n, const char *const *names, const rb_tensor *const *tensors,
                      int n_meta, const char *const *meta_keys, const char *const *meta_values);

#endif
