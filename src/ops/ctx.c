#include "ctx.h"

#include <stdarg.h>
#include <stdio.h>

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
