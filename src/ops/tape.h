/* The tape: a plain array of the ops run while training, replayed in reverse by rb_backward.
 *
 * An op records itself only when c->tape is set and one of its inputs needs a gradient
 * (requires_grad, or produced by a recorded op). Each entry keeps its inputs, output, the tensors
 * it saved and its scalar parameters; its backward function reads out->grad and accumulates (+=)
 * into the grads of the inputs that need them. Gradients are f32, contiguous, and come from the
 * tape's grad arena, except for leaves whose owner set t->grad beforehand (parameters). */
#ifndef RB_OPS_TAPE_H
#define RB_OPS_TAPE_H

#include <stdio.h>

#include "ctx.h"

#define RB_TAPE_MAX_IN 8

typedef struct rb_tape_entry rb_tape_entry;
typedef rb_status (*rb_backward_fn)(rb_ctx *c, rb_tape_entry *e);

struct rb_tape_entry {
    const char *op;
    rb_backward_fn backward;
    int n_in;
    rb_tensor *in[RB_TAPE_MAX_IN];
    rb_tensor *out;
    rb_tensor *saved[4]; /* extra tensors kept for backward (e.g. layer norm mean/rstd) */
    double f[4];         /* scalar parameters (eps, scale, ...) */
    int64_t i[8];        /* integer parameters (dims, strides, ...) */
    void *user;          /* op-specific pointer (e.g. a checkpointed block) */
};

typedef struct rb_tape {
    rb_tape_entry *e;
    int n, cap;
    rb_arena *grads; /* where intermediate gradients are allocated */
} rb_tape;

rb_status rb_tape_init(rb_tape *t, int cap, rb_arena *grads);
void rb_tape_free(rb_tape *t);
void rb_tape_reset(rb_tape *t); /* forget entries (the grad arena is reset by its owner) */

/* True if t takes part in differentiation (a leaf with requires_grad or a recorded op output). */
static inline int rb_needs_grad(const rb_tensor *t) { return t && t->requires_grad; }

/* Called by ops after computing `out`: if recording and any input needs a gradient, appends an entry,
 * marks out->requires_grad and returns the entry for the op to fill saved/f/i; else NULL.
 * On a full tape it records the error in c and returns NULL. */
rb_tape_entry *rb_tape_record(rb_ctx *c, const char *op, rb_backward_fn backward, rb_tensor *out, int n_in,
                              rb_tensor *const *in);

/* Gradient buffer of t, created zeroed in the grad arena on first use (NULL on error). */
rb_tensor *rb_grad_of(rb_ctx *c, rb_tensor *t);

/* Sets d(loss) = 1 (loss must have one element) and runs every entry's backward in reverse. */
rb_status rb_backward(rb_ctx *c, rb_tensor *loss);

/* Same, seeding d(out) with `dout` (same shape as out, f32): the vector-Jacobian product. */
rb_status rb_backward_with(rb_ctx *c, rb_tensor *out, const rb_tensor *dout);

/* Recomputation: runs fn(c, user, in, n_in) now without recording its inside, and records a single
 * entry; in backward the block is run again with recording on and its own backward is replayed, so
 * only the block's inputs and output are kept between forward and backward. */
typedef rb_tensor *(*rb_block_fn)(rb_ctx *c, void *user, rb_tensor *const *in, int n_in);
rb_tensor *rb_checkpoint(rb_ctx *c, rb_block_fn fn, void *user, int n_in, rb_tensor *const *in);
/* The same for a block that holds trainable parameters of its own (e.g. LoRA pairs): it is recorded
 * even when none of its inputs needs a gradient, and its recomputation in backward accumulates into
 * those parameters' gradients. */
rb_tensor *rb_checkpoint_params(rb_ctx *c, rb_block_fn fn, void *user, int n_in, rb_tensor *const *in);

void rb_tape_print(const rb_tape *t, FILE *f);

#endif
