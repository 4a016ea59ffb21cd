/* Arenas: one block sized once per run, bump allocation, marks to free everything after a point.
 * Activations live here so that no op calls malloc after warm-up and peak memory is predictable. */
#ifndef RB_CORE_ARENA_H
#define RB_CORE_ARENA_H

#include <stddef.h>

#include "tensor.h"

typedef struct rb_arena {
    char *base;
    size_t cap, used, peak;
    const char *name;
} rb_arena;

rb_status rb_arena_init(rb_arena *a, size_t cap, const char *name);
void rb_arena_free(rb_arena *a);
/* 64-byte aligned; NULL with rb_last_error naming the arena when it is full. */
void *rb_arena_alloc(rb_arena *a, size_t bytes);
/* Gives the physical pages above the current `used` back to the system (they read as zero when
 * touched again). Pages stay resident once touched, so a stage that needed much scratch would
 * otherwise keep it through the next stages; call between stages, after resetting. */
void rb_arena_trim(rb_arena *a);
static inline size_t rb_arena_mark(const rb_arena *a) { return a->used; }
static inline void rb_arena_reset(rb_arena *a, size_t mark) { a->used = mark < a->used ? mark : a->used; }
/* Header and data both from the arena; contiguous; contents uninitialised (zeroed for _zeros). */
rb_tensor *rb_arena_tensor(rb_arena *a, rb_dtype dtype, int ndim, const int64_t *shape);
rb_tensor *rb_arena_zeros(rb_arena *a, rb_dtype dtype, int ndim, const int64_t *shape);

#endif
