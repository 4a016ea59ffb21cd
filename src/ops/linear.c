/* rb_linear and rb_matmul on oneDNN matmul (src/ops/dnnl.c does the caching and reorders).
 *
 * Forward computes in c->matmul_dtype: in bf16 mode a reorder converts the f32 activations into
 * bf16 scratch and the weights are used in bf16 (bf16 weights in place; f32 or f16 weights converted,
 * and for frozen weights the converted, oneDNN-preferred layout is cached). Linear's input gradient
 * dX = dY W runs in c->matmul_dtype too (the backward's largest products, as torch autocast runs
 * them); weight gradients and rb_matmul's backward are f32. */
#include "linear.h"

#include <string.h>

#include "dnnl.h"
#include "ops.h"

/* ---- the general product ---- */

typedef struct mm_key {
    int kind, ndim, cdt, a_dt, b_dt, flags, bias, pad_;
    int64_t a_dims[5], a_str[5], b_dims[5], b_str[5], c_dims[5];
} mm_key;

static void contiguous_strides(int n, const int64_t *dims, int64_t *str) {
    int64_t s = 1;
    for (int i = n - 1; i >= 0; i--) {
        str[i] = s;
        s *= dims[i];
    }
}

static rb_status mm_build(const void *desc, dnnl_engine_t eng, dnnl_primitive_desc_t *pd, rb_dnnl_arg_spec *args,
                          int *n_args) {
    const mm_key *k = desc;
    int n = k->ndim;
    dnnl_data_type_t cdt = (dnnl_data_type_t)k->cdt;
    dnnl_memory_desc_t a_md, b_md, bias_md, c_md;
    int64_t c_str[5], bias_dims[5], bias_str[5];
    contiguous_strides(n, k->c_dims, c_str);
    for (int i = 0; i < n; i++)
        bias_dims[i] = i == n - 1 ? k->c_dims[n - 1] : 1;
    contiguous_strides(n, bias_dims, bias_str);
    RB_TRY(rb_dnnl_md(&a_md, n, k->a_dims, k->a_str, cdt));
    if (k->flags & RB_GEMM_B_ANY) {
        dnnl_dims_t d;
        for (int i = 0; i < n; i++)
            d[i] = k->b_dims[i];
        RB_TRY(rb_dnnl_check(dnnl_memory_desc_init_by_tag(&b_md, n, d, cdt, dnnl_format_tag_any), "matmul weights"));
    } else {
        RB_TRY(rb_dnnl_md(&b_md, n, k->b_dims, k->b_str, cdt));
    }
    RB_TRY(rb_dnnl_md(&bias_md, n, bias_dims, bias_str, dnnl_f32));
    RB_TRY(rb_dnnl_md(&c_md, n, k->c_dims, c_str, dnnl_f32));
    dnnl_matmul_desc_t md;
    RB_TRY(rb_dnnl_check(dnnl_matmul_desc_init(&md, &a_md, &b_md, k->bias ? &bias_md : NULL, &c_md), "matmul"));
    dnnl_primitive_attr_t attr;
    RB_TRY(rb_dnnl_attr(&attr, k->flags & RB_GEMM_ACC));
    rb_status s = rb_dnnl_check(dnnl_primitive_desc_create(pd, &md, attr, eng, NULL), "matmul");
    dnnl_primitive_attr_destroy(attr);
    RB_TRY(s);
    int i = 0;
    args[i] = (rb_dnnl_arg_spec){.arg = DNNL_ARG_SRC, .mode = RB_DNNL_IN};
    RB_TRY(rb_dnnl_md(&args[i++].user, n, k->a_dims, k->a_str, (dnnl_data_type_t)k->a_dt));
    args[i] = (rb_dnnl_arg_spec){.arg = DNNL_ARG_WEIGHTS, .mode = RB_DNNL_IN};
    RB_TRY(rb_dnnl_md(&args[i++].user, n, k->b_dims, k->b_str, (dnnl_data_type_t)k->b_dt));
    if (k->bias)
        args[i++] = (rb_dnnl_arg_spec){.arg = DNNL_ARG_BIAS, .mode = RB_DNNL_IN, .user = bias_md};
    args[i++] = (rb_dnnl_arg_spec){.arg = DNNL_ARG_DST, .mode = RB_DNNL_OUT, .user = c_md};
    *n_args = i;
    return RB_OK;
}

rb_status rb_gemm_run(rb_arena *scratch, float *c, const void *a, const void *b, const float *bias, const rb_gemm *g,
                      rb_dtype compute, int flags) {
    mm_key k;
    memset(&k, 0, sizeof k);
    k.kind = 'M';
    k.ndim = g->ndim;
    k.cdt = rb_dnnl_dt(compute);
    k.a_dt = rb_dnnl_dt(g->a_dt);
    k.b_dt = rb_dnnl_dt(g->b_dt);
    k.flags = flags;
    k.bias = bias != NULL;
    if (g->ndim < 2 || g->ndim > 5 || (compute != RB_F32 && compute != RB_BF16) || k.a_dt == dnnl_data_type_undef ||
        k.b_dt == dnnl_data_type_undef)
        return rb_error(RB_ERR_UNSUPPORTED, "matmul: unsupported dtypes or rank");
    for (int i = 0; i < g->ndim; i++) {
        k.a_dims[i] = g->a_dims[i];
        k.a_str[i] = g->a_str[i];
        k.b_dims[i] = g->b_dims[i];
        k.b_str[i] = g->b_str[i];
        k.c_dims[i] = g->c_dims[i];
    }
    void *ptrs[4];
    int n = 0;
    ptrs[n++] = (void *)a;
    ptrs[n++] = (void *)b;
    if (bias)
        ptrs[n++] = (void *)bias;
    ptrs[n++] = c;
    return rb_dnnl_exec(&k, sizeof k, mm_build, scratch, ptrs, flags & RB_GEMM_B_FROZEN ? 2u : 0u);
}

/* ---- linear ---- */

static void gemm_2d(rb_gemm *g, rb_dtype a_dt, int64_t M, int64_t K, int64_t a_sm, int64_t a_sk, rb_dtype b_dt,
                    int64_t N, int64_t b_sk, int64_t b_sn) {
    memset(g, 0, sizeof *g);
    g->ndim = 2;
    g->a_dt = a_dt;
    g->b_dt = b_dt;
    g->a_dims[0] = M, g->a_dims[1] = K, g->a_str[0] = a_sm, g->a_str[1] = a_sk;
    g->b_dims[0] = K, g->b_dims[1] = N, g->b_str[0] = b_sk, g->b_str[1] = b_sn;
    g->c_dims[0] = M, g->c_dims[1] = N;
}

rb_status linear_forward(rb_arena *scratch, float *out, const float *inp, const void *weight, rb_dtype wdt,
                         const float *bias, int64_t M, int64_t K, int64_t N, rb_dtype compute, int frozen) {
    rb_gemm g;
    gemm_2d(&g, RB_F32, M, K, K, 1, wdt, N, 1, K); /* weight [N, K] read as its transpose [K, N] */
    /* A weight already in the compute dtype is read in place: oneDNN's matmul packs the plain [N, K]
     * operand itself, as fast as from a pre-blocked copy at our shapes (bench unet: 9.6 s vs 9.8 s)
     * and without a second copy of every weight. Only a dtype conversion is cached (frozen weights)
     * or done per call, in the layout oneDNN prefers. */
    int flags = wdt != compute ? RB_GEMM_B_ANY | (frozen ? RB_GEMM_B_FROZEN : 0) : 0;
    return rb_gemm_run(scratch, out, inp, weight, bias, &g, compute, flags);
}

void rows_sum_accumulate(float *dbias, const float *dout, int64_t M, int64_t N) {
#pragma omp parallel for schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += 64) {
        int64_t n1 = n0 + 64 < N ? n0 + 64 : N;
        float acc[64] = {0};
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = n0; n < n1; n++)
                acc[n - n0] += dout[m * N + n];
        for (int64_t n = n0; n < n1; n++)
            dbias[n] += acc[n - n0];
    }
}

rb_status linear_backward(rb_arena *scratch, float *dinp, float *dweight, float *dbias, const float *dout,
                          const float *inp, const void *weight, rb_dtype wdt, int64_t M, int64_t K, int64_t N,
                          rb_dtype compute) {
    rb_gemm g;
    if (dinp) { /* dinp [M, K] += dout [M, N] @ weight [N, K] */
        gemm_2d(&g, RB_F32, M, N, N, 1, wdt, K, K, 1);
        /* a weight in the compute dtype is read in place; another dtype is converted into scratch (not
         * cached: a frozen weight's cached copy is in the forward's layout) */
        int flags = RB_GEMM_ACC | (wdt != compute ? RB_GEMM_B_ANY : 0);
        RB_TRY(rb_gemm_run(scratch, dinp, dout, weight, NULL, &g, compute, flags));
    }
    if (dweight) { /* dweight [N, K] += dout^T [N, M] @ inp [M, K] */
        gemm_2d(&g, RB_F32, N, M, 1, N, RB_F32, K, K, 1);
        RB_TRY(rb_gemm_run(scratch, dweight, dout, inp, NULL, &g, RB_F32, RB_GEMM_ACC));
    }
    if (dbias)
        rows_sum_accumulate(dbias, dout, M, N);
    return RB_OK;
}

/* ---- batched matmul ---- */

/* Fills g for out [cb.., R, C] = x @ y where x is viewed as [xb.., R, I] with strides (xr, xi) in its
 * last two dims and contiguous batch strides of xb x xmat elements (likewise for y). */
static void gemm_batched(rb_gemm *g, int nb, const int64_t *xb, int64_t R, int64_t I, int64_t xr, int64_t xi,
                         int64_t xmat, const int64_t *yb, int64_t C, int64_t yi, int64_t yc, int64_t ymat) {
    memset(g, 0, sizeof *g);
    g->ndim = nb + 2;
    g->a_dt = g->b_dt = RB_F32;
    int64_t sx = xmat, sy = ymat;
    for (int i = nb - 1; i >= 0; i--) {
        g->a_dims[i] = xb[i], g->a_str[i] = sx, sx *= xb[i];
        g->b_dims[i] = yb[i], g->b_str[i] = sy, sy *= yb[i];
        g->c_dims[i] = xb[i] > yb[i] ? xb[i] : yb[i];
    }
    g->a_dims[nb] = R, g->a_dims[nb + 1] = I, g->a_str[nb] = xr, g->a_str[nb + 1] = xi;
    g->b_dims[nb] = I, g->b_dims[nb + 1] = C, g->b_str[nb] = yi, g->b_str[nb + 1] = yc;
    g->c_dims[nb] = R, g->c_dims[nb + 1] = C;
}

rb_status matmul_forward(rb_arena *scratch, float *out, const float *a, const float *b, int nb, const int64_t *a_batch,
                         const int64_t *b_batch, int64_t M, int64_t K, int64_t N, int transpose_b, rb_dtype compute) {
    rb_gemm g;
    if (transpose_b) /* b [.., N, K] */
        gemm_batched(&g, nb, a_batch, M, K, K, 1, M * K, b_batch, N, 1, K, N * K);
    else
        gemm_batched(&g, nb, a_batch, M, K, K, 1, M * K, b_batch, N, N, 1, K * N);
    return rb_gemm_run(scratch, out, a, b, NULL, &g, compute, 0);
}

/* dst [db.., mat] += sum of full [fb.., mat] over the batch dims where db is 1 and fb is not. */
static void reduce_batch(float *dst, const float *full, int nb, const int64_t *db, const int64_t *fb, int64_t mat) {
    int64_t total = 1;
    for (int i = 0; i < nb; i++)
        total *= fb[i];
    for (int64_t f = 0; f < total; f++) {
        int64_t rem = f, d = 0, dstride = 1;
        for (int i = nb - 1; i >= 0; i--) {
            int64_t idx = rem % fb[i];
            rem /= fb[i];
            d += (db[i] == 1 ? 0 : idx) * dstride;
            dstride *= db[i];
        }
        float *o = dst + d * mat;
        const float *s = full + f * mat;
#pragma omp parallel for schedule(static) if (mat > 65536)
        for (int64_t j = 0; j < mat; j++)
            o[j] += s[j];
    }
}

/* Runs g accumulating into dst [db.., R, C]; via a full-batch buffer when dst is broadcast. */
static rb_status gemm_acc_reduce(rb_arena *scratch, float *dst, const float *x, const float *y, rb_gemm *g, int nb,
                                 const int64_t *db) {
    int bcast = 0;
    int64_t full = 1;
    for (int i = 0; i < nb; i++) {
        bcast |= db[i] != g->c_dims[i];
        full *= g->c_dims[i];
    }
    if (!bcast)
        return rb_gemm_run(scratch, dst, x, y, NULL, g, RB_F32, RB_GEMM_ACC);
    int64_t mat = g->c_dims[nb] * g->c_dims[nb + 1];
    size_t mark = rb_arena_mark(scratch);
    float *tmp = rb_arena_alloc(scratch, (size_t)(full * mat) * sizeof(float));
    if (!tmp)
        return RB_ERR_OOM;
    rb_status s = rb_gemm_run(scratch, tmp, x, y, NULL, g, RB_F32, 0);
    if (s == RB_OK)
        reduce_batch(dst, tmp, nb, db, g->c_dims, mat);
    rb_arena_reset(scratch, mark);
    return s;
}

rb_status matmul_backward(rb_arena *scratch, float *da, float *db, const float *dout, const float *a, const float *b,
                          int nb, const int64_t *a_batch, const int64_t *b_batch, int64_t M, int64_t K, int64_t N,
                          int transpose_b) {
    int64_t c_batch[3];
    for (int i = 0; i < nb; i++)
        c_batch[i] = a_batch[i] > b_batch[i] ? a_batch[i] : b_batch[i];
    rb_gemm g;
    if (da) { /* da [.., M, K] += dout [.., M, N] @ b^T [.., N, K] */
        if (transpose_b) /* b stored [.., N, K] */
            gemm_batched(&g, nb, c_batch, M, N, N, 1, M * N, b_batch, K, K, 1, N * K);
        else /* b stored [.., K, N]: its transpose has strides (1, N) */
            gemm_batched(&g, nb, c_batch, M, N, N, 1, M * N, b_batch, K, 1, N, K * N);
        RB_TRY(gemm_acc_reduce(scratch, da, dout, b, &g, nb, a_batch));
    }
    if (db) {
        if (transpose_b) /* db [.., N, K] += dout^T [.., N, M] @ a [.., M, K] */
            gemm_batched(&g, nb, c_batch, N, M, 1, N, M * N, a_batch, K, K, 1, M * K);
        else /* db [.., K, N] += a^T [.., K, M] @ dout [.., M, N] */
            gemm_batched(&g, nb, a_batch, K, M, 1, K, M * K, c_batch, N, N, 1, M * N);
        RB_TRY(gemm_acc_reduce(scratch, db, transpose_b ? dout : a, transpose_b ? a : dout, &g, nb, b_batch));
    }
    return RB_OK;
}

/* ---- tensor-level wrappers ---- */

static rb_tensor *contiguous(rb_ctx *c, rb_tensor *x) {
    if (rb_is_contiguous(x))
        return x;
    rb_tensor *y = rb_ctx_tensor(c, x->dtype, x->ndim, x->shape);
    if (y && rb_tensor_copy(y, x) != RB_OK)
        return rb_ctx_fail(c, RB_ERR_INVALID);
    return y;
}

/* f32 copy of a bias (or the bias itself when already f32 and contiguous). */
static const float *bias_f32(rb_ctx *c, rb_tensor *b) {
    if (b->dtype == RB_F32 && rb_is_contiguous(b))
        return b->data;
    rb_tensor *f = rb_ctx_tensor(c, RB_F32, b->ndim, b->shape);
    if (f && rb_tensor_copy(f, b) != RB_OK)
        return (const float *)rb_ctx_fail(c, RB_ERR_INVALID);
    return f ? f->data : NULL;
}

static int weight_dtype_ok(rb_dtype t) { return t == RB_F32 || t == RB_BF16 || t == RB_F16; }

static float *grad_ptr(rb_ctx *c, rb_tensor *t, int *err) {
    if (!rb_needs_grad(t))
        return NULL;
    rb_tensor *g = rb_grad_of(c, t);
    if (!g)
        *err = 1;
    return g ? g->data : NULL;
}

static rb_status linear_bw(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *x = e->in[0], *w = e->in[1], *b = e->in[2], *xc = e->saved[0];
    int64_t N = w->shape[0], K = w->shape[1], M = N ? rb_numel(e->out) / N : 0;
    int err = 0;
    float *dx = grad_ptr(c, x, &err), *dw = grad_ptr(c, w, &err), *db = grad_ptr(c, b, &err);
    if (err)
        return c->status;
    if (M == 0 || N == 0)
        return RB_OK;
    if (K == 0) {
        if (db)
            rows_sum_accumulate(db, e->out->grad->data, M, N);
        return RB_OK;
    }
    return linear_backward(c->arena, dx, dw, db, e->out->grad->data, xc->data, w->data, w->dtype, M, K, N,
                           c->matmul_dtype);
}

rb_tensor *rb_linear(rb_ctx *c, rb_tensor *x, rb_tensor *w, rb_tensor *b) {
    if (c->status != RB_OK || !x || !w)
        return c->status != RB_OK ? NULL : rb_ctx_error(c, RB_ERR_INVALID, "linear: missing input or weight");
    char xs[64], ws[64];
    if (x->dtype != RB_F32 || !weight_dtype_ok(w->dtype) || (b && !weight_dtype_ok(b->dtype)))
        return rb_ctx_error(c, RB_ERR_UNSUPPORTED, "linear: x must be f32 and weight/bias f32, bf16 or f16");
    if (c->matmul_dtype != RB_F32 && c->matmul_dtype != RB_BF16)
        return rb_ctx_error(c, RB_ERR_UNSUPPORTED, "linear: compute dtype %s (want f32 or bf16)",
                            rb_dtype_name(c->matmul_dtype));
    if (x->ndim < 1 || w->ndim != 2 || x->shape[x->ndim - 1] != w->shape[1])
        return rb_ctx_error(c, RB_ERR_INVALID, "linear: x %s does not match weight %s (want [..., K] and [N, K])",
                            rb_shape_str(x, xs, sizeof xs), rb_shape_str(w, ws, sizeof ws));
    int64_t N = w->shape[0], K = w->shape[1];
    if (b && (b->ndim != 1 || b->shape[0] != N))
        return rb_ctx_error(c, RB_ERR_INVALID, "linear: bias %s, want [%lld]", rb_shape_str(b, xs, sizeof xs),
                            (long long)N);
    if (!rb_is_contiguous(w))
        return rb_ctx_error(c, RB_ERR_INVALID, "linear: weight must be contiguous");
    int64_t shape[RB_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = N;
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, x->ndim, shape);
    rb_tensor *xc = out ? contiguous(c, x) : NULL;
    const float *bias = xc && b ? bias_f32(c, b) : NULL;
    if (!xc || (b && !bias))
        return NULL;
    int64_t M = K ? rb_numel(x) / K : 0;
    float *y = out->data;
    if (K == 0) { /* empty product: the bias alone */
        for (int64_t i = 0; i < rb_numel(out); i++)
            y[i] = bias ? bias[i % N] : 0.0f;
    } else if (M > 0 && N > 0) {
        rb_status s = linear_forward(c->arena, y, xc->data, w->data, w->dtype, bias, M, K, N, c->matmul_dtype,
                                     !w->requires_grad);
        if (s != RB_OK)
            return rb_ctx_fail(c, s);
    }
    rb_tape_entry *e = rb_tape_record(c, "linear", linear_bw, out, 3, (rb_tensor *[]){x, w, b});
    if (e)
        e->saved[0] = xc;
    return c->status == RB_OK ? out : NULL;
}

/* Batch dims of a and b (left-padded with 1 to the same count) and the product's M, K, N. */
static rb_status mm_shapes(const rb_tensor *a, const rb_tensor *b, int tb, int *nb, int64_t *ab, int64_t *bb,
                           int64_t *cb, int64_t *M, int64_t *K, int64_t *N) {
    char as[64], bs[64];
    if (a->ndim < 2 || b->ndim < 2)
        return rb_error(RB_ERR_INVALID, "matmul: operands need at least 2 dims, got %s and %s",
                        rb_shape_str(a, as, sizeof as), rb_shape_str(b, bs, sizeof bs));
    int n = (a->ndim > b->ndim ? a->ndim : b->ndim) - 2;
    for (int i = 0; i < n; i++) {
        int ia = i - (n - (a->ndim - 2)), ib = i - (n - (b->ndim - 2));
        ab[i] = ia >= 0 ? a->shape[ia] : 1;
        bb[i] = ib >= 0 ? b->shape[ib] : 1;
        if (ab[i] != bb[i] && ab[i] != 1 && bb[i] != 1)
            return rb_error(RB_ERR_INVALID, "matmul: batch dims of %s and %s do not broadcast",
                            rb_shape_str(a, as, sizeof as), rb_shape_str(b, bs, sizeof bs));
        cb[i] = ab[i] == 1 ? bb[i] : ab[i];
    }
    *nb = n;
    *M = a->shape[a->ndim - 2];
    *K = a->shape[a->ndim - 1];
    *N = b->shape[b->ndim - (tb ? 2 : 1)];
    if (b->shape[b->ndim - (tb ? 1 : 2)] != *K)
        return rb_error(RB_ERR_INVALID, "matmul: inner dims of %s and %s%s differ", rb_shape_str(a, as, sizeof as),
                        rb_shape_str(b, bs, sizeof bs), tb ? " (transposed)" : "");
    return RB_OK;
}

static rb_status matmul_bw(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *a = e->in[0], *b = e->in[1];
    int tb = (int)e->i[0], nb;
    int64_t ab[3], bb[3], cb[3], M, K, N;
    RB_TRY(mm_shapes(a, b, tb, &nb, ab, bb, &cb[0], &M, &K, &N));
    int err = 0;
    float *da = grad_ptr(c, a, &err), *db = grad_ptr(c, b, &err);
    if (err)
        return c->status;
    if (rb_numel(e->out) == 0 || K == 0)
        return RB_OK;
    return matmul_backward(c->arena, da, db, e->out->grad->data, e->saved[0]->data, e->saved[1]->data, nb, ab, bb, M,
                           K, N, tb);
}

rb_tensor *rb_matmul(rb_ctx *c, rb_tensor *a, rb_tensor *b, int transpose_b) {
    if (c->status != RB_OK || !a || !b)
        return c->status != RB_OK ? NULL : rb_ctx_error(c, RB_ERR_INVALID, "matmul: missing operand");
    if (a->dtype != RB_F32 || b->dtype != RB_F32)
        return rb_ctx_error(c, RB_ERR_UNSUPPORTED, "matmul: operands must be f32");
    if (c->matmul_dtype != RB_F32 && c->matmul_dtype != RB_BF16)
        return rb_ctx_error(c, RB_ERR_UNSUPPORTED, "matmul: compute dtype %s (want f32 or bf16)",
                            rb_dtype_name(c->matmul_dtype));
    int nb;
    int64_t ab[3], bb[3], shape[RB_MAX_DIMS], M, K, N;
    rb_status s = mm_shapes(a, b, transpose_b, &nb, ab, bb, shape, &M, &K, &N);
    if (s != RB_OK)
        return rb_ctx_fail(c, s);
    shape[nb] = M;
    shape[nb + 1] = N;
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, nb + 2, shape);
    rb_tensor *ac = out ? contiguous(c, a) : NULL, *bc = ac ? contiguous(c, b) : NULL;
    if (!bc)
        return NULL;
    if (K == 0)
        memset(out->data, 0, rb_nbytes(out));
    else if (rb_numel(out) > 0 &&
             (s = matmul_forward(c->arena, out->data, ac->data, bc->data, nb, ab, bb, M, K, N, transpose_b,
                                 c->matmul_dtype)) != RB_OK)
        return rb_ctx_fail(c, s);
    rb_tape_entry *e = rb_tape_record(c, "matmul", matmul_bw, out, 2, (rb_tensor *[]){a, b});
    if (e) {
        e->saved[0] = ac;
        e->saved[1] = bc;
        e->i[0] = transpose_b;
    }
    return c->status == RB_OK ? out : NULL;
}
