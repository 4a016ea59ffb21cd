/* Whole-file reads with a size cap, for small untrusted text files (configs, vocabularies). */
#ifndef RB_CORE_FILE_H
#define RB_CORE_FILE_H

#include <stddef.h>

#include "status.h"

/* Reads `path` into a NUL-terminated block from rb_alloc; refuses files larger than max_bytes. */
rb_status rb_read_file(const char *path, size_t max_bytes, char **data, size_t *len);

/* Maps a regular file read-only (private). An empty file gives *map = NULL, *size = 0. Checkpoints
 * are read through mappings so that weights are paged in on use and shared between processes. */
rb_status rb_map_file(const char *path, void **map, size_t *size);
void rb_unmap_file(void *map, size_t size);

/* Output files that appear whole or not at all: data goes to a temporary file in the target's
 * folder (so the rename cannot cross devices), which commit fsyncs, renames over the target and
 * makes durable by syncing the folder. An interrupted or failed write leaves the old file as it was
 * and no temporary file behind. */
typedef struct rb_atomic_file {
    int fd;
    char *tmp;
    const char *path;
} rb_atomic_file;

rb_status rb_atomic_open(rb_atomic_file *f, const char *path);
rb_status rb_atomic_write(rb_atomic_file *f, const void *data, size_t n);
/* On failure (or if `status` is not RB_OK) removes the temporary file and returns the error. */
rb_status rb_atomic_commit(rb_atomic_file *f, rb_status status);

#endif
