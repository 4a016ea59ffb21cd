/* Indexing ops: embedding lookup (token and position embeddings) and torch.gather. Indices are
 * untrusted (token ids come from user prompts): every one is checked before any memory is read. */
#include "gather.h"

#include <string.h>

#include "ops.h"
#include "shape.h"

/* ---- raw kernels ---- */

void embedding_forward(float *out, const void *table, rb_dtype table_dtype, int64_t ld, const int64_t *ids,
                       int64_t n, int64_t C) {
#pragma omp parallel for schedule(static) if (n * C >= 65536)
    for (int64_t k = 0; k < n; k++) {
        float *o = out + k * C;
        if (table_dtype == RB_F32)
            memcpy(o, (const float *)table + ids[k] * ld, (size_t)C * sizeof *o);
        else if (table_dtype == RB_BF16)
            rb_bf16_to_f32_n(o, (const uint16_t *)table + ids[k] * ld, (size_t)C);
        else
            rb_f16_to_f32_n(o, (const uint16_t *)table + ids[k] * ld, (size_t)C);
    }
}

void embedding_backward(float *dtable, const float *dout, const int64_t *ids, int64_t n, int64_t C) {
    /* serial over ids (a repeated id adds twice into the same row), vectorised along C */
    for (int64_t k = 0; k < n; k++) {
        float *d = dtable + ids[k] * C;
        const float *g = dout + k * C;
        for (int64_t j = 0; j < C; j++)
            d[j] += g[j];
    }
}

/* Offset in inp of the first element of row r of `shape` (all dims but the last), leaving out `dim`. */
static int64_t row_base(int64_t r, int ndim, const int64_t *shape, const int64_t *stride, int dim) {
    int64_t off = 0;
    for (int d = ndim - 2; d >= 0; d--) {
        int64_t i = r % shape[d];
        r /= shape[d];
        if (d != dim)
            off += i * stride[d];
    }
    return off;
}

void gather_forward(float *out, const float *inp, const int64_t *inp_stride, const int64_t *index, int ndim,
                    const int64_t *shape, int dim) {
    int64_t L = shape[ndim - 1], n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    if (n == 0)
        return;
    int64_t rows = n / L, sl = inp_stride[ndim - 1], sd = inp_stride[dim];
    int last = dim == ndim - 1;
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t r = 0; r < rows; r++) {
        int64_t base = row_base(r, ndim, shape, inp_stride, dim);
        const int64_t *ix = index + r * L;
        float *o = out + r * L;
        if (last)
            for (int64_t k = 0; k < L; k++)
                o[k] = inp[base + ix[k] * sd];
        else
            for (int64_t k = 0; k < L; k++)
                o[k] = inp[base + k * sl + ix[k] * sd];
    }
}

void gather_backward(float *dinp, const int64_t *dinp_stride, const float *dout, const int64_t *index, int ndim,
                     const int64_t *shape, int dim) {
    int64_t L = shape[ndim - 1], n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    if (n == 0)
        return;
    int64_t rows = n / L, sl = dinp_stride[ndim - 1], sd = dinp_stride[dim];
    int last = dim == ndim - 1;
    /* serial: different index entries may point at the same input element */
    for (int64_t r = 0; r < rows; r++) {
        int64_t base = row_base(r, ndim, shape, dinp_stride, dim);
        const int64_t *ix = index + r * L;
        const float *g = dout + r * L;
        for (int64_t k = 0; k < L; k++)
            dinp[base + (last ? 0 : k * sl) + ix[k] * sd] += g[k];
    }
}

/* ---- tensor-level ops ---- */

/* The index tensor t (i64 or i32, any layout) as a contiguous i64 arena tensor of its shape, each
 * value checked against [0, limit); `what` names the op and argument in errors. */
static rb_tensor *read_indices(rb_ctx *c, const rb_tensor *t, int64_t limit, const char *what) {
    if (t->dtype != RB_I64 && t->dtype != RB_I32)
        return rb_ctx_error(c, RB_ERR_INVALID, "%s: dtype %s (need i64 or i32)", what, rb_dtype_name(t->dtype));
    rb_tensor *ids = rb_ctx_tensor(c, RB_I64, t->ndim, t->shape);
    if (!ids)
        return NULL;
    int64_t n = rb_numel(t), *v = ids->data;
    if (t->dtype == RB_I64) {
        strided_copy_forward(v, ids->stride, t->data, t->stride, t->ndim, t->shape, 8);
    } else {
        /* copy the i32 values into the front half of the buffer, then widen from the back */
        int32_t *v32 = (int32_t *)v;
        strided_copy_forward(v32, ids->stride, t->data, t->stride, t->ndim, t->shape, 4);
        for (int64_t k = n - 1; k >= 0; k--)
            v[k] = v32[k];
    }
    for (int64_t k = 0; k < n; k++)
        if (v[k] < 0 || v[k] >= limit)
            return rb_ctx_error(c, RB_ERR_INVALID, "%s %lld at position %lld is outside [0, %lld)", what,
                                (long long)v[k], (long long)k, (long long)limit);
    return ids;
}

/* in[0] = table; saved[0] = the ids as contiguous i64 */
static rb_status embedding_bwd(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *table = e->in[0];
    if (!rb_needs_grad(table))
        return RB_OK;
    rb_tensor *g = rb_grad_of(c, table);
    if (!g)
        return c->status;
    const rb_tensor *ids = e->saved[0];
    embedding_backward(g->data, e->out->grad->data, ids->data, rb_numel(ids), table->shape[1]);
    return RB_OK;
}

rb_tensor *rb_embedding(rb_ctx *c, rb_tensor *table, rb_tensor *ids) {
    if (c->status != RB_OK)
        return NULL;
    if (!table || !ids)
        return rb_ctx_error(c, RB_ERR_INVALID, "embedding: %s is NULL", table ? "ids" : "table");
    char b[64];
    if (table->ndim != 2)
        return rb_ctx_error(c, RB_ERR_INVALID, "embedding: table must be [V, C], got %s",
                            rb_shape_str(table, b, sizeof b));
    if (table->dtype != RB_F32 && table->dtype != RB_BF16 && table->dtype != RB_F16)
        return rb_ctx_error(c, RB_ERR_UNSUPPORTED, "embedding: table dtype %s (need f32, bf16 or f16)",
                            rb_dtype_name(table->dtype));
    if (ids->ndim >= RB_MAX_DIMS)
        return rb_ctx_error(c, RB_ERR_INVALID, "embedding: ids have %d dims (at most %d)", ids->ndim,
                            RB_MAX_DIMS - 1);
    int64_t V = table->shape[0], C = table->shape[1];
    rb_tensor *id = read_indices(c, ids, V, "embedding: id");
    if (!id)
        return NULL;
    /* rows must have contiguous elements; a table viewed otherwise is copied once */
    const void *tdata = table->data;
    int64_t ld = table->stride[0];
    if (C > 1 && table->stride[1] != 1) {
        rb_tensor *t = rb_ctx_tensor(c, table->dtype, 2, table->shape);
        if (!t)
            return NULL;
        strided_copy_forward(t->data, t->stride, table->data, table->stride, 2, table->shape,
                             rb_dtype_size(table->dtype));
        tdata = t->data;
        ld = C;
    }
    int64_t shape[RB_MAX_DIMS];
    memcpy(shape, ids->shape, (size_t)ids->ndim * sizeof *shape);
    shape[ids->ndim] = C;
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, ids->ndim + 1, shape);
    if (!out)
        return NULL;
    embedding_forward(out->data, tdata, table->dtype, ld, id->data, rb_numel(id), C);
    rb_tape_entry *e = rb_tape_record(c, "embedding", embedding_bwd, out, 1, &table);
    if (e)
        e->saved[0] = id;
    return out;
}

/* in[0] = x; saved[0] = the index as contiguous i64; i[0] = dim */
static rb_status gather_bwd(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *x = e->in[0], *g = rb_grad_of(c, x);
    if (!g)
        return c->status;
    const rb_tensor *ix = e->saved[0];
    if (ix->ndim == 0) { /* a 0-d gather picks the only element */
        ((float *)g->data)[0] += ((const float *)e->out->grad->data)[0];
        return RB_OK;
    }
    gather_backward(g->data, g->stride, e->out->grad->data, ix->data, ix->ndim, ix->shape, (int)e->i[0]);
    return RB_OK;
}

rb_tensor *rb_gather(rb_ctx *c, rb_tensor *x, int dim, rb_tensor *index) {
    if (c->status != RB_OK)
        return NULL;
    if (!x || !index)
        return rb_ctx_error(c, RB_ERR_INVALID, "gather: %s is NULL", x ? "index" : "input");
    char b0[64], b1[64];
    int nd = x->ndim, d = dim < 0 ? dim + (nd ? nd : 1) : dim;
    if (d < 0 || d >= (nd ? nd : 1))
        return rb_ctx_error(c, RB_ERR_INVALID, "gather: dim %d out of range for a %d-d input", dim, nd);
    if (index->ndim != nd)
        return rb_ctx_error(c, RB_ERR_INVALID, "gather: index %s and input %s differ in dims",
                            rb_shape_str(index, b1, sizeof b1), rb_shape_str(x, b0, sizeof b0));
    for (int k = 0; k < nd; k++)
        if (k != d && index->shape[k] > x->shape[k])
            return rb_ctx_error(c, RB_ERR_INVALID, "gather: index %s is larger than input %s in dim %d",
                                rb_shape_str(index, b1, sizeof b1), rb_shape_str(x, b0, sizeof b0), k);
    if (x->dtype != RB_F32 && x->dtype != RB_F16 && x->dtype != RB_BF16)
        return rb_ctx_error(c, RB_ERR_UNSUPPORTED, "gather: input dtype %s (need f32, f16 or bf16)",
                            rb_dtype_name(x->dtype));
    rb_tensor *ix = read_indices(c, index, nd ? x->shape[d] : 1, "gather: index");
    if (!ix)
        return NULL;
    const rb_tensor *xf = x;
    if (x->dtype != RB_F32) { /* f32 copy as scratch; the gradient still goes to x */
        rb_tensor *t = rb_ctx_tensor(c, RB_F32, nd, x->shape);
        if (!t)
            return NULL;
        if (rb_tensor_copy(t, x) != RB_OK)
            return rb_ctx_fail(c, RB_ERR_INVALID);
        xf = t;
    }
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, nd, index->shape);
    if (!out)
        return NULL;
    if (nd == 0)
        ((float *)out->data)[0] = ((const float *)xf->data)[0];
    else
        gather_forward(out->data, xf->data, xf->stride, ix->data, nd, ix->shape, d);
    rb_tape_entry *e = rb_tape_record(c, "gather", gather_bwd, out, 1, &x);
    if (e) {
        e->saved[0] = ix;
        e->i[0] = d;
    }
    return out;
}
