/* Counted allocation with a process-wide budget. All tensor and arena memory goes through here so
 * that running out is an error the caller sees, never an abort or an OOM kill. */
#ifndef RB_CORE_MEM_H
#define RB_CORE_MEM_H

#include <stddef.h>

#include "status.h"

#define RB_ALIGN 64

/* 64-byte aligned; NULL (and rb_last_error set, naming `what`) when the budget or the system says no. */
void *rb_alloc(size_t bytes, const char *what);
void *rb_calloc(size_t bytes, const char *what);
void rb_free(void *p);

/* Overflow-checked size arithmetic: returns 0 and leaves *out untouched on overflow. */
int rb_mul_size(size_t a, size_t b, size_t *out);
int rb_add_size(size_t a, size_t b, size_t *out);

/* Parses "123", "64K", "20M", "20G" (binary units). Returns 0 on a malformed string. */
int rb_parse_size(const char *s, size_t *out);

#endif
