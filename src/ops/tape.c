#include "tape.h"

#include <string.h>

#include "core/mem.h"

rb_status rb_tape_init(rb_tape *t, int cap, rb_arena *grads) {
    memset(t, 0, sizeof *t);
    if (cap < 16)
        cap = 16;
    t->e = rb_alloc((size_t)cap * sizeof *t->e, "tape");
    if (!t->e)
        return RB_ERR_OOM;
    t->cap = cap;
    t->grads = grads;
    return RB_OK;
}

void rb_tape_free(rb_tape *t) {
    rb_free(t->e);
    memset(t, 0, sizeof *t);
}

void rb_tape_reset(rb_tape *t) { t->n = 0; }

static rb_status grow(rb_tape *t) {
    rb_tape_entry *e = rb_alloc((size_t)t->cap * 2 * sizeof *e, "tape");
    if (!e)
        return RB_ERR_OOM;
    memcpy(e, t->e, (size_t)t->n * sizeof *e);
    rb_free(t->e);
    t->e = e;
    t->cap *= 2;
    return RB_OK;
}

static rb_tape_entry *record(rb_ctx *c, const char *op, rb_backward_fn backward, rb_tensor *out, int n_in,
                             rb_tensor *const *in, int force) {
    rb_tape *t = c->tape;
    if (!t || !out || c->status != RB_OK)
        return NULL;
    int any = force;
    for (int i = 0; i < n_in; i++)
        any |= rb_needs_grad(in[i]);
    if (!any)
        return NULL;
    if (n_in > RB_TAPE_MAX_IN) {
        rb_ctx_error(c, RB_ERR_INTERNAL, "tape: %s has %d inputs (max %d)", op, n_in, RB_TAPE_MAX_IN);
        return NULL;
    }
    if (t->n == t->cap && grow(t) != RB_OK) {
        rb_ctx_fail(c, RB_ERR_OOM);
        return NULL;
    }
    rb_tape_entry *e = &t->e[t->n++];
    memset(e, 0, sizeof *e);
    e->op = op;
    e->backward = backward;
    e->n_in = n_in;
    for (int i = 0; i < n_in; i++)
        e->in[i] = in[i];
    e->out = out;
    out->requires_grad = 1;
    return e;
}

rb_tape_entry *rb_tape_record(rb_ctx *c, const char *op, rb_backward_fn backward, rb_tensor *out, int n_in,
                              rb_tensor *const *in) {
    return record(c, op, backward, out, n_in, in, 0);
}

rb_tensor *rb_grad_of(rb_ctx *c, rb_tensor *t) {
    if (t->grad)
        return t->grad;
    if (!c->tape || !c->tape->grads)
        return rb_ctx_error(c, RB_ERR_INVALID, "gradient requested without a tape");
    rb_tensor *g = rb_arena_zeros(c->tape->grads, RB_F32, t->ndim, t->shape);
    if (!g)
        return rb_ctx_fail(c, RB_ERR_OOM);
    t->grad = g;
    return g;
}

static rb_status run_backward(rb_ctx *c, int from, int to) {
    for (int i = to - 1; i >= from; i--) {
        rb_tape_entry *e = &c->tape->e[i];
        if (!e->out->grad)
            continue; /* nothing downstream depended on this output */
        const char *op = e->op; /* a checkpoint's backward may grow (move) the tape */
        rb_status s = e->backward(c, e);
        if (s != RB_OK)
            return rb_error_prefix(s, "backward of %s", op);
        if (c->status != RB_OK)
            return c->status;
    }
    return RB_OK;
}

/* Gradients of recorded outputs (not of leaves) start from zero in every pass, so that a second
 * backward over the same tape adds exactly one more pass to the leaves, as in torch; without this
 * the intermediates would still hold the first pass and the leaves would get it again. */
static void zero_intermediate_grads(rb_tape *t) {
    for (int i = 0; i < t->n; i++) {
        rb_tensor *g = t->e[i].out->grad;
        if (g)
            memset(g->data, 0, rb_nbytes(g));
    }
}

rb_status rb_backward(rb_ctx *c, rb_tensor *loss) {
    if (!c->tape)
        return rb_error(RB_ERR_INVALID, "backward: no tape");
    if (!loss || rb_numel(loss) != 1)
        return rb_error(RB_ERR_INVALID, "backward: loss must have exactly one element");
    if (!loss->requires_grad)
        return rb_error(RB_ERR_INVALID, "backward: the loss does not depend on anything that needs a gradient");
    zero_intermediate_grads(c->tape);
    rb_tensor *g = rb_grad_of(c, loss);
    if (!g)
        return c->status;
    ((float *)g->data)[0] = 1.0f;
    return run_backward(c, 0, c->tape->n);
}

rb_status rb_backward_with(rb_ctx *c, rb_tensor *out, const rb_tensor *dout) {
    if (!c->tape)
        return rb_error(RB_ERR_INVALID, "backward: no tape");
    if (!out || !dout || !rb_same_shape(out, dout))
        return rb_error(RB_ERR_INVALID, "backward: gradient shape differs from the output's");
    if (!out->requires_grad)
        return rb_error(RB_ERR_INVALID, "backward: the output does not depend on anything that needs a gradient");
    zero_intermediate_grads(c->tape);
    rb_tensor *g = rb_grad_of(c, out);
    if (!g)
        return c->status;
    RB_TRY(rb_tensor_copy(g, dout));
    return run_backward(c, 0, c->tape->n);
}

/* ---- recomputation ---- */

typedef struct {
    rb_block_fn fn;
    void *user;
} block;

static rb_status checkpoint_backward(rb_ctx *c, rb_tape_entry *entry) {
    rb_tape_entry e = *entry; /* the tape may grow (and move) while the block is recorded again */
    block *b = e.user;
    rb_tape *t = c->tape;
    for (int i = 0; i < e.n_in; i++)
        if (rb_needs_grad(e.in[i]) && !rb_grad_of(c, e.in[i]))
            return c->status;
    size_t act_mark = rb_arena_mark(c->arena), grad_mark = rb_arena_mark(t->grads);
    int n0 = t->n;
    rb_tensor *out = b->fn(c, b->user, e.in, e.n_in);
    if (!out)
        return c->status != RB_OK ? c->status : rb_error(RB_ERR_INTERNAL, "checkpoint: block returned NULL");
    if (!rb_same_shape(out, e.out))
        return rb_error(RB_ERR_INTERNAL, "checkpoint: recomputed output has another shape");
    rb_status s = RB_OK;
    if (out->requires_grad) {
        out->grad = e.out->grad;
        s = run_backward(c, n0, t->n);
    }
    t->n = n0;
    rb_arena_reset(c->arena, act_mark);
    rb_arena_reset(t->grads, grad_mark);
    return s;
}

static rb_tensor *checkpoint(rb_ctx *c, rb_block_fn fn, void *user, int n_in, rb_tensor *const *in, int params) {
    if (c->status != RB_OK)
        return NULL;
    rb_tape *t = c->tape;
    size_t mark = rb_arena_mark(c->arena);
    c->tape = NULL;
    int was = c->in_checkpoint;
    c->in_checkpoint = t != NULL; /* recorded: backward recomputes this block, which must give the same values */
    rb_tensor *out = fn(c, user, in, n_in);
    c->in_checkpoint = was;
    c->tape = t;
    if (!out)
        return c->status != RB_OK ? NULL : rb_ctx_error(c, RB_ERR_INTERNAL, "checkpoint: block returned NULL");
    /* Keep only the block's output: move it down to the mark and drop the intermediates. New
     * addresses are never above old ones, so memmove is safe. */
    char *lo = c->arena->base + mark, *hi = c->arena->base + c->arena->used;
    if (rb_is_contiguous(out) && (char *)out->data >= lo && (char *)out->data < hi) {
        rb_tensor hdr = *out;
        size_t bytes = rb_nbytes(&hdr);
        rb_arena_reset(c->arena, mark);
        out = rb_arena_alloc(c->arena, sizeof *out);
        void *d = rb_arena_alloc(c->arena, bytes);
        memmove(d, hdr.data, bytes);
        *out = hdr;
        out->data = d;
    }
    rb_tape_entry *e = record(c, "checkpoint", checkpoint_backward, out, n_in, in, params && t);
    if (e) {
        block *b = rb_arena_alloc(c->arena, sizeof *b);
        if (!b)
            return rb_ctx_fail(c, RB_ERR_OOM);
        b->fn = fn;
        b->user = user;
        e->user = b;
    }
    return out;
}

void rb_tape_print(const rb_tape *t, FILE *f) {
    for (int i = 0; i < t->n; i++) {
        const rb_tape_entry *e = &t->e[i];
        char buf[64];
        fprintf(f, "%4d %-16s out %s", i, e->op, rb_shape_str(e->out, buf, sizeof buf));
        if (e->out->name)
            fprintf(f, " (%s)", e->out->name);
        fprintf(f, " <-");
        for (int k = 0; k < e->n_in; k++)
            fprintf(f, " %s%s", e->in[k] ? rb_shape_str(e->in[k], buf, sizeof buf) : "-",
                    e->in[k] && e->in[k]->requires_grad ? "*" : "");
        fprintf(f, "\n");
    }
}

rb_tensor *rb_checkpoint(rb_ctx *c, rb_block_fn fn, void *user, int n_in, rb_tensor *const *in) {
    return checkpoint(c, fn, user, n_in, in, 0);
}

rb_tensor *rb_checkpoint_params(rb_ctx *c, rb_block_fn fn, void *user, int n_in, rb_tensor *const *in) {
    return checkpoint(c, fn, user, n_in, in, 1);
}
