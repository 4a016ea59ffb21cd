/* oneDNN glue for matrix products and convolutions.
 *
 * How caching works
 * -----------------
 * 1. Primitives. An op describes what it wants as a small POD struct (kind, dims, strides, dtypes,
 *    flags; zeroed before filling so the bytes are a key). rb_dnnl_exec hashes those bytes (FNV-1a)
 *    and probes an open-addressing table of OP_CAP slots. On a miss the op's builder creates the
 *    primitive descriptor; we then create the primitive, one dnnl_memory object per argument (with
 *    no data: handles are set per call), and, for every argument whose preferred layout or dtype
 *    differs from the caller's plain buffer, a reorder primitive (user -> primitive for inputs,
 *    primitive -> user for outputs, with a sum post-op for accumulated outputs). When the table is
 *    3/4 full every entry is destroyed and it starts over (bounded; a real model has far fewer
 *    distinct shapes than that).
 * 2. Scratch. All primitives use the user scratchpad mode; each call takes one scratchpad (the
 *    largest any of the entry's primitives needs) and the reorder buffers from the caller's arena
 *    and gives them back before returning, so after warm-up nothing is allocated per call (neither
 *    by us nor by oneDNN).
 * 3. Weights. An input marked frozen (read-only weight memory, e.g. a loaded checkpoint) that needs a
 *    reorder or dtype conversion is converted once into a buffer from rb_alloc and reused. Entries
 *    are keyed by (address, source layout+dtype, target layout+dtype). Invalidation rule: the cache
 *    trusts that memory at a cached address is not rewritten or freed while cached; as a safety net
 *    each use compares a fingerprint of 64 sampled words (and reconverts on a mismatch), but code
 *    that frees or modifies frozen weights (unloading a model, merging a LoRA in place) must call
 *    rb_dnnl_forget(ptr) or rb_dnnl_cache_clear(). Weights that require gradients are never marked
 *    frozen by the ops, and backward passes never use the cache (they convert into scratch), so
 *    training does not double the memory of the frozen model. The cache is bounded by
 *    rb_dnnl_set_weight_cache_limit and by the process memory budget; when either says no, the
 *    weight is converted into scratch for that call instead (no error).
 *
 * Thread safety: one process-wide mutex is held for a whole rb_dnnl_exec (lookup, reorders,
 * execution), so concurrent callers are correct but serialised; the parallelism is inside oneDNN
 * (OpenMP, rb_set_num_threads). */
#include "dnnl.h"

#include <pthread.h>
#include <string.h>

#include "core/mem.h"

#define OP_CAP 1024
#define W_CAP 4096

typedef struct op_arg {
    int arg, mode;
    dnnl_memory_desc_t user_md, md;
    dnnl_memory_t mem;        /* primitive-side buffer */
    dnnl_memory_t user_mem;   /* caller's buffer, only with a reorder */
    dnnl_primitive_t reorder; /* NULL when the caller's buffer is used directly */
    dnnl_memory_t reorder_scratch;
    size_t bytes;      /* size of the primitive-side buffer */
    size_t user_bytes; /* span of the caller's buffer */
    int f16;           /* caller's buffer is f16: converted to f32 (user_md) in scratch first */
} op_arg;

typedef struct op_entry {
    uint64_t hash;
    size_t desc_bytes;
    unsigned char desc[RB_DNNL_MAX_DESC];
    dnnl_primitive_t prim;
    dnnl_memory_t scratch;
    size_t scratch_bytes; /* largest scratchpad of the primitive and its reorders */
    int n_args;
    op_arg a[RB_DNNL_MAX_ARGS];
} op_entry;

typedef struct w_entry {
    const void *ptr;
    dnnl_memory_desc_t user_md, md;
    uint64_t fp;
    size_t bytes;
    void *data;
} w_entry;

#define W_TOMB ((w_entry *)1)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static dnnl_engine_t engine;
static dnnl_stream_t stream;
static op_entry *ops[OP_CAP];
static int n_ops;
static w_entry *wtab[W_CAP];
static int n_w; /* live + tombstones */
static size_t w_bytes, w_limit = (size_t)-1;

rb_status rb_dnnl_check(dnnl_status_t s, const char *what) {
    switch (s) {
    case dnnl_success:
        return RB_OK;
    case dnnl_out_of_memory:
        return rb_error(RB_ERR_OOM, "oneDNN: %s: out of memory", what);
    case dnnl_invalid_arguments:
        return rb_error(RB_ERR_INVALID, "oneDNN: %s: invalid arguments", what);
    case dnnl_unimplemented:
        return rb_error(RB_ERR_UNSUPPORTED, "oneDNN: %s: no implementation for these shapes/dtypes", what);
    default:
        return rb_error(RB_ERR_INTERNAL, "oneDNN: %s: status %d", what, (int)s);
    }
}

#define DNNL_TRY(call, what)                                   \
    do {                                                       \
        rb_status rb_s_ = rb_dnnl_check((call), (what));       \
        if (rb_s_ != RB_OK)                                    \
            return rb_s_;                                      \
    } while (0)

dnnl_data_type_t rb_dnnl_dt(rb_dtype t) {
    switch (t) {
    case RB_F32:
        return dnnl_f32;
    case RB_BF16:
        return dnnl_bf16;
    case RB_F16:
        return dnnl_f16;
    default:
        return dnnl_data_type_undef;
    }
}

rb_status rb_dnnl_md(dnnl_memory_desc_t *md, int ndim, const int64_t *dims, const int64_t *strides,
                     dnnl_data_type_t dt) {
    dnnl_dims_t d, s;
    for (int i = 0; i < ndim; i++) {
        d[i] = dims[i];
        s[i] = strides[i];
    }
    DNNL_TRY(dnnl_memory_desc_init_by_strides(md, ndim, d, dt, s), "memory descriptor");
    return RB_OK;
}

rb_status rb_dnnl_attr(dnnl_primitive_attr_t *attr, int accumulate) {
    DNNL_TRY(dnnl_primitive_attr_create(attr), "attributes");
    rb_status s = rb_dnnl_check(dnnl_primitive_attr_set_scratchpad_mode(*attr, dnnl_scratchpad_mode_user),
                                "scratchpad mode");
    if (s == RB_OK && accumulate) {
        dnnl_post_ops_t po;
        s = rb_dnnl_check(dnnl_post_ops_create(&po), "post-ops");
        if (s == RB_OK) {
            s = rb_dnnl_check(dnnl_post_ops_append_sum(po, 1.0f), "sum post-op");
            if (s == RB_OK)
                s = rb_dnnl_check(dnnl_primitive_attr_set_post_ops(*attr, po), "post-ops");
            dnnl_post_ops_destroy(po);
        }
    }
    if (s != RB_OK)
        dnnl_primitive_attr_destroy(*attr);
    return s;
}

static rb_status init_engine(void) {
    if (stream)
        return RB_OK;
    DNNL_TRY(dnnl_engine_create(&engine, dnnl_cpu, 0), "engine");
    DNNL_TRY(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags), "stream");
    return RB_OK;
}

static uint64_t fnv(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* ---- primitive cache ---- */

static void op_destroy(op_entry *e) {
    if (!e)
        return;
    for (int i = 0; i < e->n_args; i++) {
        op_arg *a = &e->a[i];
        if (a->reorder)
            dnnl_primitive_destroy(a->reorder);
        if (a->reorder_scratch)
            dnnl_memory_destroy(a->reorder_scratch);
        if (a->user_mem)
            dnnl_memory_destroy(a->user_mem);
        if (a->mem)
            dnnl_memory_destroy(a->mem);
    }
    if (e->scratch)
        dnnl_memory_destroy(e->scratch);
    if (e->prim)
        dnnl_primitive_destroy(e->prim);
    rb_free(e);
}

static size_t scratch_size(const_dnnl_primitive_desc_t pd) {
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    return md ? dnnl_memory_desc_get_size(md) : 0;
}

/* Memory object for the scratchpad of pd, or NULL when it needs none. */
static rb_status scratch_mem(const_dnnl_primitive_desc_t pd, dnnl_memory_t *m) {
    *m = NULL;
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if (md && dnnl_memory_desc_get_size(md) > 0)
        DNNL_TRY(dnnl_memory_create(m, md, engine, DNNL_MEMORY_NONE), "scratchpad memory");
    return RB_OK;
}

static rb_status make_reorder(op_entry *e, op_arg *a) {
    int to_prim = a->mode == RB_DNNL_IN;
    const dnnl_memory_desc_t *src = to_prim ? &a->user_md : &a->md, *dst = to_prim ? &a->md : &a->user_md;
    dnnl_primitive_attr_t attr;
    RB_TRY(rb_dnnl_attr(&attr, a->mode == RB_DNNL_ACC));
    dnnl_primitive_desc_t pd;
    rb_status s = rb_dnnl_check(dnnl_reorder_primitive_desc_create(&pd, src, engine, dst, engine, attr), "reorder");
    dnnl_primitive_attr_destroy(attr);
    if (s != RB_OK)
        return s;
    size_t ss = scratch_size(pd);
    if (ss > e->scratch_bytes)
        e->scratch_bytes = ss;
    s = scratch_mem(pd, &a->reorder_scratch);
    if (s == RB_OK)
        s = rb_dnnl_check(dnnl_primitive_create(&a->reorder, pd), "reorder primitive");
    dnnl_primitive_desc_destroy(pd);
    if (s == RB_OK)
        s = rb_dnnl_check(dnnl_memory_create(&a->user_mem, &a->user_md, engine, DNNL_MEMORY_NONE), "memory");
    return s;
}

static rb_status op_create(op_entry **out, const void *desc, size_t n, uint64_t h, rb_dnnl_build_fn build) {
    rb_dnnl_arg_spec spec[RB_DNNL_MAX_ARGS];
    int n_args = 0;
    dnnl_primitive_desc_t pd = NULL;
    RB_TRY(build(desc, engine, &pd, spec, &n_args));
    op_entry *e = rb_calloc(sizeof *e, "oneDNN primitive cache");
    if (!e) {
        dnnl_primitive_desc_destroy(pd);
        return RB_ERR_OOM;
    }
    e->hash = h;
    e->desc_bytes = n;
    memcpy(e->desc, desc, n);
    e->n_args = n_args;
    e->scratch_bytes = scratch_size(pd);
    rb_status s = scratch_mem(pd, &e->scratch);
    for (int i = 0; i < n_args && s == RB_OK; i++) {
        op_arg *a = &e->a[i];
        a->arg = spec[i].arg;
        a->mode = spec[i].mode;
        a->user_md = spec[i].user;
        a->user_bytes = dnnl_memory_desc_get_size(&a->user_md);
        if (a->user_md.data_type == dnnl_f16) {
            /* oneDNN 2.6 has no f16 reorders on this CPU; we convert f16 -> f32 ourselves */
            if (a->mode != RB_DNNL_IN) {
                s = rb_error(RB_ERR_UNSUPPORTED, "oneDNN: f16 outputs are not supported");
                break;
            }
            a->f16 = 1;
            a->user_md.data_type = dnnl_f32;
        }
        const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md, a->arg);
        if (!md || md->ndims == 0) {
            s = rb_error(RB_ERR_INTERNAL, "oneDNN: primitive has no argument %d", a->arg);
            break;
        }
        a->md = *md;
        a->bytes = dnnl_memory_desc_get_size(md);
        s = rb_dnnl_check(dnnl_memory_create(&a->mem, md, engine, DNNL_MEMORY_NONE), "memory");
        if (s == RB_OK && (a->mode == RB_DNNL_ACC || !dnnl_memory_desc_equal(md, &a->user_md)))
            s = make_reorder(e, a);
    }
    if (s == RB_OK)
        s = rb_dnnl_check(dnnl_primitive_create(&e->prim, pd), "primitive");
    dnnl_primitive_desc_destroy(pd);
    if (s != RB_OK) {
        op_destroy(e);
        return s;
    }
    *out = e;
    return RB_OK;
}

static void ops_clear(void) {
    for (int i = 0; i < OP_CAP; i++) {
        op_destroy(ops[i]);
        ops[i] = NULL;
    }
    n_ops = 0;
}

static rb_status op_get(op_entry **out, const void *desc, size_t n, rb_dnnl_build_fn build) {
    if (n > RB_DNNL_MAX_DESC)
        return rb_error(RB_ERR_INTERNAL, "oneDNN: descriptor of %zu bytes is too large", n);
    uint64_t h = fnv(desc, n);
    size_t i = (size_t)(h % OP_CAP);
    for (; ops[i]; i = (i + 1) % OP_CAP) {
        op_entry *e = ops[i];
        if (e->hash == h && e->desc_bytes == n && !memcmp(e->desc, desc, n)) {
            *out = e;
            return RB_OK;
        }
    }
    if (n_ops >= OP_CAP * 3 / 4) {
        ops_clear();
        i = (size_t)(h % OP_CAP);
    }
    RB_TRY(op_create(out, desc, n, h, build));
    ops[i] = *out;
    n_ops++;
    return RB_OK;
}

/* ---- weight cache ---- */

static uint64_t fingerprint(const void *p, size_t bytes) {
    const unsigned char *b = p;
    uint64_t h = fnv(&bytes, sizeof bytes);
    size_t words = bytes / 4, step = words > 64 ? words / 64 : 1;
    for (size_t i = 0; i < words; i += step) {
        uint32_t v;
        memcpy(&v, b + i * 4, 4);
        h = (h ^ v) * 1099511628211ull;
    }
    return h;
}

static size_t w_slot(const void *p) { return (size_t)(((uintptr_t)p >> 6) * 0x9E3779B97F4A7C15ull >> 20) % W_CAP; }

static void w_clear(void) {
    for (int i = 0; i < W_CAP; i++) {
        if (wtab[i] && wtab[i] != W_TOMB)
            rb_free(wtab[i]);
        wtab[i] = NULL;
    }
    n_w = 0;
    w_bytes = 0;
}

void rb_dnnl_forget(const void *weights) {
    pthread_mutex_lock(&lock);
    for (size_t i = w_slot(weights), k = 0; wtab[i] && k < W_CAP; i = (i + 1) % W_CAP, k++) {
        if (wtab[i] != W_TOMB && wtab[i]->ptr == weights) {
            w_bytes -= wtab[i]->bytes;
            rb_free(wtab[i]);
            wtab[i] = W_TOMB;
        }
    }
    pthread_mutex_unlock(&lock);
}

void rb_dnnl_cache_clear(void) {
    pthread_mutex_lock(&lock);
    w_clear();
    ops_clear();
    pthread_mutex_unlock(&lock);
}

void rb_dnnl_set_weight_cache_limit(size_t bytes) {
    pthread_mutex_lock(&lock);
    w_limit = bytes;
    pthread_mutex_unlock(&lock);
}

size_t rb_dnnl_weight_cache_bytes(void) {
    pthread_mutex_lock(&lock);
    size_t b = w_bytes;
    pthread_mutex_unlock(&lock);
    return b;
}

int rb_dnnl_primitive_count(void) {
    pthread_mutex_lock(&lock);
    int n = n_ops;
    pthread_mutex_unlock(&lock);
    return n;
}

static rb_status run_reorder(op_entry *e, op_arg *a, void *user, void *prim_buf, void *scratch) {
    DNNL_TRY(dnnl_memory_set_data_handle(a->user_mem, user), "set handle");
    DNNL_TRY(dnnl_memory_set_data_handle(a->mem, prim_buf), "set handle");
    dnnl_exec_arg_t args[3];
    int n = 0;
    int to_prim = a->mode == RB_DNNL_IN;
    args[n++] = (dnnl_exec_arg_t){DNNL_ARG_FROM, to_prim ? a->user_mem : a->mem};
    args[n++] = (dnnl_exec_arg_t){DNNL_ARG_TO, to_prim ? a->mem : a->user_mem};
    if (a->reorder_scratch) {
        DNNL_TRY(dnnl_memory_set_data_handle(a->reorder_scratch, scratch), "set handle");
        args[n++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, a->reorder_scratch};
    }
    (void)e;
    DNNL_TRY(dnnl_primitive_execute(a->reorder, stream, n, args), "reorder");
    return RB_OK;
}

/* f32 copy (same element layout) of an f16 argument, in the arena. */
static void *f16_to_f32(const op_arg *a, const void *user, rb_arena *ar) {
    size_t n = a->user_bytes / 2;
    float *f = rb_arena_alloc(ar, n * sizeof(float));
    if (f)
        rb_f16_to_f32_n(f, user, n);
    return f;
}

/* The cached converted copy of a frozen weight, converting it on a miss; NULL when it cannot be
 * cached (the caller converts into scratch instead). */
static void *w_lookup(op_entry *e, op_arg *a, void *user, rb_arena *ar, void *scratch, rb_status *st) {
    uint64_t fp = fingerprint(user, a->user_bytes);
    size_t i = w_slot(user), tomb = (size_t)-1, k = 0;
    for (; wtab[i] && k < W_CAP; i = (i + 1) % W_CAP, k++) {
        w_entry *w = wtab[i];
        if (w == W_TOMB) {
            if (tomb == (size_t)-1)
                tomb = i;
            continue;
        }
        if (w->ptr == user && dnnl_memory_desc_equal(&w->user_md, &a->user_md) && dnnl_memory_desc_equal(&w->md, &a->md)) {
            if (w->fp != fp) { /* rewritten behind our back: convert again */
                void *src = a->f16 ? f16_to_f32(a, user, ar) : user;
                *st = src ? run_reorder(e, a, src, w->data, scratch) : RB_ERR_OOM;
                w->fp = fp;
            }
            return *st == RB_OK ? w->data : NULL;
        }
    }
    if (tomb != (size_t)-1)
        i = tomb;
    else if (wtab[i] || n_w >= W_CAP * 3 / 4)
        return NULL;
    size_t head = (sizeof(w_entry) + RB_ALIGN - 1) & ~(size_t)(RB_ALIGN - 1), total;
    if (!rb_add_size(head, a->bytes, &total) || w_bytes + total > w_limit)
        return NULL;
    w_entry *w = rb_alloc(total, "oneDNN weight cache");
    if (!w) {
        rb_clear_error(); /* not an error: fall back to converting per call */
        return NULL;
    }
    w->ptr = user;
    w->user_md = a->user_md;
    w->md = a->md;
    w->fp = fp;
    w->bytes = total;
    w->data = (char *)w + head;
    void *src = a->f16 ? f16_to_f32(a, user, ar) : user;
    *st = src ? run_reorder(e, a, src, w->data, scratch) : RB_ERR_OOM;
    if (*st != RB_OK) {
        rb_free(w);
        return NULL;
    }
    if (wtab[i] != W_TOMB)
        n_w++;
    wtab[i] = w;
    w_bytes += total;
    return w->data;
}

static rb_status exec_locked(const void *desc, size_t desc_bytes, rb_dnnl_build_fn build, rb_arena *ar,
                             void *const *ptrs, unsigned frozen) {
    RB_TRY(init_engine());
    op_entry *e = NULL;
    RB_TRY(op_get(&e, desc, desc_bytes, build));
    void *scratch = NULL;
    if (e->scratch_bytes && !(scratch = rb_arena_alloc(ar, e->scratch_bytes)))
        return RB_ERR_OOM;
    void *buf[RB_DNNL_MAX_ARGS];
    dnnl_exec_arg_t args[RB_DNNL_MAX_ARGS + 1];
    for (int i = 0; i < e->n_args; i++) {
        op_arg *a = &e->a[i];
        void *src = ptrs[i];
        buf[i] = NULL;
        if (a->reorder && a->mode == RB_DNNL_IN && (frozen >> i & 1)) {
            rb_status s = RB_OK;
            buf[i] = w_lookup(e, a, ptrs[i], ar, scratch, &s);
            RB_TRY(s);
        }
        if (!buf[i] && a->f16 && !(src = f16_to_f32(a, ptrs[i], ar)))
            return RB_ERR_OOM;
        if (!buf[i] && !a->reorder) {
            buf[i] = src;
        } else if (!buf[i]) { /* converted / reordered through scratch */
            if (!(buf[i] = rb_arena_alloc(ar, a->bytes)))
                return RB_ERR_OOM;
            if (a->mode == RB_DNNL_IN)
                RB_TRY(run_reorder(e, a, src, buf[i], scratch));
        }
        DNNL_TRY(dnnl_memory_set_data_handle(a->mem, buf[i]), "set handle");
        args[i] = (dnnl_exec_arg_t){a->arg, a->mem};
    }
    int n = e->n_args;
    if (e->scratch) {
        DNNL_TRY(dnnl_memory_set_data_handle(e->scratch, scratch), "set handle");
        args[n++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, e->scratch};
    }
    DNNL_TRY(dnnl_primitive_execute(e->prim, stream, n, args), "execute");
    for (int i = 0; i < e->n_args; i++) {
        op_arg *a = &e->a[i];
        if (a->reorder && a->mode != RB_DNNL_IN)
            RB_TRY(run_reorder(e, a, ptrs[i], buf[i], scratch));
    }
    DNNL_TRY(dnnl_stream_wait(stream), "stream wait");
    return RB_OK;
}

rb_status rb_dnnl_exec(const void *desc, size_t desc_bytes, rb_dnnl_build_fn build, rb_arena *scratch,
                       void *const *ptrs, unsigned frozen) {
    pthread_mutex_lock(&lock);
    size_t mark = rb_arena_mark(scratch);
    rb_status s = exec_locked(desc, desc_bytes, build, scratch, ptrs, frozen);
    rb_arena_reset(scratch, mark);
    pthread_mutex_unlock(&lock);
    return s;
}
