/* Elementwise add/sub/mul with NumPy broadcasting, scale, sum and mean. */
#include "elementwise.h"

#include <string.h>

#include "ops.h"

/* Below this many elements a parallel region costs more than it saves. */
#define PAR_MIN 32768
/* Forward tasks: a row of the collapsed output split into chunks of this many elements. */
#define FWD_CHUNK 4096
/* Backward tasks along a kept last dim: double accumulators on the stack. */
#define BWD_CHUNK 512

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- shared helpers ---- */

rb_tensor *rb_f32_contig(rb_ctx *c, rb_tensor *x, const char *op, const char *arg) {
    if (c->status != RB_OK || !x)
        return NULL;
    if (x->dtype == RB_F32 && rb_is_contiguous(x))
        return x;
    if ((unsigned)x->dtype >= RB_DTYPE_COUNT || !rb_dtypes[x->dtype].is_float)
        return rb_ctx_error(c, RB_ERR_INVALID, "%s: %s must be a floating-point tensor, got %s", op, arg,
                            rb_dtype_name(x->dtype));
    rb_tensor *y = rb_ctx_tensor(c, RB_F32, x->ndim, x->shape);
    if (!y)
        return NULL;
    rb_status s = rb_tensor_copy(y, x);
    return s == RB_OK ? y : rb_ctx_fail(c, s);
}

/* Accumulated in double lanes (vectorised): the error stays at double level even for 10^8
 * elements or data whose mean is far larger than its spread (group norm on activations). */
double rb_dsum_f32(const float *x, int64_t n) {
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; j++)
        s += x[j];
    return s;
}

double rb_ddot_f32(const float *x, const float *y, int64_t n) {
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; j++)
        s += (double)x[j] * y[j];
    return s;
}

/* ---- broadcasting ---- */

static const char *shape_str(char *buf, size_t n, int nd, const int64_t *s) {
    rb_tensor t = rb_tensor_wrap(NULL, RB_F32, nd, s);
    return rb_shape_str(&t, buf, n);
}

rb_status rb_bcast_plan(rb_bcast *p, int *out_ndim, int64_t *out_shape, int a_ndim, const int64_t *a_shape,
                        int b_ndim, const int64_t *b_shape, const char *op) {
    int nd = a_ndim > b_ndim ? a_ndim : b_ndim;
    int64_t A[RB_MAX_DIMS], B[RB_MAX_DIMS], O[RB_MAX_DIMS], sa[RB_MAX_DIMS], sb[RB_MAX_DIMS];
    for (int i = 0; i < nd; i++) {
        int ia = i - (nd - a_ndim), ib = i - (nd - b_ndim);
        A[i] = ia >= 0 ? a_shape[ia] : 1;
        B[i] = ib >= 0 ? b_shape[ib] : 1;
        if (A[i] != B[i] && A[i] != 1 && B[i] != 1) {
            char s1[96], s2[96];
            return rb_error(RB_ERR_INVALID, "%s: shapes %s and %s do not broadcast", op,
                            shape_str(s1, sizeof s1, a_ndim, a_shape), shape_str(s2, sizeof s2, b_ndim, b_shape));
        }
        O[i] = A[i] == 1 ? B[i] : A[i];
    }
    /* contiguous strides, 0 where the operand is broadcast */
    int64_t ca = 1, cb = 1;
    for (int i = nd - 1; i >= 0; i--) {
        sa[i] = A[i] == 1 ? 0 : ca;
        sb[i] = B[i] == 1 ? 0 : cb;
        ca *= A[i];
        cb *= B[i];
    }
    *out_ndim = nd;
    p->n = 1;
    p->nd = 0;
    for (int i = 0; i < nd; i++) {
        out_shape[i] = O[i];
        p->n *= O[i];
        if (O[i] == 1)
            continue; /* size-1 dims do not move any index */
        int k = p->nd - 1;
        if (k >= 0 && p->sa[k] == sa[i] * O[i] && p->sb[k] == sb[i] * O[i]) {
            p->shape[k] *= O[i]; /* dims k and i walk both operands as one */
            p->sa[k] = sa[i];
            p->sb[k] = sb[i];
        } else {
            p->shape[p->nd] = O[i];
            p->sa[p->nd] = sa[i];
            p->sb[p->nd] = sb[i];
            p->nd++;
        }
    }
    if (p->nd == 0) { /* every dim is 1: a single element */
        p->nd = 1;
        p->shape[0] = 1;
        p->sa[0] = p->sb[0] = 0;
    }
    return RB_OK;
}

/* One output run: out[j] = a[j*as] op b[j*bs]; strides 0 or 1 get vectorised loops. */
#define BIN_ROW(EXPR)                                                  \
    do {                                                               \
        if (as == 1 && bs == 1) {                                      \
            _Pragma("omp simd") for (int64_t j = 0; j < n; j++) {      \
                float x = a[j], y = b[j];                              \
                o[j] = (EXPR);                                         \
            }                                                          \
        } else if (as == 1) {                                          \
            const float y = b[0];                                      \
            _Pragma("omp simd") for (int64_t j = 0; j < n; j++) {      \
                float x = a[j];                                        \
                o[j] = (EXPR);                                         \
            }                                                          \
        } else if (bs == 1) {                                          \
            const float x = a[0];                                      \
            _Pragma("omp simd") for (int64_t j = 0; j < n; j++) {      \
                float y = b[j];                                        \
                o[j] = (EXPR);                                         \
            }                                                          \
        } else {                                                       \
            for (int64_t j = 0; j < n; j++) {                          \
                float x = a[j * as], y = b[j * bs];                    \
                o[j] = (EXPR);                                         \
            }                                                          \
        }                                                              \
    } while (0)

static void bin_row(float *restrict o, const float *restrict a, int64_t as, const float *restrict b, int64_t bs,
                    int64_t n, rb_binop op) {
    switch (op) {
    case RB_BIN_ADD: BIN_ROW(x + y); break;
    case RB_BIN_SUB: BIN_ROW(x - y); break;
    case RB_BIN_MUL: BIN_ROW(x * y); break;
    }
}

void rb_binary_forward(float *out, const float *a, const float *b, const rb_bcast *p, rb_binop op) {
    if (p->n == 0)
        return;
    const int nd = p->nd;
    const int64_t L = p->shape[nd - 1], rows = p->n / L, nch = (L + FWD_CHUNK - 1) / FWD_CHUNK;
    const int64_t asl = p->sa[nd - 1], bsl = p->sb[nd - 1];
#pragma omp parallel for schedule(static) if (p->n > PAR_MIN)
    for (int64_t t = 0; t < rows * nch; t++) {
        int64_t r = t / nch, j0 = (t % nch) * FWD_CHUNK, oa = 0, ob = 0, rr = r;
        for (int d = nd - 2; d >= 0; d--) {
            int64_t i = rr % p->shape[d];
            rr /= p->shape[d];
            oa += i * p->sa[d];
            ob += i * p->sb[d];
        }
        bin_row(out + r * L + j0, a + oa + j0 * asl, asl, b + ob + j0 * bsl, bsl, min64(FWD_CHUNK, L - j0), op);
    }
}

/* Offsets of multi-index `flat` over the listed dims (last listed varies fastest). */
static void unravel(int64_t flat, const int *dims, int nd, const int64_t *shape, const int64_t *s_out,
                    const int64_t *s_x, const int64_t *s_o, int64_t *oo, int64_t *ox, int64_t *oq) {
    for (int k = nd - 1; k >= 0; k--) {
        int d = dims[k];
        int64_t i = flat % shape[d];
        flat /= shape[d];
        *oo += i * s_out[d];
        *ox += i * s_x[d];
        *oq += i * s_o[d];
    }
}

/* The dims of the output split into those the operand x has (kept: each task owns a slice of dx,
 * so no two threads write the same element) and those it is broadcast along (reduced: summed
 * inside a task, in double). The last dim is split into chunks when kept. */
void rb_binary_backward(float *dx, const float *dout, const float *other, float sign, const rb_bcast *p,
                        int which) {
    if (p->n == 0)
        return;
    const int nd = p->nd;
    const int64_t *sx = which ? p->sb : p->sa, *so = which ? p->sa : p->sb;
    int64_t s_out[RB_MAX_DIMS];
    s_out[nd - 1] = 1;
    for (int d = nd - 2; d >= 0; d--)
        s_out[d] = s_out[d + 1] * p->shape[d + 1];
    int kd[RB_MAX_DIMS], rd[RB_MAX_DIMS], nk = 0, nr = 0;
    int64_t K = 1, R = 1;
    for (int d = 0; d < nd - 1; d++) {
        if (sx[d]) {
            kd[nk++] = d;
            K *= p->shape[d];
        } else {
            rd[nr++] = d;
            R *= p->shape[d];
        }
    }
    const int64_t L = p->shape[nd - 1], sxl = sx[nd - 1], sol = so[nd - 1];
    const int last_kept = sxl != 0 || L == 1;
    const int64_t nch = last_kept ? (L + BWD_CHUNK - 1) / BWD_CHUNK : 1;
#pragma omp parallel for schedule(static) if (p->n > PAR_MIN)
    for (int64_t t = 0; t < K * nch; t++) {
        int64_t ko = 0, kx = 0, kq = 0;
        unravel(t / nch, kd, nk, p->shape, s_out, sx, so, &ko, &kx, &kq);
        if (last_kept) {
            const int64_t c0 = (t % nch) * BWD_CHUNK, m = min64(BWD_CHUNK, L - c0);
            double acc[BWD_CHUNK];
            memset(acc, 0, (size_t)m * sizeof *acc);
            for (int64_t r = 0; r < R; r++) {
                int64_t ro = ko, rx = kx, rq = kq;
                unravel(r, rd, nr, p->shape, s_out, sx, so, &ro, &rx, &rq);
                const float *g = dout + ro + c0;
                if (!other) {
#pragma omp simd
                    for (int64_t j = 0; j < m; j++)
                        acc[j] += g[j];
                } else if (sol == 1) {
                    const float *q = other + rq + c0;
#pragma omp simd
                    for (int64_t j = 0; j < m; j++)
                        acc[j] += g[j] * q[j];
                } else {
                    const float q = other[rq];
#pragma omp simd
                    for (int64_t j = 0; j < m; j++)
                        acc[j] += g[j] * q;
                }
            }
            float *d = dx + kx + c0 * sxl;
            for (int64_t j = 0; j < m; j++)
                d[j * sxl] += sign * (float)acc[j];
        } else {
            double acc = 0;
            for (int64_t r = 0; r < R; r++) {
                int64_t ro = ko, rx = kx, rq = kq;
                unravel(r, rd, nr, p->shape, s_out, sx, so, &ro, &rx, &rq);
                if (!other)
                    acc += rb_dsum_f32(dout + ro, L);
                else if (sol == 1)
                    acc += rb_ddot_f32(dout + ro, other + rq, L);
                else
                    acc += other[rq] * rb_dsum_f32(dout + ro, L);
            }
            dx[kx] += sign * (float)acc;
        }
    }
}

/* ---- scale and reductions ---- */

void rb_scale_forward(float *out, const float *x, float s, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * s;
}

void rb_scale_backward(float *dx, const float *dout, float s, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        dx[i] += dout[i] * s;
}

/* A fixed split into 64 parts summed in order: the result does not depend on the thread count. */
double rb_sum_forward(const float *x, int64_t n) {
    enum { PARTS = 64 };
    double part[PARTS];
    int64_t per = (n + PARTS - 1) / PARTS;
    per = (per + 255) / 256 * 256;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int k = 0; k < PARTS; k++) {
        int64_t i0 = min64((int64_t)k * per, n), i1 = min64(i0 + per, n);
        part[k] = rb_dsum_f32(x + i0, i1 - i0);
    }
    double s = 0;
    for (int k = 0; k < PARTS; k++)
        s += part[k];
    return s;
}

void rb_fill_backward(float *dx, float g, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        dx[i] += g;
}

/* ---- tensor-level ops ---- */

static const char *bin_name[] = {"add", "sub", "mul"};

static rb_status binary_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *a = e->in[0], *b = e->in[1], *ac = e->saved[0], *bc = e->saved[1];
    rb_binop op = (rb_binop)e->i[0];
    rb_bcast p;
    int nd;
    int64_t shape[RB_MAX_DIMS];
    RB_TRY(rb_bcast_plan(&p, &nd, shape, a->ndim, a->shape, b->ndim, b->shape, e->op));
    const float *g = e->out->grad->data;
    if (rb_needs_grad(a)) {
        rb_tensor *ga = rb_grad_of(c, a);
        if (!ga)
            return c->status;
        rb_binary_backward(ga->data, g, op == RB_BIN_MUL ? bc->data : NULL, 1.0f, &p, 0);
    }
    if (rb_needs_grad(b)) {
        rb_tensor *gb = rb_grad_of(c, b);
        if (!gb)
            return c->status;
        rb_binary_backward(gb->data, g, op == RB_BIN_MUL ? ac->data : NULL, op == RB_BIN_SUB ? -1.0f : 1.0f, &p, 1);
    }
    return RB_OK;
}

static rb_tensor *binary(rb_ctx *c, rb_tensor *a, rb_tensor *b, rb_binop op) {
    const char *name = bin_name[op];
    if (c->status != RB_OK)
        return NULL;
    if (!a || !b)
        return rb_ctx_error(c, RB_ERR_INVALID, "%s: NULL input", name);
    rb_tensor *ac = rb_f32_contig(c, a, name, "a"), *bc = rb_f32_contig(c, b, name, "b");
    if (!ac || !bc)
        return NULL;
    rb_bcast p;
    int nd;
    int64_t shape[RB_MAX_DIMS];
    rb_status s = rb_bcast_plan(&p, &nd, shape, a->ndim, a->shape, b->ndim, b->shape, name);
    if (s != RB_OK)
        return rb_ctx_fail(c, s);
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, nd, shape);
    if (!out)
        return NULL;
    rb_binary_forward(out->data, ac->data, bc->data, &p, op);
    rb_tape_entry *e = rb_tape_record(c, name, binary_backward, out, 2, (rb_tensor *[]){a, b});
    if (e) {
        e->saved[0] = ac;
        e->saved[1] = bc;
        e->i[0] = op;
    }
    return c->status == RB_OK ? out : NULL;
}

rb_tensor *rb_add(rb_ctx *c, rb_tensor *a, rb_tensor *b) { return binary(c, a, b, RB_BIN_ADD); }
rb_tensor *rb_sub(rb_ctx *c, rb_tensor *a, rb_tensor *b) { return binary(c, a, b, RB_BIN_SUB); }
rb_tensor *rb_mul(rb_ctx *c, rb_tensor *a, rb_tensor *b) { return binary(c, a, b, RB_BIN_MUL); }

static rb_status scale_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *gx = rb_grad_of(c, e->in[0]);
    if (!gx)
        return c->status;
    rb_scale_backward(gx->data, e->out->grad->data, (float)e->f[0], rb_numel(e->out));
    return RB_OK;
}

rb_tensor *rb_scale(rb_ctx *c, rb_tensor *x, float s) {
    if (c->status != RB_OK)
        return NULL;
    if (!x)
        return rb_ctx_error(c, RB_ERR_INVALID, "scale: NULL input");
    rb_tensor *xc = rb_f32_contig(c, x, "scale", "x");
    rb_tensor *out = xc ? rb_ctx_tensor(c, RB_F32, x->ndim, x->shape) : NULL;
    if (!out)
        return NULL;
    rb_scale_forward(out->data, xc->data, s, rb_numel(x));
    rb_tape_entry *e = rb_tape_record(c, "scale", scale_backward, out, 1, &x);
    if (e)
        e->f[0] = s;
    return c->status == RB_OK ? out : NULL;
}

/* sum: dx += dout; mean: dx += dout / n (f[0] holds the 1 or 1/n factor) */
static rb_status reduce_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *gx = rb_grad_of(c, e->in[0]);
    if (!gx)
        return c->status;
    float g = ((const float *)e->out->grad->data)[0];
    rb_fill_backward(gx->data, (float)(g * e->f[0]), rb_numel(e->in[0]));
    return RB_OK;
}

static rb_tensor *reduce_all(rb_ctx *c, rb_tensor *x, int mean) {
    const char *name = mean ? "mean" : "sum";
    if (c->status != RB_OK)
        return NULL;
    if (!x)
        return rb_ctx_error(c, RB_ERR_INVALID, "%s: NULL input", name);
    rb_tensor *xc = rb_f32_contig(c, x, name, "x");
    int64_t none[1] = {1};
    rb_tensor *out = xc ? rb_ctx_tensor(c, RB_F32, 0, none) : NULL;
    if (!out)
        return NULL;
    int64_t n = rb_numel(x);
    double s = rb_sum_forward(xc->data, n);
    /* torch: mean of an empty tensor is nan, sum is 0 */
    double f = mean ? 1.0 / (double)n : 1.0;
    ((float *)out->data)[0] = (float)(s * f);
    rb_tape_entry *e = rb_tape_record(c, name, reduce_backward, out, 1, &x);
    if (e)
        e->f[0] = f;
    return c->status == RB_OK ? out : NULL;
}

rb_tensor *rb_sum(rb_ctx *c, rb_tensor *x) { return reduce_all(c, x, 0); }
rb_tensor *rb_mean(rb_ctx *c, rb_tensor *x) { return reduce_all(c, x, 1); }
