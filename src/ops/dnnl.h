/* oneDNN glue: one CPU engine and stream for the process, a cache of primitives keyed by a small
 * POD descriptor (shape + dtypes + kind), user-managed scratchpads taken from an arena, reorders
 * between the caller's plain layouts and the layouts oneDNN prefers, and a cache of converted /
 * reordered frozen weights keyed by their address. See the comment at the top of dnnl.c. */
#ifndef RB_OPS_DNNL_H
#define RB_OPS_DNNL_H

#include <oneapi/dnnl/dnnl.h>

#include "core/arena.h"

#define RB_DNNL_MAX_ARGS 6
#define RB_DNNL_MAX_DESC 512 /* bytes of a descriptor (the cache key) */

/* How the caller's buffer for one execution argument relates to the primitive. */
enum { RB_DNNL_IN = 0, RB_DNNL_OUT = 1 /* written (=) */, RB_DNNL_ACC = 2 /* accumulated (+=) */ };

typedef struct rb_dnnl_arg_spec {
    int arg;                 /* DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, ... */
    int mode;                /* RB_DNNL_IN / OUT / ACC */
    dnnl_memory_desc_t user; /* dtype and layout of the caller's buffer */
} rb_dnnl_arg_spec;

/* Builds the primitive descriptor for `desc` (already validated by the caller) and says, per
 * execution argument, what the caller's buffer looks like. The primitive's own layouts come from the
 * pd; where they differ from `user`, rb_dnnl_exec reorders (and converts dtype) through scratch. */
typedef rb_status (*rb_dnnl_build_fn)(const void *desc, dnnl_engine_t engine, dnnl_primitive_desc_t *pd,
                                      rb_dnnl_arg_spec *args, int *n_args);

/* Finds or creates the primitive for desc (its first desc_bytes bytes are the key: zero the struct
 * before filling it so padding is deterministic), then runs it on ptrs[i] (one per arg spec, in the
 * builder's order). Scratchpad and reorder buffers come from `scratch` and are released before
 * returning. Bit i of `frozen` says ptrs[i] is read-only weight memory whose reordered copy may be
 * kept in the weight cache. */
rb_status rb_dnnl_exec(const void *desc, size_t desc_bytes, rb_dnnl_build_fn build, rb_arena *scratch,
                       void *const *ptrs, unsigned frozen);

/* Attributes every builder uses: user-managed scratchpad, plus a sum post-op (dst += result) when
 * accumulate is set. The caller destroys the attr after creating its pd. */
rb_status rb_dnnl_attr(dnnl_primitive_attr_t *attr, int accumulate);

/* Maps a oneDNN status to rb_status with a message naming `what`. */
rb_status rb_dnnl_check(dnnl_status_t s, const char *what);

/* dnnl data type of a relbooth compute dtype (f32, bf16, f16), or dnnl_data_type_undef. */
dnnl_data_type_t rb_dnnl_dt(rb_dtype t);

/* Plain (strided) memory descriptor; dims/strides in elements. */
rb_status rb_dnnl_md(dnnl_memory_desc_t *md, int ndim, const int64_t *dims, const int64_t *strides,
                     dnnl_data_type_t dt);

/* Weight cache control. Entries are keyed by (address, dtype, element count, target layout) and
 * checked against a sampled fingerprint of the data on every use; whoever frees or rewrites frozen
 * weight memory in place must call rb_dnnl_forget (or rb_dnnl_cache_clear). */
void rb_dnnl_forget(const void *weights);
void rb_dnnl_cache_clear(void); /* drops every cached primitive and weight */
void rb_dnnl_set_weight_cache_limit(size_t bytes); /* default: unlimited (within the memory budget) */
size_t rb_dnnl_weight_cache_bytes(void);
int rb_dnnl_primitive_count(void);

#endif
