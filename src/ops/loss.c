/* L2 normalisation, cosine similarity, mean squared error and cross entropy. */
#include "loss.h"

#include <math.h>

#include "elementwise.h"
#include "ops.h"

#define PAR_MIN 16384

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- kernels ---- */

void rb_l2_normalize_forward(float *out, float *norm, const float *inp, int64_t rows, int64_t C, float eps) {
#pragma omp parallel for schedule(static) if (rows * C > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *x = inp + r * C;
        float *y = out + r * C;
        double n = sqrt(rb_ddot_f32(x, x, C));
        norm[r] = (float)n;
        const float den = (float)(n > eps ? n : (double)eps); /* divided, as torch does */
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            y[j] = x[j] / den;
    }
}

void rb_l2_normalize_backward(float *dinp, const float *dout, const float *out, const float *norm, int64_t rows,
                              int64_t C, float eps) {
#pragma omp parallel for schedule(static) if (rows * C > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *dy = dout + r * C, *y = out + r * C;
        float *dx = dinp + r * C;
        if (norm[r] >= eps) { /* torch's clamp_min passes the gradient where norm >= eps */
            const float s = (float)rb_ddot_f32(dy, y, C), inv = 1.0f / norm[r];
#pragma omp simd
            for (int64_t j = 0; j < C; j++)
                dx[j] += (dy[j] - y[j] * s) * inv;
        } else {
            const float inv = 1.0f / eps;
#pragma omp simd
            for (int64_t j = 0; j < C; j++)
                dx[j] += dy[j] * inv;
        }
    }
}

void rb_cosine_forward(float *out, float *na, float *nb, const float *a, const float *b, int64_t rows, int64_t C,
                       float eps) {
#pragma omp parallel for schedule(static) if (rows * C > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *x = a + r * C, *y = b + r * C;
        double n1 = sqrt(rb_ddot_f32(x, x, C)), n2 = sqrt(rb_ddot_f32(y, y, C));
        n1 = n1 > eps ? n1 : eps;
        n2 = n2 > eps ? n2 : eps;
        na[r] = (float)n1;
        nb[r] = (float)n2;
        out[r] = (float)(rb_ddot_f32(x, y, C) / (n1 * n2));
    }
}

void rb_cosine_backward(float *da, float *db, const float *dout, const float *a, const float *b, const float *out,
                        const float *na, const float *nb, int64_t rows, int64_t C) {
#pragma omp parallel for schedule(static) if (rows * C > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *x = a + r * C, *y = b + r * C;
        const float g = dout[r], cs = out[r], n1 = na[r], n2 = nb[r];
        const float k = g / (n1 * n2);
        if (da) {
            const float ka = g * cs / (n1 * n1);
            float *d = da + r * C;
#pragma omp simd
            for (int64_t j = 0; j < C; j++)
                d[j] += k * y[j] - ka * x[j];
        }
        if (db) {
            const float kb = g * cs / (n2 * n2);
            float *d = db + r * C;
#pragma omp simd
            for (int64_t j = 0; j < C; j++)
                d[j] += k * x[j] - kb * y[j];
        }
    }
}

double rb_mse_forward(const float *a, const float *b, int64_t n) {
    enum { PARTS = 64 }; /* fixed split: the result does not depend on the thread count */
    double part[PARTS];
    int64_t per = ((n + PARTS - 1) / PARTS + 255) / 256 * 256;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int k = 0; k < PARTS; k++) {
        double s = 0;
        for (int64_t i = min64((int64_t)k * per, n), e = min64(i + per, n); i < e; i += 256) {
            int64_t m = min64(256, e - i);
            float f = 0;
#pragma omp simd reduction(+ : f)
            for (int64_t j = i; j < i + m; j++)
                f += (a[j] - b[j]) * (a[j] - b[j]);
            s += f;
        }
        part[k] = s;
    }
    double s = 0;
    for (int k = 0; k < PARTS; k++)
        s += part[k];
    return s / (double)n; /* n = 0: nan, as torch */
}

void rb_mse_backward(float *da, float *db, float g, const float *a, const float *b, int64_t n) {
    const float k = (float)(2.0 * g / (double)n);
    if (da) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            da[i] += k * (a[i] - b[i]);
    }
    if (db) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            db[i] -= k * (a[i] - b[i]);
    }
}

double rb_cross_entropy_forward(float *lse, const float *logits, const int64_t *target, int64_t N, int64_t C) {
    double total = 0;
    /* rows are few (a batch); the per-row work is the log-sum-exp */
    for (int64_t n = 0; n < N; n++) {
        const float *x = logits + n * C;
        float mx = -INFINITY;
        for (int64_t j = 0; j < C; j++)
            mx = x[j] > mx ? x[j] : mx;
        double s = 0;
        for (int64_t j = 0; j < C; j++)
            s += exp((double)x[j] - mx);
        double l = mx + log(s);
        lse[n] = (float)l;
        total += l - x[target[n]];
    }
    return total / (double)N;
}

void rb_cross_entropy_backward(float *dlogits, float g, const float *logits, const float *lse, const int64_t *target,
                               int64_t N, int64_t C) {
    const float k = (float)(g / (double)N);
#pragma omp parallel for schedule(static) if (N * C > PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float *x = logits + n * C;
        float *d = dlogits + n * C;
        for (int64_t j = 0; j < C; j++)
            d[j] += k * expf(x[j] - lse[n]);
        d[target[n]] -= k;
    }
}

/* ---- tensor-level ops ---- */

static rb_tensor *last_dim_check(rb_ctx *c, rb_tensor *x, const char *op) {
    if (x->ndim < 1)
        return rb_ctx_error(c, RB_ERR_INVALID, "%s: input is a scalar, expected [..., C]", op);
    return rb_f32_contig(c, x, op, "x");
}

static rb_status l2_normalize_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *gx = rb_grad_of(c, e->in[0]);
    if (!gx)
        return c->status;
    int64_t C = e->out->shape[e->out->ndim - 1];
    rb_l2_normalize_backward(gx->data, e->out->grad->data, e->out->data, e->saved[0]->data,
                             C ? rb_numel(e->out) / C : 0, C, (float)e->f[0]);
    return RB_OK;
}

rb_tensor *rb_l2_normalize(rb_ctx *c, rb_tensor *x, float eps) {
    if (c->status != RB_OK)
        return NULL;
    if (!x)
        return rb_ctx_error(c, RB_ERR_INVALID, "l2_normalize: NULL input");
    rb_tensor *xc = last_dim_check(c, x, "l2_normalize");
    if (!xc)
        return NULL;
    int64_t C = x->shape[x->ndim - 1], rows = C ? rb_numel(x) / C : 0;
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, x->ndim, x->shape);
    rb_tensor *norm = out ? rb_ctx_tensor(c, RB_F32, 1, &rows) : NULL;
    if (!norm)
        return NULL;
    rb_l2_normalize_forward(out->data, norm->data, xc->data, rows, C, eps);
    rb_tape_entry *e = rb_tape_record(c, "l2_normalize", l2_normalize_backward, out, 1, &x);
    if (e) {
        e->saved[0] = norm;
        e->f[0] = eps;
    }
    return c->status == RB_OK ? out : NULL;
}

static rb_status cosine_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *a = e->in[0], *b = e->in[1], *ga = NULL, *gb = NULL;
    if (rb_needs_grad(a) && !(ga = rb_grad_of(c, a)))
        return c->status;
    if (rb_needs_grad(b) && !(gb = rb_grad_of(c, b)))
        return c->status;
    int64_t C = a->shape[a->ndim - 1], rows = rb_numel(e->out);
    const float *norms = e->saved[2]->data;
    rb_cosine_backward(ga ? ga->data : NULL, gb ? gb->data : NULL, e->out->grad->data, e->saved[0]->data,
                       e->saved[1]->data, e->out->data, norms, norms + rows, rows, C);
    return RB_OK;
}

static int same_shape_check(rb_ctx *c, rb_tensor *a, rb_tensor *b, const char *op) {
    if (rb_same_shape(a, b))
        return 1;
    char s1[96], s2[96];
    rb_ctx_error(c, RB_ERR_INVALID, "%s: shapes %s and %s differ", op, rb_shape_str(a, s1, sizeof s1),
                 rb_shape_str(b, s2, sizeof s2));
    return 0;
}

rb_tensor *rb_cosine_similarity(rb_ctx *c, rb_tensor *a, rb_tensor *b, float eps) {
    if (c->status != RB_OK)
        return NULL;
    if (!a || !b)
        return rb_ctx_error(c, RB_ERR_INVALID, "cosine_similarity: NULL input");
    if (!same_shape_check(c, a, b, "cosine_similarity"))
        return NULL;
    rb_tensor *ac = last_dim_check(c, a, "cosine_similarity");
    rb_tensor *bc = ac ? rb_f32_contig(c, b, "cosine_similarity", "b") : NULL;
    if (!bc)
        return NULL;
    int64_t C = a->shape[a->ndim - 1], rows = C ? rb_numel(a) / C : 1;
    if (!C) /* rows of nothing: torch gives 0 for each */
        for (int d = 0; d < a->ndim - 1; d++)
            rows *= a->shape[d];
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, a->ndim - 1, a->shape);
    rb_tensor *norms = out ? rb_ctx_tensor(c, RB_F32, 2, (int64_t[]){2, rows}) : NULL;
    if (!norms)
        return NULL;
    float *nd = norms->data;
    rb_cosine_forward(out->data, nd, nd + rows, ac->data, bc->data, rows, C, eps);
    rb_tape_entry *e = rb_tape_record(c, "cosine_similarity", cosine_backward, out, 2, (rb_tensor *[]){a, b});
    if (e) {
        e->saved[0] = ac;
        e->saved[1] = bc;
        e->saved[2] = norms;
        e->f[0] = eps;
    }
    return c->status == RB_OK ? out : NULL;
}

static rb_status mse_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *a = e->in[0], *b = e->in[1], *ga = NULL, *gb = NULL;
    if (rb_needs_grad(a) && !(ga = rb_grad_of(c, a)))
        return c->status;
    if (rb_needs_grad(b) && !(gb = rb_grad_of(c, b)))
        return c->status;
    rb_mse_backward(ga ? ga->data : NULL, gb ? gb->data : NULL, ((const float *)e->out->grad->data)[0],
                    e->saved[0]->data, e->saved[1]->data, rb_numel(a));
    return RB_OK;
}

rb_tensor *rb_mse(rb_ctx *c, rb_tensor *a, rb_tensor *b) {
    if (c->status != RB_OK)
        return NULL;
    if (!a || !b)
        return rb_ctx_error(c, RB_ERR_INVALID, "mse: NULL input");
    if (!same_shape_check(c, a, b, "mse"))
        return NULL;
    rb_tensor *ac = rb_f32_contig(c, a, "mse", "a"), *bc = ac ? rb_f32_contig(c, b, "mse", "b") : NULL;
    int64_t none[1] = {1};
    rb_tensor *out = bc ? rb_ctx_tensor(c, RB_F32, 0, none) : NULL;
    if (!out)
        return NULL;
    ((float *)out->data)[0] = (float)rb_mse_forward(ac->data, bc->data, rb_numel(a));
    rb_tape_entry *e = rb_tape_record(c, "mse", mse_backward, out, 2, (rb_tensor *[]){a, b});
    if (e) {
        e->saved[0] = ac;
        e->saved[1] = bc;
    }
    return c->status == RB_OK ? out : NULL;
}

static rb_status cross_entropy_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *g = rb_grad_of(c, e->in[0]);
    if (!g)
        return c->status;
    rb_cross_entropy_backward(g->data, ((const float *)e->out->grad->data)[0], e->saved[0]->data, e->saved[1]->data,
                              e->saved[2]->data, e->in[0]->shape[0], e->in[0]->shape[1]);
    return RB_OK;
}

rb_tensor *rb_cross_entropy(rb_ctx *c, rb_tensor *logits, rb_tensor *target) {
    if (c->status != RB_OK)
        return NULL;
    if (!logits || !target)
        return rb_ctx_error(c, RB_ERR_INVALID, "cross_entropy: NULL input");
    char s1[96], s2[96];
    if (logits->ndim != 2 || target->ndim != 1 || target->shape[0] != logits->shape[0])
        return rb_ctx_error(c, RB_ERR_INVALID, "cross_entropy: logits %s and target %s, expected [N, C] and [N]",
                            rb_shape_str(logits, s1, sizeof s1), rb_shape_str(target, s2, sizeof s2));
    if (target->dtype != RB_I64 && target->dtype != RB_I32)
        return rb_ctx_error(c, RB_ERR_INVALID, "cross_entropy: target must be i64 or i32, got %s",
                            rb_dtype_name(target->dtype));
    const int64_t N = logits->shape[0], C = logits->shape[1];
    rb_tensor *lc = rb_f32_contig(c, logits, "cross_entropy", "logits");
    rb_tensor *tc = lc ? rb_ctx_tensor(c, RB_I64, 1, &N) : NULL;
    rb_tensor *lse = tc ? rb_ctx_tensor(c, RB_F32, 1, &N) : NULL;
    int64_t none[1] = {1};
    rb_tensor *out = lse ? rb_ctx_tensor(c, RB_F32, 0, none) : NULL;
    if (!out)
        return NULL;
    int64_t *t = tc->data;
    for (int64_t n = 0; n < N; n++) {
        int64_t v = target->dtype == RB_I64 ? ((const int64_t *)target->data)[n * target->stride[0]]
                                            : ((const int32_t *)target->data)[n * target->stride[0]];
        if (v < 0 || v >= C) /* torch would ignore -100 (ignore_index); we have no such rows */
            return rb_ctx_error(c, RB_ERR_INVALID, "cross_entropy: target[%lld] = %lld is outside [0, %lld)",
                                (long long)n, (long long)v, (long long)C);
        t[n] = v;
    }
    ((float *)out->data)[0] = (float)rb_cross_entropy_forward(lse->data, lc->data, t, N, C);
    rb_tape_entry *e = rb_tape_record(c, "cross_entropy", cross_entropy_backward, out, 2,
                                      (rb_tensor *[]){logits, target});
    if (e) {
        e->saved[0] = lc;
        e->saved[1] = lse;
        e->saved[2] = tc;
    }
    return c->status == RB_OK ? out : NULL;
}
