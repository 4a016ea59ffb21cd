#include "tensor.h"

#include <string.h>

#include "mem.h"

int64_t rb_numel(const rb_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

size_t rb_nbytes(const rb_tensor *t) { return (size_t)rb_numel(t) * rb_dtype_size(t->dtype); }

int rb_is_contiguous(const rb_tensor *t) {
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != s)
            return 0;
        s *= t->shape[i];
    }
    return 1;
}

int rb_same_shape(const rb_tensor *a, const rb_tensor *b) {
    if (a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

void rb_set_contiguous_strides(rb_tensor *t) {
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        t->stride[i] = s;
        s *= t->shape[i];
    }
}

rb_tensor rb_tensor_wrap(void *data, rb_dtype dtype, int ndim, const int64_t *shape) {
    rb_tensor t = {0};
    t.dtype = dtype;
    t.ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t.shape[i] = shape[i];
    rb_set_contiguous_strides(&t);
    t.data = data;
    return t;
}

static rb_status check_shape(int ndim, const int64_t *shape, rb_dtype dtype, size_t *bytes, const char *what) {
    if (ndim < 0 || ndim > RB_MAX_DIMS)
        return rb_error(RB_ERR_INVALID, "%s: %d dimensions (at most %d)", what, ndim, RB_MAX_DIMS);
    if ((unsigned)dtype >= RB_DTYPE_COUNT)
        return rb_error(RB_ERR_INVALID, "%s: invalid dtype %d", what, (int)dtype);
    size_t n = rb_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return rb_error(RB_ERR_INVALID, "%s: negative dimension %lld", what, (long long)shape[i]);
        if (!rb_mul_size(n, (size_t)shape[i], &n))
            return rb_error(RB_ERR_OOM, "%s: tensor size overflows", what);
    }
    *bytes = n;
    return RB_OK;
}

rb_status rb_tensor_alloc(rb_tensor *t, rb_dtype dtype, int ndim, const int64_t *shape, const char *what) {
    size_t bytes = 0;
    RB_TRY(check_shape(ndim, shape, dtype, &bytes, what ? what : "tensor"));
    void *p = rb_alloc(bytes ? bytes : 1, what ? what : "tensor");
    if (!p)
        return RB_ERR_OOM;
    *t = rb_tensor_wrap(p, dtype, ndim, shape);
    return RB_OK;
}

void rb_tensor_free(rb_tensor *t) {
    if (t) {
        rb_free(t->data);
        t->data = NULL;
    }
}

rb_status rb_view_reshape(rb_tensor *out, const rb_tensor *t, int ndim, const int64_t *shape) {
    if (!rb_is_contiguous(t))
        return rb_error(RB_ERR_INVALID, "reshape: input is not contiguous");
    if (ndim < 0 || ndim > RB_MAX_DIMS)
        return rb_error(RB_ERR_INVALID, "reshape: %d dimensions", ndim);
    int64_t n = rb_numel(t), known = 1;
    int infer = -1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == -1) {
            if (infer >= 0)
                return rb_error(RB_ERR_INVALID, "reshape: more than one -1");
            infer = i;
        } else if (shape[i] < 0) {
            return rb_error(RB_ERR_INVALID, "reshape: negative dimension");
        } else {
            known *= shape[i];
        }
    }
    rb_tensor r = *t;
    r.ndim = ndim;
    for (int i = 0; i < ndim; i++)
        r.shape[i] = shape[i];
    if (infer >= 0) {
        if (known == 0 || n % known)
            return rb_error(RB_ERR_INVALID, "reshape: cannot infer dimension");
        r.shape[infer] = n / known;
        known *= r.shape[infer];
    }
    if (known != n) {
        char b[64];
        return rb_error(RB_ERR_INVALID, "reshape: %lld elements of %s do not fit the new shape", (long long)n,
                        rb_shape_str(t, b, sizeof b));
    }
    rb_set_contiguous_strides(&r);
    r.grad = NULL;
    *out = r;
    return RB_OK;
}

rb_status rb_view_permute(rb_tensor *out, const rb_tensor *t, const int *perm) {
    int seen[RB_MAX_DIMS] = {0};
    rb_tensor r = *t;
    for (int i = 0; i < t->ndim; i++) {
        if (perm[i] < 0 || perm[i] >= t->ndim || seen[perm[i]]++)
            return rb_error(RB_ERR_INVALID, "permute: invalid permutation");
        r.shape[i] = t->shape[perm[i]];
        r.stride[i] = t->stride[perm[i]];
    }
    r.grad = NULL;
    *out = r;
    return RB_OK;
}

rb_status rb_view_slice(rb_tensor *out, const rb_tensor *t, int dim, int64_t start, int64_t end) {
    if (dim < 0)
        dim += t->ndim;
    if (dim < 0 || dim >= t->ndim || start < 0 || end < start || end > t->shape[dim])
        return rb_error(RB_ERR_INVALID, "slice: [%lld, %lld) out of range on dim %d", (long long)start,
                        (long long)end, dim);
    rb_tensor r = *t;
    r.shape[dim] = end - start;
    r.data = (char *)t->data + start * t->stride[dim] * (int64_t)rb_dtype_size(t->dtype);
    r.grad = NULL;
    *out = r;
    return RB_OK;
}

rb_status rb_view_select(rb_tensor *out, const rb_tensor *t, int dim, int64_t index) {
    rb_tensor r;
    RB_TRY(rb_view_slice(&r, t, dim, index, index + 1));
    if (dim < 0)
        dim += t->ndim;
    for (int i = dim; i < t->ndim - 1; i++) {
        r.shape[i] = r.shape[i + 1];
        r.stride[i] = r.stride[i + 1];
    }
    r.ndim--;
    *out = r;
    return RB_OK;
}

rb_status rb_view_unsqueeze(rb_tensor *out, const rb_tensor *t, int dim) {
    if (dim < 0)
        dim += t->ndim + 1;
    if (dim < 0 || dim > t->ndim || t->ndim >= RB_MAX_DIMS)
        return rb_error(RB_ERR_INVALID, "unsqueeze: invalid dim %d", dim);
    rb_tensor r = *t;
    for (int i = t->ndim; i > dim; i--) {
        r.shape[i] = t->shape[i - 1];
        r.stride[i] = t->stride[i - 1];
    }
    r.shape[dim] = 1;
    r.stride[dim] = dim < t->ndim ? t->shape[dim] * t->stride[dim] : 1;
    r.ndim++;
    r.grad = NULL;
    *out = r;
    return RB_OK;
}

/* Byte offset of flat row-major index i in a strided view. */
static int64_t offset_of(const rb_tensor *t, int64_t i) {
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        int64_t n = t->shape[d];
        off += (i % n) * t->stride[d];
        i /= n;
    }
    return off * (int64_t)rb_dtype_size(t->dtype);
}

rb_status rb_tensor_copy(rb_tensor *dst, const rb_tensor *src) {
    if (!rb_same_shape(dst, src))
        return rb_error(RB_ERR_INVALID, "copy: shapes differ");
    int64_t n = rb_numel(src);
    if (rb_is_contiguous(dst) && rb_is_contiguous(src)) {
        if (dst->dtype == src->dtype)
            memmove(dst->data, src->data, rb_nbytes(src));
        else if (dst->dtype == RB_F32)
            rb_convert_to_f32(dst->data, src->data, src->dtype, (size_t)n);
        else if (src->dtype == RB_F32)
            rb_convert_from_f32(dst->data, dst->dtype, src->data, (size_t)n);
        else
            goto slow;
        return RB_OK;
    }
slow:;
    size_t ds = rb_dtype_size(dst->dtype), ss = rb_dtype_size(src->dtype);
    for (int64_t i = 0; i < n; i++) {
        char *d = (char *)dst->data + offset_of(dst, i);
        const char *s = (const char *)src->data + offset_of(src, i);
        if (dst->dtype == src->dtype) {
            memcpy(d, s, ds);
        } else {
            float v;
            rb_convert_to_f32(&v, s, src->dtype, 1);
            rb_convert_from_f32(d, dst->dtype, &v, 1);
        }
        (void)ss;
    }
    return RB_OK;
}

double rb_tensor_get(const rb_tensor *t, int64_t i) {
    const char *p = (const char *)t->data + offset_of(t, i);
    if (t->dtype == RB_I64) {
        int64_t v;
        memcpy(&v, p, 8);
        return (double)v;
    }
    if (t->dtype == RB_F64) {
        double v;
        memcpy(&v, p, 8);
        return v;
    }
    float f;
    rb_convert_to_f32(&f, p, t->dtype, 1);
    return f;
}

const char *rb_shape_str(const rb_tensor *t, char *buf, size_t n) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int i = 0; i < t->ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (k < n)
        snprintf(buf + k, n - k, "]");
    return buf;
}
