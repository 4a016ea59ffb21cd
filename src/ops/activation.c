/* GELU (erf and tanh forms), QuickGELU, SiLU and GEGLU, with the formulas of PyTorch's CPU
 * kernels (aten/src/ATen/native/cpu/Activation.cpp) so results agree to float rounding. */
#include "activation.h"

#include <math.h>

#include "elementwise.h"
#include "ops.h"

#define PAR_MIN 16384

static const float k_sqrt1_2 = 0.70710678118654752440f;   /* 1/sqrt(2) */
static const float k_alpha = 0.39894228040143267794f;     /* 1/sqrt(2 pi): the normal pdf's factor */
static const float k_beta = 0.79788456080286535588f;      /* sqrt(2/pi) */
static const float k_kappa = 0.044715f;

static inline float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * k_sqrt1_2)); }
/* d/dx: cdf(x) + x pdf(x) */
static inline float gelu_erf_grad(float x) {
    return 0.5f * (1.0f + erff(x * k_sqrt1_2)) + x * k_alpha * expf(-0.5f * x * x);
}
static inline float gelu_tanh(float x) {
    float inner = k_beta * (x + k_kappa * x * x * x);
    return 0.5f * x * (1.0f + tanhf(inner));
}
static inline float gelu_tanh_grad(float x) {
    float x2 = x * x, t = tanhf(k_beta * (x + k_kappa * x2 * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k_beta * (1.0f + 3.0f * k_kappa * x2);
}
/* 1/(1+e^-x): e^-x overflows to inf for x < -88 and the result is a clean 0, never nan */
static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

void rb_gelu_forward(float *out, const float *inp, int64_t n, int tanh_approx) {
    if (tanh_approx) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            out[i] = gelu_tanh(inp[i]);
    } else {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            out[i] = gelu_erf(inp[i]);
    }
}

void rb_gelu_backward(float *dinp, const float *dout, const float *inp, int64_t n, int tanh_approx) {
    if (tanh_approx) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            dinp[i] += dout[i] * gelu_tanh_grad(inp[i]);
    } else {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            dinp[i] += dout[i] * gelu_erf_grad(inp[i]);
    }
}

void rb_quick_gelu_forward(float *out, const float *inp, int64_t n) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        out[i] = inp[i] * sigmoid(1.702f * inp[i]);
}

void rb_quick_gelu_backward(float *dinp, const float *dout, const float *inp, int64_t n) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float x = inp[i], s = sigmoid(1.702f * x);
        dinp[i] += dout[i] * (s + 1.702f * x * s * (1.0f - s));
    }
}

void rb_silu_forward(float *out, const float *inp, int64_t n) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        out[i] = inp[i] * sigmoid(inp[i]);
}

void rb_silu_backward(float *dinp, const float *dout, const float *inp, int64_t n) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float x = inp[i], s = sigmoid(x);
        dinp[i] += dout[i] * s * (1.0f + x * (1.0f - s));
    }
}

void rb_geglu_forward(float *out, const float *inp, int64_t rows, int64_t N) {
#pragma omp parallel for schedule(static) if (rows * N > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *h = inp + r * 2 * N, *g = h + N;
        float *o = out + r * N;
        for (int64_t j = 0; j < N; j++)
            o[j] = h[j] * gelu_erf(g[j]);
    }
}

void rb_geglu_backward(float *dinp, const float *dout, const float *inp, int64_t rows, int64_t N) {
#pragma omp parallel for schedule(static) if (rows * N > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *h = inp + r * 2 * N, *g = h + N, *dy = dout + r * N;
        float *dh = dinp + r * 2 * N, *dg = dh + N;
        for (int64_t j = 0; j < N; j++) {
            dh[j] += dy[j] * gelu_erf(g[j]);
            dg[j] += dy[j] * h[j] * gelu_erf_grad(g[j]);
        }
    }
}

/* ---- tensor-level ops ---- */

enum { ACT_GELU, ACT_GELU_TANH, ACT_QUICK_GELU, ACT_SILU, ACT_GEGLU };
static const char *act_name[] = {"gelu", "gelu_tanh", "quick_gelu", "silu", "geglu"};

static rb_status act_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *gx = rb_grad_of(c, e->in[0]);
    if (!gx)
        return c->status;
    float *dx = gx->data;
    const float *dy = e->out->grad->data, *x = e->saved[0]->data;
    int64_t n = rb_numel(e->in[0]);
    switch ((int)e->i[0]) {
    case ACT_GELU: rb_gelu_backward(dx, dy, x, n, 0); break;
    case ACT_GELU_TANH: rb_gelu_backward(dx, dy, x, n, 1); break;
    case ACT_QUICK_GELU: rb_quick_gelu_backward(dx, dy, x, n); break;
    case ACT_SILU: rb_silu_backward(dx, dy, x, n); break;
    case ACT_GEGLU: {
        int64_t N = e->i[1];
        rb_geglu_backward(dx, dy, x, N ? rb_numel(e->out) / N : 0, N);
        break;
    }
    }
    return RB_OK;
}

static rb_tensor *activation(rb_ctx *c, rb_tensor *x, int kind) {
    const char *name = act_name[kind];
    if (c->status != RB_OK)
        return NULL;
    if (!x)
        return rb_ctx_error(c, RB_ERR_INVALID, "%s: NULL input", name);
    int64_t shape[RB_MAX_DIMS], N = 0;
    for (int d = 0; d < x->ndim; d++)
        shape[d] = x->shape[d];
    if (kind == ACT_GEGLU) {
        if (x->ndim < 1 || x->shape[x->ndim - 1] % 2)
            return rb_ctx_error(c, RB_ERR_INVALID, "geglu: the last dim of x must be even (x has %d dims, last %lld)",
                                x->ndim, x->ndim ? (long long)x->shape[x->ndim - 1] : 0LL);
        N = shape[x->ndim - 1] /= 2;
    }
    rb_tensor *xc = rb_f32_contig(c, x, name, "x");
    rb_tensor *out = xc ? rb_ctx_tensor(c, RB_F32, x->ndim, shape) : NULL;
    if (!out)
        return NULL;
    float *y = out->data;
    const float *xd = xc->data;
    int64_t n = rb_numel(x);
    switch (kind) {
    case ACT_GELU: rb_gelu_forward(y, xd, n, 0); break;
    case ACT_GELU_TANH: rb_gelu_forward(y, xd, n, 1); break;
    case ACT_QUICK_GELU: rb_quick_gelu_forward(y, xd, n); break;
    case ACT_SILU: rb_silu_forward(y, xd, n); break;
    case ACT_GEGLU: rb_geglu_forward(y, xd, N ? rb_numel(out) / N : 0, N); break;
    }
    rb_tape_entry *e = rb_tape_record(c, name, act_backward, out, 1, &x);
    if (e) {
        e->saved[0] = xc;
        e->i[0] = kind;
        e->i[1] = N;
    }
    return c->status == RB_OK ? out : NULL;
}

rb_tensor *rb_gelu(rb_ctx *c, rb_tensor *x, int tanh_approx) {
    return activation(c, x, tanh_approx ? ACT_GELU_TANH : ACT_GELU);
}
rb_tensor *rb_quick_gelu(rb_ctx *c, rb_tensor *x) { return activation(c, x, ACT_QUICK_GELU); }
rb_tensor *rb_silu(rb_ctx *c, rb_tensor *x) { return activation(c, x, ACT_SILU); }
rb_tensor *rb_geglu(rb_ctx *c, rb_tensor *x) { return activation(c, x, ACT_GEGLU); }
