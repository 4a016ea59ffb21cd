/* Whole-file reads with a size cap, for small untrusted text files (configs, vocabularies). */
#ifndef RB_CORE_FILE_H
#define RB_CORE_FILE_H

#include <stddef.h>

#include "status.h"

/* Reads `path` into a NUL-terminated block from rb_alloc; refuses files larger than max_bytes. */
rb_status rb_read_file(const char *path, size_t max_bytes, char **data, size_t *len);

#endif
