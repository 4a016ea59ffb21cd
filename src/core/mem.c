#include "mem.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Each block carries its size in a 64-byte header so that rb_free can keep the count exact. */
typedef struct {
    size_t size;
    char pad[RB_ALIGN - sizeof(size_t)];
} block_header;

static atomic_size_t in_use, peak;
static size_t limit;
static atomic_int limit_init;

static void init_limit(void) {
    if (atomic_exchange(&limit_init, 1))
        return;
    const char *env = getenv("RELBOOTH_MEM_LIMIT");
    size_t v;
    if (env && rb_parse_size(env, &v))
        limit = v;
}

void rb_set_mem_limit(size_t bytes) {
    atomic_store(&limit_init, 1);
    limit = bytes;
}
size_t rb_get_mem_limit(void) {
    init_limit();
    return limit;
}
size_t rb_mem_in_use(void) { return atomic_load(&in_use); }
size_t rb_mem_peak(void) { return atomic_load(&peak); }

int rb_mul_size(size_t a, size_t b, size_t *out) {
    if (a && b > SIZE_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

int rb_add_size(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a)
        return 0;
    *out = a + b;
    return 1;
}

int rb_parse_size(const char *s, size_t *out) {
    if (!s || !*s)
        return 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s)
        return 0;
    unsigned shift = 0;
    switch (*end) {
    case 0: break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    default: return 0;
    }
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end || (shift && v > (SIZE_MAX >> shift)))
        return 0;
    *out = (size_t)v << shift;
    return 1;
}

void *rb_alloc(size_t bytes, const char *what) {
    init_limit();
    size_t total;
    if (!rb_add_size(bytes, sizeof(block_header), &total) || !rb_add_size(total, RB_ALIGN, &total)) {
        rb_error(RB_ERR_OOM, "%s: allocation of %zu bytes overflows", what ? what : "alloc", bytes);
        return NULL;
    }
    size_t now = atomic_fetch_add(&in_use, bytes) + bytes;
    if (limit && now > limit) {
        atomic_fetch_sub(&in_use, bytes);
        rb_error(RB_ERR_OOM, "%s: %zu bytes would exceed the memory limit (%zu of %zu bytes in use)",
                 what ? what : "alloc", bytes, now - bytes, limit);
        return NULL;
    }
    void *raw = NULL;
    if (posix_memalign(&raw, RB_ALIGN, bytes + sizeof(block_header)) != 0 || !raw) {
        atomic_fetch_sub(&in_use, bytes);
        rb_error(RB_ERR_OOM, "%s: out of memory allocating %zu bytes", what ? what : "alloc", bytes);
        return NULL;
    }
    ((block_header *)raw)->size = bytes;
    size_t p = atomic_load(&peak);
    while (now > p && !atomic_compare_exchange_weak(&peak, &p, now)) {
    }
    return (char *)raw + sizeof(block_header);
}

void *rb_calloc(size_t bytes, const char *what) {
    void *p = rb_alloc(bytes, what);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void rb_free(void *p) {
    if (!p)
        return;
    block_header *h = (block_header *)((char *)p - sizeof(block_header));
    atomic_fetch_sub(&in_use, h->size);
    free(h);
}
