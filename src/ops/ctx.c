#include "ctx.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

rb_tensor *rb_ctx_error(rb_ctx *c, rb_status s, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    rb_error(s, "%s", msg);
    return rb_ctx_fail(c, s);
}

rb_tensor *rb_ctx_tensor(rb_ctx *c, rb_dtype dtype, int ndim, const int64_t *shape) {
    if (c->status != RB_OK)
        return NULL;
    rb_tensor *t = rb_arena_tensor(c->arena, dtype, ndim, shape);
    return t ? t : rb_ctx_fail(c, RB_ERR_OOM);
}

rb_tensor *rb_ctx_keep(rb_ctx *c, size_t mark, rb_tensor *t) {
    if (!t || c->tape || c->status != RB_OK || !rb_is_contiguous(t))
        return t;
    char *base = c->arena->base;
    if ((char *)t->data < base + mark || (char *)t->data >= base + c->arena->used)
        return t; /* not ours (a weight or a tensor from before the mark) */
    rb_tensor h = *t;
    void *old = h.data;
    rb_arena_reset(c->arena, mark);
    rb_tensor *n = rb_ctx_tensor(c, h.dtype, h.ndim, h.shape);
    if (!n)
        return NULL;
    /* the new header and data start at or below every allocation made after the mark, so the header
     * write cannot clobber `old`, and memmove handles the overlap of the data */
    memmove(n->data, old, rb_nbytes(&h));
    n->name = h.name;
    return n;
}
