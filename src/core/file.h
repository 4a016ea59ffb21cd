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

#endif
