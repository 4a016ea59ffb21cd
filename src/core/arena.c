#include "arena.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mem.h"

rb_status rb_arena_init(rb_arena *a, size_t cap, const char *name) {
    memset(a, 0, sizeof *a);
    a->name = name ? name : "arena";
    a->base = rb_alloc(cap ? cap : RB_ALIGN, a->name);
    if (!a->base)
        return RB_ERR_OOM;
    a->cap = cap;
    return RB_OK;
}

void rb_arena_free(rb_arena *a) {
    rb_free(a->base);
    a->base = NULL;
    a->cap = a->used = 0;
}

void rb_arena_trim(rb_arena *a) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)a->base + a->used + page - 1) & ~(page - 1);
    uintptr_t hi = ((uintptr_t)a->base + a->cap) & ~(page - 1);
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED); /* advisory: on failure the pages simply stay */
}

void *rb_arena_alloc(rb_arena *a, size_t bytes) {
    size_t start = (a->used + RB_ALIGN - 1) & ~(size_t)(RB_ALIGN - 1), end;
    if (!rb_add_size(start, bytes, &end) || end > a->cap) {
        rb_error(RB_ERR_OOM, "%s: arena full (%zu of %zu bytes used, %zu more requested)", a->name, a->used,
                 a->cap, bytes);
        return NULL;
    }
    a->used = end;
    if (end > a->peak)
        a->peak = end;
    return a->base + start;
}

rb_tensor *rb_arena_tensor(rb_arena *a, rb_dtype dtype, int ndim, const int64_t *shape) {
    if (ndim < 0 || ndim > RB_MAX_DIMS || (unsigned)dtype >= RB_DTYPE_COUNT) {
        rb_error(RB_ERR_INVALID, "%s: invalid tensor (%d dims)", a->name, ndim);
        return NULL;
    }
    size_t bytes = rb_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || !rb_mul_size(bytes, (size_t)shape[i], &bytes)) {
            rb_error(RB_ERR_OOM, "%s: invalid or overflowing tensor shape", a->name);
            return NULL;
        }
    }
    rb_tensor *t = rb_arena_alloc(a, sizeof *t);
    if (!t)
        return NULL;
    void *data = rb_arena_alloc(a, bytes);
    if (!data)
        return NULL;
    *t = rb_tensor_wrap(data, dtype, ndim, shape);
    return t;
}

rb_tensor *rb_arena_zeros(rb_arena *a, rb_dtype dtype, int ndim, const int64_t *shape) {
    rb_tensor *t = rb_arena_tensor(a, dtype, ndim, shape);
    if (t)
        memset(t->data, 0, rb_nbytes(t));
    return t;
}
