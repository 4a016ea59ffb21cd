/* Shape ops: concat, split, slice, permute, reshape, contiguous. Outputs are contiguous copies
 * (reshape of a contiguous tensor is a view); backward accumulates the output gradient back into
 * the matching elements of the input gradient. All of them work on any dtype in forward (they only
 * move bytes); gradients are f32 as everywhere. */
#include "shape.h"

#include <string.h>

#include "core/mem.h"
#include "ops.h"

/* ---- raw kernels ---- */

/* Two layouts over one shape, with size-1 dimensions dropped and neighbouring dimensions merged
 * where both layouts are contiguous across them; the innermost remaining dim is the copy run. */
typedef struct {
    int nd;
    int64_t shape[RB_MAX_DIMS], sa[RB_MAX_DIMS], sb[RB_MAX_DIMS];
} pair_layout;

/* Returns the element count (0: nothing to do). */
static int64_t collapse(pair_layout *l, int ndim, const int64_t *shape, const int64_t *sa, const int64_t *sb) {
    int64_t n = 1;
    l->nd = 0;
    for (int d = 0; d < ndim; d++) {
        n *= shape[d];
        if (shape[d] == 1)
            continue;
        int k = l->nd;
        if (k > 0 && l->sa[k - 1] == sa[d] * shape[d] && l->sb[k - 1] == sb[d] * shape[d]) {
            /* the previous (outer) dim steps exactly over this one in both layouts: merge */
            l->shape[k - 1] *= shape[d];
            l->sa[k - 1] = sa[d];
            l->sb[k - 1] = sb[d];
            continue;
        }
        l->shape[k] = shape[d];
        l->sa[k] = sa[d];
        l->sb[k] = sb[d];
        l->nd++;
    }
    if (l->nd == 0) {
        l->nd = 1;
        l->shape[0] = 1;
        l->sa[0] = l->sb[0] = 1;
    }
    return n;
}

/* Element offsets (in each layout) of the first element of row r (all dims but the innermost). */
static void row_offsets(const pair_layout *l, int64_t r, int64_t *oa, int64_t *ob) {
    int64_t a = 0, b = 0;
    for (int d = l->nd - 2; d >= 0; d--) {
        int64_t i = r % l->shape[d];
        r /= l->shape[d];
        a += i * l->sa[d];
        b += i * l->sb[d];
    }
    *oa = a;
    *ob = b;
}

#define PAR_MIN 32768 /* elements below which threads cost more than they save */

void strided_copy_forward(void *out, const int64_t *out_stride, const void *inp, const int64_t *inp_stride,
                          int ndim, const int64_t *shape, size_t esize) {
    pair_layout l;
    int64_t n = collapse(&l, ndim, shape, out_stride, inp_stride);
    if (n == 0)
        return;
    int64_t run = l.shape[l.nd - 1], so = l.sa[l.nd - 1], si = l.sb[l.nd - 1], rows = n / run;
    char *o = out;
    const char *p = inp;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t oa, ob;
        row_offsets(&l, r, &oa, &ob);
        char *dst = o + oa * (int64_t)esize;
        const char *src = p + ob * (int64_t)esize;
        if (so == 1 && si == 1) {
            memcpy(dst, src, (size_t)run * esize);
        } else if (esize == 4) {
            uint32_t *d4 = (uint32_t *)dst;
            const uint32_t *s4 = (const uint32_t *)src;
            for (int64_t k = 0; k < run; k++)
                d4[k * so] = s4[k * si];
        } else if (esize == 2) {
            uint16_t *d2 = (uint16_t *)dst;
            const uint16_t *s2 = (const uint16_t *)src;
            for (int64_t k = 0; k < run; k++)
                d2[k * so] = s2[k * si];
        } else {
            for (int64_t k = 0; k < run; k++)
                memcpy(dst + k * so * (int64_t)esize, src + k * si * (int64_t)esize, esize);
        }
    }
}

void strided_copy_backward(float *dinp, const int64_t *dinp_stride, const float *dout, const int64_t *dout_stride,
                           int ndim, const int64_t *shape) {
    pair_layout l;
    int64_t n = collapse(&l, ndim, shape, dinp_stride, dout_stride);
    if (n == 0)
        return;
    int64_t run = l.shape[l.nd - 1], sd = l.sa[l.nd - 1], so = l.sb[l.nd - 1], rows = n / run;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t oa, ob;
        row_offsets(&l, r, &oa, &ob);
        float *d = dinp + oa;
        const float *s = dout + ob;
        if (sd == 1 && so == 1) {
            for (int64_t k = 0; k < run; k++)
                d[k] += s[k];
        } else {
            for (int64_t k = 0; k < run; k++)
                d[k * sd] += s[k * so];
        }
    }
}

/* ---- helpers ---- */

static int norm_dim(int dim, int ndim) {
    if (dim < 0)
        dim += ndim;
    return dim >= 0 && dim < ndim ? dim : -1;
}

static void contiguous_strides(int64_t *stride, int ndim, const int64_t *shape) {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        stride[i] = s;
        s *= shape[i];
    }
}

/* ---- concat ---- */

/* e->i[0] = dim. Each input's gradient is its slab of d(out) along dim. */
static rb_status concat_backward(rb_ctx *c, rb_tape_entry *e) {
    int d = (int)e->i[0];
    const rb_tensor *go = e->out->grad;
    int64_t off = 0;
    for (int k = 0; k < e->n_in; k++) {
        rb_tensor *x = e->in[k];
        if (rb_needs_grad(x)) {
            rb_tensor *g = rb_grad_of(c, x);
            if (!g)
                return c->status;
            strided_copy_backward(g->data, g->stride, (const float *)go->data + off * go->stride[d], go->stride,
                                  x->ndim, x->shape);
        }
        off += x->shape[d];
    }
    return RB_OK;
}

rb_tensor *rb_concat(rb_ctx *c, rb_tensor *const *xs, int n, int dim) {
    if (c->status != RB_OK)
        return NULL;
    if (!xs || n < 1)
        return rb_ctx_error(c, RB_ERR_INVALID, "concat: %d inputs (need at least 1)", n);
    for (int k = 0; k < n; k++)
        if (!xs[k])
            return rb_ctx_error(c, RB_ERR_INVALID, "concat: input %d is NULL", k);
    const rb_tensor *x0 = xs[0];
    int d = norm_dim(dim, x0->ndim);
    if (d < 0)
        return rb_ctx_error(c, RB_ERR_INVALID, "concat: dim %d out of range for %d-d inputs", dim, x0->ndim);
    int64_t shape[RB_MAX_DIMS];
    memcpy(shape, x0->shape, sizeof shape);
    shape[d] = 0;
    int any_grad = 0;
    for (int k = 0; k < n; k++) {
        const rb_tensor *x = xs[k];
        char b0[64], b1[64];
        if (x->ndim != x0->ndim || x->dtype != x0->dtype)
            return rb_ctx_error(c, RB_ERR_INVALID, "concat: input %d is %s %s, input 0 is %s %s", k,
                                rb_dtype_name(x->dtype), rb_shape_str(x, b1, sizeof b1), rb_dtype_name(x0->dtype),
                                rb_shape_str(x0, b0, sizeof b0));
        for (int i = 0; i < x->ndim; i++)
            if (i != d && x->shape[i] != x0->shape[i])
                return rb_ctx_error(c, RB_ERR_INVALID, "concat: input %d has shape %s, input 0 %s (dim %d)", k,
                                    rb_shape_str(x, b1, sizeof b1), rb_shape_str(x0, b0, sizeof b0), d);
        shape[d] += x->shape[d];
        any_grad |= rb_needs_grad(x);
    }
    if (c->tape && any_grad && n > RB_TAPE_MAX_IN) {
        /* a tape entry holds at most RB_TAPE_MAX_IN inputs: concat groups first, then the groups
         * (the same values, one extra copy) */
        int ng = (n + RB_TAPE_MAX_IN - 1) / RB_TAPE_MAX_IN;
        rb_tensor **parts = rb_arena_alloc(c->arena, (size_t)ng * sizeof *parts);
        if (!parts)
            return rb_ctx_fail(c, RB_ERR_OOM);
        for (int g = 0; g < ng; g++) {
            int m = n - g * RB_TAPE_MAX_IN < RB_TAPE_MAX_IN ? n - g * RB_TAPE_MAX_IN : RB_TAPE_MAX_IN;
            if (!(parts[g] = rb_concat(c, xs + g * RB_TAPE_MAX_IN, m, d)))
                return NULL;
        }
        return rb_concat(c, parts, ng, d);
    }
    rb_tensor *out = rb_ctx_tensor(c, x0->dtype, x0->ndim, shape);
    if (!out)
        return NULL;
    size_t es = rb_dtype_size(out->dtype);
    int64_t off = 0;
    for (int k = 0; k < n; k++) {
        strided_copy_forward((char *)out->data + off * out->stride[d] * (int64_t)es, out->stride, xs[k]->data,
                             xs[k]->stride, out->ndim, xs[k]->shape, es);
        off += xs[k]->shape[d];
    }
    rb_tape_entry *e = rb_tape_record(c, "concat", concat_backward, out, n, xs);
    if (e)
        e->i[0] = d;
    return out;
}

/* ---- slice and split ---- */

/* e->i[0] = dim, e->i[1] = start. */
static rb_status slice_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *x = e->in[0], *g = rb_grad_of(c, x);
    if (!g)
        return c->status;
    const rb_tensor *go = e->out->grad;
    strided_copy_backward((float *)g->data + e->i[1] * g->stride[e->i[0]], g->stride, go->data, go->stride,
                          go->ndim, go->shape);
    return RB_OK;
}

/* Copy of x[..., start:end, ...] on dim d (already checked). */
static rb_tensor *slice_copy(rb_ctx *c, rb_tensor *x, int d, int64_t start, int64_t end) {
    int64_t shape[RB_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[d] = end - start;
    rb_tensor *out = rb_ctx_tensor(c, x->dtype, x->ndim, shape);
    if (!out)
        return NULL;
    size_t es = rb_dtype_size(x->dtype);
    strided_copy_forward(out->data, out->stride, (const char *)x->data + start * x->stride[d] * (int64_t)es,
                         x->stride, x->ndim, shape, es);
    rb_tape_entry *e = rb_tape_record(c, "slice", slice_backward, out, 1, &x);
    if (e) {
        e->i[0] = d;
        e->i[1] = start;
    }
    return out;
}

/* Python slice semantics with step 1, as x[..., start:end] in PyTorch: negative bounds count from
 * the end, bounds past either end are clamped, end <= start gives an empty dim. */
rb_tensor *rb_slice(rb_ctx *c, rb_tensor *x, int dim, int64_t start, int64_t end) {
    if (c->status != RB_OK)
        return NULL;
    if (!x)
        return rb_ctx_error(c, RB_ERR_INVALID, "slice: input is NULL");
    int d = norm_dim(dim, x->ndim);
    if (d < 0)
        return rb_ctx_error(c, RB_ERR_INVALID, "slice: dim %d out of range for a %d-d input", dim, x->ndim);
    int64_t n = x->shape[d];
    if (start < 0)
        start = start + n < 0 ? 0 : start + n;
    if (end < 0)
        end = end + n < 0 ? 0 : end + n;
    if (start > n)
        start = n;
    if (end > n)
        end = n;
    if (end < start)
        end = start;
    return slice_copy(c, x, d, start, end);
}

rb_status rb_split(rb_ctx *c, rb_tensor *x, int dim, const int64_t *sizes, int n, rb_tensor **out) {
    if (c->status != RB_OK)
        return c->status;
    if (out)
        for (int k = 0; k < n; k++)
            out[k] = NULL;
    if (!x || !sizes || !out || n < 1) {
        rb_ctx_error(c, RB_ERR_INVALID, "split: %s", !x ? "input is NULL" : n < 1 ? "no pieces" : "NULL argument");
        return c->status;
    }
    int d = norm_dim(dim, x->ndim);
    if (d < 0) {
        rb_ctx_error(c, RB_ERR_INVALID, "split: dim %d out of range for a %d-d input", dim, x->ndim);
        return c->status;
    }
    int64_t total = 0;
    for (int k = 0; k < n; k++) {
        if (sizes[k] < 0 || sizes[k] > x->shape[d] - total) {
            rb_ctx_error(c, RB_ERR_INVALID, "split: sizes exceed dim %d of size %lld at piece %d (size %lld)", d,
                         (long long)x->shape[d], k, (long long)sizes[k]);
            return c->status;
        }
        total += sizes[k];
    }
    if (total != x->shape[d]) {
        rb_ctx_error(c, RB_ERR_INVALID, "split: sizes add up to %lld, dim %d has %lld", (long long)total, d,
                     (long long)x->shape[d]);
        return c->status;
    }
    int64_t start = 0;
    for (int k = 0; k < n; k++) {
        if (!(out[k] = slice_copy(c, x, d, start, start + sizes[k])))
            return c->status;
        start += sizes[k];
    }
    return RB_OK;
}

/* ---- permute ---- */

/* e->i[0..ndim) = perm: out dim k is input dim perm[k]. */
static rb_status permute_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *x = e->in[0], *g = rb_grad_of(c, x);
    if (!g)
        return c->status;
    const rb_tensor *go = e->out->grad;
    int64_t gs[RB_MAX_DIMS];
    for (int k = 0; k < go->ndim; k++)
        gs[k] = g->stride[e->i[k]];
    strided_copy_backward(g->data, gs, go->data, go->stride, go->ndim, go->shape);
    return RB_OK;
}

rb_tensor *rb_permute(rb_ctx *c, rb_tensor *x, const int *perm) {
    if (c->status != RB_OK)
        return NULL;
    if (!x || !perm)
        return rb_ctx_error(c, RB_ERR_INVALID, "permute: %s is NULL", x ? "perm" : "input");
    int seen[RB_MAX_DIMS] = {0};
    int64_t shape[RB_MAX_DIMS], xs[RB_MAX_DIMS];
    for (int k = 0; k < x->ndim; k++) {
        if (perm[k] < 0 || perm[k] >= x->ndim || seen[perm[k]]++)
            return rb_ctx_error(c, RB_ERR_INVALID, "permute: entry %d (%d) makes no permutation of %d dims", k,
                                perm[k], x->ndim);
        shape[k] = x->shape[perm[k]];
        xs[k] = x->stride[perm[k]];
    }
    rb_tensor *out = rb_ctx_tensor(c, x->dtype, x->ndim, shape);
    if (!out)
        return NULL;
    strided_copy_forward(out->data, out->stride, x->data, xs, x->ndim, shape, rb_dtype_size(x->dtype));
    rb_tape_entry *e = rb_tape_record(c, "permute", permute_backward, out, 1, &x);
    if (e)
        for (int k = 0; k < x->ndim; k++)
            e->i[k] = perm[k];
    return out;
}

/* ---- contiguous and reshape ---- */

/* Same shape on both sides: d(x) += d(out), each in its own layout. */
static rb_status same_shape_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *x = e->in[0], *g = rb_grad_of(c, x);
    if (!g)
        return c->status;
    strided_copy_backward(g->data, g->stride, e->out->grad->data, e->out->grad->stride, g->ndim, g->shape);
    return RB_OK;
}

rb_tensor *rb_contiguous(rb_ctx *c, rb_tensor *x) {
    if (c->status != RB_OK)
        return NULL;
    if (!x)
        return rb_ctx_error(c, RB_ERR_INVALID, "contiguous: input is NULL");
    if (rb_is_contiguous(x))
        return x; /* like torch: the tensor itself, so gradients reach it directly */
    rb_tensor *out = rb_ctx_tensor(c, x->dtype, x->ndim, x->shape);
    if (!out)
        return NULL;
    strided_copy_forward(out->data, out->stride, x->data, x->stride, x->ndim, x->shape, rb_dtype_size(x->dtype));
    rb_tape_record(c, "contiguous", same_shape_backward, out, 1, &x);
    return out;
}

/* The output holds the same elements in the same (row-major) order, so d(x) += d(out) read with
 * x's shape. Both gradients are contiguous. */
static rb_status reshape_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *x = e->in[0], *g = rb_grad_of(c, x);
    if (!g)
        return c->status;
    int64_t st[RB_MAX_DIMS];
    contiguous_strides(st, x->ndim, x->shape);
    strided_copy_backward(g->data, g->stride, e->out->grad->data, st, x->ndim, x->shape);
    return RB_OK;
}

rb_tensor *rb_reshape(rb_ctx *c, rb_tensor *x, int ndim, const int64_t *shape) {
    if (c->status != RB_OK)
        return NULL;
    if (!x || (!shape && ndim > 0))
        return rb_ctx_error(c, RB_ERR_INVALID, "reshape: %s is NULL", x ? "shape" : "input");
    rb_tensor view;
    int64_t none[1] = {0};
    if (!rb_is_contiguous(x)) {
        /* check first, so a bad shape does not leave a useless copy on the tape */
        rb_tensor probe = *x;
        rb_set_contiguous_strides(&probe);
        if (rb_view_reshape(&view, &probe, ndim, shape ? shape : none) != RB_OK)
            return rb_ctx_fail(c, RB_ERR_INVALID);
        if (!(x = rb_contiguous(c, x)))
            return NULL;
    }
    rb_status s = rb_view_reshape(&view, x, ndim, shape ? shape : none);
    if (s != RB_OK)
        return rb_ctx_fail(c, s);
    rb_tensor *out = rb_arena_alloc(c->arena, sizeof *out);
    if (!out)
        return rb_ctx_fail(c, RB_ERR_OOM);
    *out = view; /* shares x's data */
    out->grad = NULL;
    out->requires_grad = 0; /* set by the tape when x takes part in differentiation */
    out->name = NULL;
    rb_tape_record(c, "reshape", reshape_backward, out, 1, &x);
    return out;
}
