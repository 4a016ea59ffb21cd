/* The run context every tensor-level op takes: where outputs go, whether we are recording for
 * training, and the first error. Ops return NULL once an error is recorded, so model code can chain
 * calls and check once: `y = rb_linear(c, rb_silu(c, x), w, b); if (!y) return c->status;` */
#ifndef RB_OPS_CTX_H
#define RB_OPS_CTX_H

#include "core/arena.h"

struct rb_tape;

typedef struct rb_ctx {
    rb_arena *arena;       /* op outputs and saved tensors */
    struct rb_tape *tape;  /* non-NULL: record ops whose inputs need gradients */
    rb_dtype matmul_dtype; /* RB_F32 or RB_BF16: compute type of linear/matmul/conv (f32 accumulation) */
    rb_status status;      /* first error, sticky until rb_ctx_clear */
    int in_checkpoint;     /* running a block's forward that backward will recompute with recording on: ops
                              must compute exactly as the recording pass will (e.g. no bf16-only shortcuts) */
} rb_ctx;

static inline void rb_ctx_init(rb_ctx *c, rb_arena *arena) {
    c->arena = arena;
    c->tape = 0;
    c->matmul_dtype = RB_F32;
    c->status = RB_OK;
    c->in_checkpoint = 0;
}
static inline void rb_ctx_clear(rb_ctx *c) { c->status = RB_OK; }

/* Records the error from a failed call (the message is already set) and returns NULL. */
static inline rb_tensor *rb_ctx_fail(rb_ctx *c, rb_status s) {
    if (c->status == RB_OK)
        c->status = s;
    return 0;
}
/* rb_error + rb_ctx_fail in one go. */
rb_tensor *rb_ctx_error(rb_ctx *c, rb_status s, const char *fmt, ...) RB_PRINTF(3, 4);
/* New contiguous output tensor in the context's arena (NULL and status set if full). */
rb_tensor *rb_ctx_tensor(rb_ctx *c, rb_dtype dtype, int ndim, const int64_t *shape);
/* Inference compaction: moves `t` (allocated after `mark`, contiguous) down to `mark` and frees everything
 * else allocated since, so a layer's scratch does not pile up over a deep model. A no-op on a tape (the
 * intermediates are saved for backward), after an error, or for a tensor not allocated since the mark. */
rb_tensor *rb_ctx_keep(rb_ctx *c, size_t mark, rb_tensor *t);

#endif
