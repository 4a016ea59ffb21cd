/* Input gradients in the compute dtype (rb_ctx.matmul_dtype): linear's dX = dY W and conv2d's backward
 * data run as bf16 products with f32 accumulation when matmul_dtype is RB_BF16 (as torch autocast runs
 * them), f32 otherwise; weight gradients stay f32 in both modes.
 *
 * Checks, for frozen bf16 and f32 weights (the SDXL UNet's and a LoRA's) and for 1x1 / 3x3 / strided
 * convolutions:
 * - bf16 mode equals a double-precision reference computed from bf16-rounded dY and W to 1e-5 of the
 *   reference's scale (only the f32 accumulation differs): the products really are bf16;
 * - f32 mode equals the unrounded double reference to 1e-5 (f32 stays exact);
 * - bf16 vs f32: max |dX_bf16 - dX_f32| / max |dX_f32| <= TOL_BF16 = 8u (u = 2^-9, bf16's unit
 *   roundoff: each rounded input is off by <= u relative; the max over ~10^4 outputs of sums of such
 *   errors measured 0.6-1.2u here), and > 0 (the switch is not a no-op);
 * - the weight gradient of a trainable f32 weight in bf16 mode equals the f32 double reference to 1e-5. */
#include "util.h"

#include "core/dtype.h"
#include "ops/ops.h"

#define BF16_U (1.0 / 512)
#define TOL_BF16 (8 * BF16_U)

static float rnd16(float v) { return rb_bf16_to_f32(rb_f32_to_bf16(v)); }

static double max_abs(const double *r, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        m = fmax(m, fabs(r[i]));
    return m;
}

/* max |got - ref| / max |ref| */
static double rel(const float *got, const double *ref, int64_t n) {
    double e = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(got[i] - ref[i]);
        e = d > e || d != d ? d : e;
    }
    return e / fmax(max_abs(ref, n), 1e-30);
}

static double rel_f(const float *got, const float *want, int64_t n) {
    double e = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        e = fmax(e, fabs((double)got[i] - want[i]));
        m = fmax(m, fabs((double)want[i]));
    }
    return e / fmax(m, 1e-30);
}

/* gradients of x (and w when trainable) for the seed dy, in compute dtype cdt */
typedef struct {
    float *dx, *dw;
} grads;

static grads run_linear(rb_dtype cdt, const rb_tensor *x0, const rb_tensor *w0, const rb_tensor *dy, int train_w) {
    grads g = {0};
    rb_arena ar;
    rb_ctx c;
    t_tape_env te;
    if (rb_arena_init(&ar, 64 << 20, "act") != RB_OK)
        return g;
    rb_ctx_init(&c, &ar);
    c.matmul_dtype = cdt;
    if (!t_tape_on(&te, &c)) {
        rb_arena_free(&ar);
        return g;
    }
    rb_tensor x = *x0, w = *w0;
    x.requires_grad = 1, x.grad = NULL;
    w.requires_grad = train_w, w.grad = NULL;
    rb_tensor *y = rb_linear(&c, &x, &w, NULL);
    if (y && rb_backward_with(&c, y, dy) == RB_OK) {
        int64_t nx = rb_numel(&x), nw = rb_numel(&w);
        g.dx = malloc((size_t)nx * sizeof(float));
        memcpy(g.dx, x.grad->data, (size_t)nx * sizeof(float));
        if (train_w) {
            g.dw = malloc((size_t)nw * sizeof(float));
            memcpy(g.dw, w.grad->data, (size_t)nw * sizeof(float));
        }
    } else {
        CHECK(0, "linear backward: %s", rb_last_error());
    }
    t_tape_off(&te, &c);
    rb_arena_free(&ar);
    return g;
}

/* linear y [M, N] = x [M, K] w [N, K]^T with weight dtype wdt */
static void linear_case(int64_t M, int64_t K, int64_t N, rb_dtype wdt, int train_w) {
    rb_arena ar;
    REQUIRE(rb_arena_init(&ar, 16 << 20, "data") == RB_OK, "arena");
    rb_tensor *x = t_rand_tensor(&ar, 2, (int64_t[]){M, K}, 11);
    rb_tensor *wf = t_rand_tensor(&ar, 2, (int64_t[]){N, K}, 12);
    rb_tensor *dy = t_rand_tensor(&ar, 2, (int64_t[]){M, N}, 13);
    rb_tensor *w = rb_arena_tensor(&ar, wdt, 2, (int64_t[]){N, K});
    rb_convert_from_f32(w->data, wdt, wf->data, (size_t)(N * K));
    double *ref = calloc((size_t)(M * K), sizeof *ref), *ref16 = calloc((size_t)(M * K), sizeof *ref16);
    double *refw = calloc((size_t)(N * K), sizeof *refw);
    const float *dyp = dy->data, *xp = x->data;
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k++) {
            double s = 0, s16 = 0;
            for (int64_t n = 0; n < N; n++) {
                float wv = (float)rb_tensor_get(w, n * K + k), dv = dyp[m * N + n];
                s += (double)dv * wv;
                s16 += (double)rnd16(dv) * rnd16(wv);
            }
            ref[m * K + k] = s, ref16[m * K + k] = s16;
        }
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            double s = 0;
            for (int64_t m = 0; m < M; m++)
                s += (double)dyp[m * N + n] * xp[m * K + k];
            refw[n * K + k] = s;
        }
    grads g32 = run_linear(RB_F32, x, w, dy, train_w), g16 = run_linear(RB_BF16, x, w, dy, train_w);
    if (g32.dx && g16.dx) {
        double e32 = rel(g32.dx, ref, M * K), e16 = rel(g16.dx, ref16, M * K), d = rel_f(g16.dx, g32.dx, M * K);
        const char *wn = rb_dtype_name(wdt);
        CHECK(e32 <= 1e-5, "linear %s f32 dX vs double: %g", wn, e32);
        CHECK(e16 <= 1e-5, "linear %s bf16 dX vs double of bf16-rounded inputs: %g", wn, e16);
        CHECK(d > 0 && d <= TOL_BF16, "linear %s dX bf16 vs f32: %g (tol %g)", wn, d, TOL_BF16);
        if (getenv("VERBOSE"))
            printf("  linear [%lld, %lld] x [%lld, %lld] %s: dX bf16 vs f32 %.3g (%.2fu)\n", (long long)M, (long long)K,
                   (long long)N, (long long)K, wn, d, d / BF16_U);
        if (train_w) {
            double ew32 = rel(g32.dw, refw, N * K), ew16 = rel(g16.dw, refw, N * K);
            CHECK(ew32 <= 1e-5 && ew16 <= 1e-5, "linear dW stays f32: %g (f32 mode), %g (bf16 mode)", ew32, ew16);
        }
    }
    free(g32.dx), free(g32.dw), free(g16.dx), free(g16.dw);
    free(ref), free(ref16), free(refw);
    rb_arena_free(&ar);
}

static void t_linear_frozen_bf16(void) { linear_case(96, 320, 640, RB_BF16, 0); }
static void t_linear_frozen_f32(void) { linear_case(64, 640, 320, RB_F32, 0); }
static void t_linear_trainable_f32(void) { linear_case(77, 48, 4, RB_F32, 1); }

static float *run_conv(rb_dtype cdt, const rb_tensor *x0, const rb_tensor *w0, const rb_tensor *dy, int stride,
                       int pad) {
    rb_arena ar;
    rb_ctx c;
    t_tape_env te;
    float *dx = NULL;
    if (rb_arena_init(&ar, 64 << 20, "act") != RB_OK)
        return NULL;
    rb_ctx_init(&c, &ar);
    c.matmul_dtype = cdt;
    if (t_tape_on(&te, &c)) {
        rb_tensor x = *x0, w = *w0;
        x.requires_grad = 1, x.grad = NULL;
        w.requires_grad = 0, w.grad = NULL;
        rb_tensor *y = rb_conv2d(&c, &x, &w, NULL, stride, stride, pad, pad);
        if (y && rb_backward_with(&c, y, dy) == RB_OK) {
            dx = malloc(rb_nbytes(x.grad));
            memcpy(dx, x.grad->data, rb_nbytes(x.grad));
        } else {
            CHECK(0, "conv backward: %s", rb_last_error());
        }
        t_tape_off(&te, &c);
    }
    rb_arena_free(&ar);
    return dx;
}

/* conv of x [1, C, H, W] with a bf16 weight [O, C, k, k] */
static void conv_case(int64_t C, int64_t O, int64_t H, int k, int stride, int pad) {
    rb_arena ar;
    REQUIRE(rb_arena_init(&ar, 16 << 20, "data") == RB_OK, "arena");
    int64_t Ho = (H + 2 * pad - k) / stride + 1;
    rb_tensor *x = t_rand_tensor(&ar, 4, (int64_t[]){1, C, H, H}, 21);
    rb_tensor *wf = t_rand_tensor(&ar, 4, (int64_t[]){O, C, k, k}, 22);
    rb_tensor *dy = t_rand_tensor(&ar, 4, (int64_t[]){1, O, Ho, Ho}, 23);
    rb_tensor *w = rb_arena_tensor(&ar, RB_BF16, 4, (int64_t[]){O, C, k, k});
    rb_convert_from_f32(w->data, RB_BF16, wf->data, (size_t)rb_numel(wf));
    int64_t nx = C * H * H;
    double *ref = calloc((size_t)nx, sizeof *ref), *ref16 = calloc((size_t)nx, sizeof *ref16);
    const float *dyp = dy->data;
    /* dx[c, iy, ix] = sum over o, ky, kx with iy = oy*s - p + ky of dy[o, oy, ox] w[o, c, ky, kx] */
    for (int64_t o = 0; o < O; o++)
        for (int64_t oy = 0; oy < Ho; oy++)
            for (int64_t ox = 0; ox < Ho; ox++) {
                float dv = dyp[(o * Ho + oy) * Ho + ox];
                for (int64_t c = 0; c < C; c++)
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            int64_t iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                            if (iy < 0 || iy >= H || ix < 0 || ix >= H)
                                continue;
                            float wv = (float)rb_tensor_get(w, ((o * C + c) * k + ky) * k + kx);
                            ref[(c * H + iy) * H + ix] += (double)dv * wv;
                            ref16[(c * H + iy) * H + ix] += (double)rnd16(dv) * rnd16(wv);
                        }
            }
    float *d32 = run_conv(RB_F32, x, w, dy, stride, pad), *d16 = run_conv(RB_BF16, x, w, dy, stride, pad);
    if (d32 && d16) {
        double e32 = rel(d32, ref, nx), e16 = rel(d16, ref16, nx), d = rel_f(d16, d32, nx);
        CHECK(e32 <= 1e-5, "conv %dx%d/%d f32 dX vs double: %g", k, k, stride, e32);
        CHECK(e16 <= 1e-5, "conv %dx%d/%d bf16 dX vs double of bf16-rounded inputs: %g", k, k, stride, e16);
        CHECK(d > 0 && d <= TOL_BF16, "conv %dx%d/%d dX bf16 vs f32: %g (tol %g)", k, k, stride, d, TOL_BF16);
        if (getenv("VERBOSE"))
            printf("  conv %lld->%lld %dx%d stride %d: dX bf16 vs f32 %.3g (%.2fu)\n", (long long)C, (long long)O, k, k,
                   stride, d, d / BF16_U);
    }
    free(d32), free(d16), free(ref), free(ref16);
    rb_arena_free(&ar);
}

static void t_conv3x3(void) { conv_case(32, 64, 16, 3, 1, 1); }
static void t_conv3x3_stride2(void) { conv_case(64, 32, 16, 3, 2, 1); }
static void t_conv1x1(void) { conv_case(96, 64, 12, 1, 1, 0); }

int main(void) {
    RUN(t_linear_frozen_bf16);
    RUN(t_linear_frozen_f32);
    RUN(t_linear_trainable_f32);
    RUN(t_conv3x3);
    RUN(t_conv3x3_stride2);
    RUN(t_conv1x1);
    return t_done();
}
