/* Group norm, layer norm and softmax. */
#include "norm.h"

#include <math.h>
#include <string.h>

#include "elementwise.h"
#include "ops.h"

#define PAR_MIN 16384
/* Layer-norm weight gradients: rows are split into this many fixed parts, each with its own
 * partial sums, then added in order (race-free and independent of the thread count). */
#define LN_PARTS 32

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* sum (x - mu)^2 and sum dy (x - mu): the difference in float (exact when x is near mu), the
 * sum in double lanes */
static double dsum_sq_centered(const float *x, float mu, int64_t n) {
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; j++) {
        float d = x[j] - mu;
        s += d * d;
    }
    return s;
}

static double ddot_centered(const float *dy, const float *x, float mu, int64_t n) {
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; j++)
        s += (double)dy[j] * (x[j] - mu);
    return s;
}

/* Mean and rstd of n values. The mean is split into its float value mu and the rest dmu = mean - mu,
 * so that (x - mu) - dmu is accurate to f32 relative to the spread even when |mean| >> std. */
static void moments(const float *x, int64_t n, float eps, float *mu, float *dmu, float *rstd) {
    double mean = n ? rb_dsum_f32(x, n) / (double)n : 0.0;
    float m = (float)mean;
    double d = mean - m;
    /* E[(x - m)^2] = var + d^2 */
    double var = n ? dsum_sq_centered(x, m, n) / (double)n - d * d : 0.0;
    *mu = m;
    *dmu = (float)d;
    *rstd = (float)(1.0 / sqrt((var > 0 ? var : 0) + (double)eps));
}

/* ---- group norm ---- */

void rb_group_norm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                           const float *bias, int64_t N, int64_t C, int64_t S, int64_t G, float eps) {
    const int64_t cpg = C / G, m = cpg * S;
#pragma omp parallel for schedule(dynamic, 1) if (N * C * S > PAR_MIN)
    for (int64_t ng = 0; ng < N * G; ng++) {
        const int64_t c0 = (ng % G) * cpg;
        const float *x = inp + ng * m; /* [n, g*cpg .. (g+1)*cpg, S] is one contiguous block */
        float *y = out + ng * m;
        float mu, dmu, rs;
        moments(x, m, eps, &mu, &dmu, &rs);
        mean[ng] = mu;
        rstd[ng] = rs;
        /* y = ((x - mu) - dmu) a + b per channel, a = rstd w */
        for (int64_t k = 0; k < cpg; k++) {
            const float a = rs * (weight ? weight[c0 + k] : 1.0f), b = bias ? bias[c0 + k] : 0.0f;
            const float *xc = x + k * S;
            float *yc = y + k * S;
#pragma omp simd
            for (int64_t s = 0; s < S; s++)
                yc[s] = ((xc[s] - mu) - dmu) * a + b;
        }
    }
}

int64_t rb_group_norm_scratch(int64_t N, int64_t C) { return 2 * N * C; }

/* With xhat = (x - mu) rstd and A = sum dy w, B = sum dy w (x - mu) over a group of m elements:
 *   dx = rstd w dy - rstd A / m - (x - mu) rstd^3 B / m
 *   dweight[c] += sum over n, s of dy xhat;  dbias[c] += sum dy
 * Per (n, c) partials of the weight gradients go to scratch [2, N, C] and are summed over n after. */
void rb_group_norm_backward(float *dinp, float *dweight, float *dbias, float *scratch, const float *dout,
                            const float *inp, const float *weight, const float *mean, const float *rstd, int64_t N,
                            int64_t C, int64_t S, int64_t G) {
    const int64_t cpg = C / G, m = cpg * S;
    float *pw = scratch, *pb = scratch ? scratch + N * C : NULL;
    const int want_w = (dweight || dbias) && scratch;
#pragma omp parallel for schedule(dynamic, 1) if (N * C * S > PAR_MIN)
    for (int64_t ng = 0; ng < N * G; ng++) {
        const int64_t n = ng / G, c0 = (ng % G) * cpg;
        const float *x = inp + ng * m, *dy = dout + ng * m;
        const float mu = mean[ng], rs = rstd[ng];
        double A = 0, B = 0;
        for (int64_t k = 0; k < cpg; k++) {
            double sb = rb_dsum_f32(dy + k * S, S), sw = ddot_centered(dy + k * S, x + k * S, mu, S);
            double w = weight ? weight[c0 + k] : 1.0;
            A += w * sb;
            B += w * sw;
            if (want_w) {
                pw[n * C + c0 + k] = (float)(sw * rs);
                pb[n * C + c0 + k] = (float)sb;
            }
        }
        if (!dinp)
            continue;
        const float c2 = (float)(-(double)rs * rs * rs * B / (double)m), c3 = (float)(-(double)rs * A / (double)m);
        for (int64_t k = 0; k < cpg; k++) {
            const float c1 = rs * (weight ? weight[c0 + k] : 1.0f);
            const float *xc = x + k * S, *g = dy + k * S;
            float *dx = dinp + ng * m + k * S;
#pragma omp simd
            for (int64_t s = 0; s < S; s++)
                dx[s] += c1 * g[s] + c2 * (xc[s] - mu) + c3;
        }
    }
    if (!want_w)
        return;
    for (int64_t ch = 0; ch < C; ch++) {
        double sw = 0, sb = 0;
        for (int64_t n = 0; n < N; n++) {
            sw += pw[n * C + ch];
            sb += pb[n * C + ch];
        }
        if (dweight)
            dweight[ch] += (float)sw;
        if (dbias)
            dbias[ch] += (float)sb;
    }
}

/* ---- layer norm ---- */

void rb_layer_norm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                           const float *bias, int64_t rows, int64_t C, float eps) {
#pragma omp parallel for schedule(static) if (rows * C > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *x = inp + r * C;
        float *y = out + r * C;
        float m, dm, rs;
        moments(x, C, eps, &m, &dm, &rs);
        mean[r] = m;
        rstd[r] = rs;
        if (weight && bias) {
#pragma omp simd
            for (int64_t j = 0; j < C; j++)
                y[j] = ((x[j] - m) - dm) * rs * weight[j] + bias[j];
        } else {
            for (int64_t j = 0; j < C; j++)
                y[j] = ((x[j] - m) - dm) * rs * (weight ? weight[j] : 1.0f) + (bias ? bias[j] : 0.0f);
        }
    }
}

int64_t rb_layer_norm_scratch(int64_t rows, int64_t C) { return 2 * LN_PARTS * C; }

/* dx = rstd (dy w - mean(dy w) - xhat mean(dy w xhat))  (llm.c's layernorm_backward) */
void rb_layer_norm_backward(float *dinp, float *dweight, float *dbias, float *scratch, const float *dout,
                            const float *inp, const float *weight, const float *mean, const float *rstd, int64_t rows,
                            int64_t C) {
    const int want_w = (dweight || dbias) && scratch;
    const int64_t P = rows < LN_PARTS ? rows : LN_PARTS, per = P ? (rows + P - 1) / P : 0;
#pragma omp parallel for schedule(static) if (rows * C > PAR_MIN)
    for (int64_t p = 0; p < P; p++) {
        float *pw = scratch ? scratch + p * C : NULL, *pb = scratch ? scratch + (LN_PARTS + p) * C : NULL;
        if (want_w) {
            memset(pw, 0, (size_t)C * sizeof *pw);
            memset(pb, 0, (size_t)C * sizeof *pb);
        }
        for (int64_t r = p * per; r < min64(rows, (p + 1) * per); r++) {
            const float *x = inp + r * C, *dy = dout + r * C;
            const float m = mean[r], rs = rstd[r];
            float s1 = 0, s2 = 0; /* sum dy w, sum dy w xhat */
#pragma omp simd reduction(+ : s1, s2)
            for (int64_t j = 0; j < C; j++) {
                float dn = dy[j] * (weight ? weight[j] : 1.0f);
                s1 += dn;
                s2 += dn * (x[j] - m) * rs;
            }
            const float a1 = s1 / (float)C, a2 = s2 / (float)C;
            if (dinp) {
                float *dx = dinp + r * C;
#pragma omp simd
                for (int64_t j = 0; j < C; j++) {
                    float xh = (x[j] - m) * rs, dn = dy[j] * (weight ? weight[j] : 1.0f);
                    dx[j] += rs * (dn - a1 - xh * a2);
                }
            }
            if (want_w) {
#pragma omp simd
                for (int64_t j = 0; j < C; j++) {
                    pw[j] += dy[j] * (x[j] - m) * rs;
                    pb[j] += dy[j];
                }
            }
        }
    }
    if (!want_w)
        return;
    for (int64_t j = 0; j < C; j++) {
        float sw = 0, sb = 0;
        for (int64_t p = 0; p < P; p++) {
            sw += scratch[p * C + j];
            sb += scratch[(LN_PARTS + p) * C + j];
        }
        if (dweight)
            dweight[j] += sw;
        if (dbias)
            dbias[j] += sb;
    }
}

/* ---- softmax ---- */

void rb_softmax_forward(float *out, const float *inp, int64_t rows, int64_t C) {
#pragma omp parallel for schedule(static) if (rows * C > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *x = inp + r * C;
        float *y = out + r * C;
        float mx = -INFINITY;
        for (int64_t j = 0; j < C; j++)
            mx = x[j] > mx ? x[j] : mx;
        for (int64_t j = 0; j < C; j++)
            y[j] = expf(x[j] - mx);
        const float inv = (float)(1.0 / rb_dsum_f32(y, C));
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            y[j] *= inv;
    }
}

void rb_softmax_backward(float *dinp, const float *dout, const float *out, int64_t rows, int64_t C) {
#pragma omp parallel for schedule(static) if (rows * C > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *dy = dout + r * C, *y = out + r * C;
        float *dx = dinp + r * C;
        const float s = (float)rb_ddot_f32(dy, y, C);
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            dx[j] += y[j] * (dy[j] - s);
    }
}

/* ---- tensor-level ops ---- */

/* weight or bias of a norm: NULL, or a [C] tensor, made contiguous f32 */
static int affine_arg(rb_ctx *c, rb_tensor *t, int64_t C, const char *op, const char *arg, rb_tensor **out) {
    *out = NULL;
    if (!t)
        return 1;
    if (t->ndim != 1 || t->shape[0] != C) {
        char buf[96];
        rb_ctx_error(c, RB_ERR_INVALID, "%s: %s has shape %s, expected [%lld]", op, arg,
                     rb_shape_str(t, buf, sizeof buf), (long long)C);
        return 0;
    }
    *out = rb_f32_contig(c, t, op, arg);
    return *out != NULL;
}

/* Gradient buffers first (they may come from the same arena as the scratch), then the scratch
 * above a mark that is released afterwards. */
static rb_status norm_backward(rb_ctx *c, rb_tape_entry *e, int group) {
    rb_tensor *x = e->in[0], *w = e->in[1], *b = e->in[2];
    rb_tensor *gx = NULL, *gw = NULL, *gb = NULL;
    if (rb_needs_grad(x) && !(gx = rb_grad_of(c, x)))
        return c->status;
    if (rb_needs_grad(w) && !(gw = rb_grad_of(c, w)))
        return c->status;
    if (rb_needs_grad(b) && !(gb = rb_grad_of(c, b)))
        return c->status;
    const float *wd = e->saved[3] ? e->saved[3]->data : NULL;
    const float *xd = e->saved[0]->data, *mean = e->saved[1]->data, *rstd = e->saved[2]->data;
    const float *dy = e->out->grad->data;
    int64_t C = x->shape[group ? 1 : x->ndim - 1];
    int64_t rows = C ? rb_numel(x) / C : 0, N = x->shape[0], S = N && C ? rb_numel(x) / (N * C) : 0;
    size_t mark = rb_arena_mark(c->arena);
    float *scratch = NULL;
    if (gw || gb) {
        int64_t ns = group ? rb_group_norm_scratch(N, C) : rb_layer_norm_scratch(rows, C);
        scratch = rb_arena_alloc(c->arena, (size_t)(ns ? ns : 1) * sizeof(float));
        if (!scratch) {
            rb_ctx_fail(c, RB_ERR_OOM);
            return RB_ERR_OOM;
        }
    }
    float *dx = gx ? gx->data : NULL, *dw = gw ? gw->data : NULL, *db = gb ? gb->data : NULL;
    if (group)
        rb_group_norm_backward(dx, dw, db, scratch, dy, xd, wd, mean, rstd, N, C, S, e->i[0]);
    else
        rb_layer_norm_backward(dx, dw, db, scratch, dy, xd, wd, mean, rstd, rows, C);
    rb_arena_reset(c->arena, mark);
    return RB_OK;
}

static rb_status group_norm_backward(rb_ctx *c, rb_tape_entry *e) { return norm_backward(c, e, 1); }
static rb_status layer_norm_backward(rb_ctx *c, rb_tape_entry *e) { return norm_backward(c, e, 0); }

rb_tensor *rb_group_norm(rb_ctx *c, rb_tensor *x, int groups, rb_tensor *weight, rb_tensor *bias, float eps) {
    if (c->status != RB_OK)
        return NULL;
    if (!x)
        return rb_ctx_error(c, RB_ERR_INVALID, "group_norm: NULL input");
    char buf[96];
    if (x->ndim < 2)
        return rb_ctx_error(c, RB_ERR_INVALID, "group_norm: x has shape %s, expected [N, C, *]",
                            rb_shape_str(x, buf, sizeof buf));
    const int64_t N = x->shape[0], C = x->shape[1], S = N && C ? rb_numel(x) / (N * C) : 0;
    if (groups <= 0 || C % groups)
        return rb_ctx_error(c, RB_ERR_INVALID, "group_norm: %lld channels do not split into %d groups",
                            (long long)C, groups);
    if (!(eps >= 0))
        return rb_ctx_error(c, RB_ERR_INVALID, "group_norm: eps %g is negative", eps);
    rb_tensor *wc, *bc;
    if (!affine_arg(c, weight, C, "group_norm", "weight", &wc) || !affine_arg(c, bias, C, "group_norm", "bias", &bc))
        return NULL;
    rb_tensor *xc = rb_f32_contig(c, x, "group_norm", "x");
    rb_tensor *out = xc ? rb_ctx_tensor(c, RB_F32, x->ndim, x->shape) : NULL;
    rb_tensor *mean = out ? rb_ctx_tensor(c, RB_F32, 2, (int64_t[]){N, groups}) : NULL;
    rb_tensor *rstd = mean ? rb_ctx_tensor(c, RB_F32, 2, (int64_t[]){N, groups}) : NULL;
    if (!rstd)
        return NULL;
    rb_group_norm_forward(out->data, mean->data, rstd->data, xc->data, wc ? wc->data : NULL, bc ? bc->data : NULL,
                          N, C, S, groups, eps);
    rb_tape_entry *e = rb_tape_record(c, "group_norm", group_norm_backward, out, 3, (rb_tensor *[]){x, weight, bias});
    if (e) {
        e->saved[0] = xc;
        e->saved[1] = mean;
        e->saved[2] = rstd;
        e->saved[3] = wc;
        e->i[0] = groups;
        e->f[0] = eps;
    }
    return c->status == RB_OK ? out : NULL;
}

rb_tensor *rb_layer_norm(rb_ctx *c, rb_tensor *x, rb_tensor *weight, rb_tensor *bias, float eps) {
    if (c->status != RB_OK)
        return NULL;
    if (!x)
        return rb_ctx_error(c, RB_ERR_INVALID, "layer_norm: NULL input");
    if (x->ndim < 1)
        return rb_ctx_error(c, RB_ERR_INVALID, "layer_norm: x is a scalar, expected [..., C]");
    if (!(eps >= 0))
        return rb_ctx_error(c, RB_ERR_INVALID, "layer_norm: eps %g is negative", eps);
    const int64_t C = x->shape[x->ndim - 1], rows = C ? rb_numel(x) / C : 0;
    rb_tensor *wc, *bc;
    if (!affine_arg(c, weight, C, "layer_norm", "weight", &wc) || !affine_arg(c, bias, C, "layer_norm", "bias", &bc))
        return NULL;
    rb_tensor *xc = rb_f32_contig(c, x, "layer_norm", "x");
    rb_tensor *out = xc ? rb_ctx_tensor(c, RB_F32, x->ndim, x->shape) : NULL;
    rb_tensor *mean = out ? rb_ctx_tensor(c, RB_F32, 1, &rows) : NULL;
    rb_tensor *rstd = mean ? rb_ctx_tensor(c, RB_F32, 1, &rows) : NULL;
    if (!rstd)
        return NULL;
    rb_layer_norm_forward(out->data, mean->data, rstd->data, xc->data, wc ? wc->data : NULL, bc ? bc->data : NULL,
                          rows, C, eps);
    rb_tape_entry *e = rb_tape_record(c, "layer_norm", layer_norm_backward, out, 3, (rb_tensor *[]){x, weight, bias});
    if (e) {
        e->saved[0] = xc;
        e->saved[1] = mean;
        e->saved[2] = rstd;
        e->saved[3] = wc;
        e->f[0] = eps;
    }
    return c->status == RB_OK ? out : NULL;
}

static rb_status softmax_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *gx = rb_grad_of(c, e->in[0]);
    if (!gx)
        return c->status;
    int64_t C = e->out->ndim ? e->out->shape[e->out->ndim - 1] : 1;
    rb_softmax_backward(gx->data, e->out->grad->data, e->out->data, C ? rb_numel(e->out) / C : 0, C);
    return RB_OK;
}

rb_tensor *rb_softmax(rb_ctx *c, rb_tensor *x) {
    if (c->status != RB_OK)
        return NULL;
    if (!x)
        return rb_ctx_error(c, RB_ERR_INVALID, "softmax: NULL input");
    /* torch treats a 0-dim tensor as one row of one element */
    const int64_t C = x->ndim ? x->shape[x->ndim - 1] : 1, rows = C ? rb_numel(x) / C : 0;
    rb_tensor *xc = rb_f32_contig(c, x, "softmax", "x");
    rb_tensor *out = xc ? rb_ctx_tensor(c, RB_F32, x->ndim, x->shape) : NULL;
    if (!out)
        return NULL;
    rb_softmax_forward(out->data, xc->data, rows, C);
    rb_tape_record(c, "softmax", softmax_backward, out, 1, &x);
    return c->status == RB_OK ? out : NULL;
}
