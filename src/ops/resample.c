/* Resampling and pooling on [N, C, H, W]: nearest 2x upsampling (SDXL UNet upsamplers), bicubic
 * interpolation as PyTorch's upsample_bicubic2d (resizing CLIP position embeddings, so it follows
 * torch's index and weight arithmetic step by step), and mean pooling over non-overlapping windows. */
#include "resample.h"

#include <math.h>
#include <string.h>

#include "ops.h"

/* ---- raw kernels ---- */

void upsample_nearest2x_forward(float *out, const float *inp, int64_t planes, int64_t H, int64_t W) {
#pragma omp parallel for schedule(static) if (planes * H * W >= 16384)
    for (int64_t r = 0; r < planes * H; r++) {
        const float *s = inp + r * W;
        float *o = out + r * 4 * W; /* output rows 2*r and 2*r + 1 of the same plane */
        for (int64_t x = 0; x < W; x++)
            o[2 * x] = o[2 * x + 1] = s[x];
        memcpy(o + 2 * W, o, (size_t)(2 * W) * sizeof *o);
    }
}

void upsample_nearest2x_backward(float *dinp, const float *dout, int64_t planes, int64_t H, int64_t W) {
#pragma omp parallel for schedule(static) if (planes * H * W >= 16384)
    for (int64_t r = 0; r < planes * H; r++) {
        const float *g = dout + r * 4 * W;
        float *d = dinp + r * W;
        for (int64_t x = 0; x < W; x++)
            d[x] += g[2 * x] + g[2 * x + 1] + g[2 * W + 2 * x] + g[2 * W + 2 * x + 1];
    }
}

/* torch's cubic convolution kernels (aten/src/ATen/native/UpSample.h), A = -0.75 */
static float cubic1(float x, float A) { return ((A + 2) * x - (A + 3)) * x * x + 1; }      /* |x| <= 1 */
static float cubic2(float x, float A) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; } /* 1 < |x| < 2 */

void bicubic_taps(int64_t *idx, float *w, int64_t in, int64_t out) {
    /* area_pixel_compute_scale without align_corners and without a given scale: in / out in f32 */
    float scale = (float)in / (float)out;
    const float A = -0.75f;
    for (int64_t o = 0; o < out; o++) {
        /* area_pixel_compute_source_index(cubic=true): not clamped at 0 */
        float src = scale * ((float)o + 0.5f) - 0.5f;
        int64_t i0 = (int64_t)floorf(src);
        float t = src - (float)i0;
        float t2 = 1.0f - t; /* get_cubic_upsample_coefficients, same roundings */
        w[4 * o + 0] = cubic2(t + 1.0f, A);
        w[4 * o + 1] = cubic1(t, A);
        w[4 * o + 2] = cubic1(t2, A);
        w[4 * o + 3] = cubic2(t2 + 1.0f, A);
        for (int j = 0; j < 4; j++) {
            int64_t k = i0 - 1 + j; /* access_bounded: clamp to the border */
            idx[4 * o + j] = k < 0 ? 0 : k > in - 1 ? in - 1 : k;
        }
    }
}

void interpolate_bicubic_forward(float *out, const float *inp, int64_t planes, int64_t Hi, int64_t Wi, int64_t Ho,
                                 int64_t Wo, const int64_t *iy, const float *wy, const int64_t *ix, const float *wx) {
#pragma omp parallel for schedule(static) if (planes * Ho * Wo >= 4096)
    for (int64_t r = 0; r < planes * Ho; r++) {
        int64_t p = r / Ho, y = r % Ho;
        const float *s = inp + p * Hi * Wi;
        float *o = out + r * Wo;
        for (int64_t x = 0; x < Wo; x++) {
            /* torch's order: sum over rows j of wy[j] * (sum over columns i of wx[i] * in) */
            float acc = 0;
            for (int j = 0; j < 4; j++) {
                const float *row = s + iy[4 * y + j] * Wi;
                const int64_t *c = ix + 4 * x;
                const float *wc = wx + 4 * x;
                float t = row[c[0]] * wc[0];
                t += row[c[1]] * wc[1];
                t += row[c[2]] * wc[2];
                t += row[c[3]] * wc[3];
                acc = j ? acc + t * wy[4 * y + j] : t * wy[4 * y + j];
            }
            o[x] = acc;
        }
    }
}

void interpolate_bicubic_backward(float *dinp, const float *dout, int64_t planes, int64_t Hi, int64_t Wi, int64_t Ho,
                                  int64_t Wo, const int64_t *iy, const float *wy, const int64_t *ix, const float *wx) {
    /* scatter: clamped taps hit the same input element several times, so one thread per plane */
#pragma omp parallel for schedule(static) if (planes * Ho * Wo >= 4096)
    for (int64_t p = 0; p < planes; p++) {
        float *d = dinp + p * Hi * Wi;
        const float *g = dout + p * Ho * Wo;
        for (int64_t y = 0; y < Ho; y++)
            for (int64_t x = 0; x < Wo; x++) {
                float v = g[y * Wo + x];
                for (int j = 0; j < 4; j++) {
                    float vy = v * wy[4 * y + j];
                    float *row = d + iy[4 * y + j] * Wi;
                    for (int i = 0; i < 4; i++)
                        row[ix[4 * x + i]] += vy * wx[4 * x + i];
                }
            }
    }
}

void window_mean_pool_forward(float *out, const float *inp, int64_t planes, int64_t H, int64_t W, int kh, int kw) {
    int64_t Ho = H / kh, Wo = W / kw;
    float div = (float)((int64_t)kh * kw);
#pragma omp parallel for schedule(static) if (planes * H * W >= 16384)
    for (int64_t r = 0; r < planes * Ho; r++) {
        int64_t p = r / Ho, y = r % Ho;
        const float *s = inp + (p * H + y * kh) * W;
        for (int64_t x = 0; x < Wo; x++) {
            float sum = 0; /* torch's avg_pool2d: f32 sum over the window, then / (kh*kw) */
            for (int i = 0; i < kh; i++)
                for (int j = 0; j < kw; j++)
                    sum += s[i * W + x * kw + j];
            out[r * Wo + x] = sum / div;
        }
    }
}

void window_mean_pool_backward(float *dinp, const float *dout, int64_t planes, int64_t H, int64_t W, int kh, int kw) {
    int64_t Ho = H / kh, Wo = W / kw;
    float div = (float)((int64_t)kh * kw);
#pragma omp parallel for schedule(static) if (planes * H * W >= 16384)
    for (int64_t r = 0; r < planes * Ho; r++) {
        int64_t p = r / Ho, y = r % Ho;
        float *d = dinp + (p * H + y * kh) * W;
        for (int64_t x = 0; x < Wo; x++) {
            float v = dout[r * Wo + x] / div;
            for (int i = 0; i < kh; i++)
                for (int j = 0; j < kw; j++)
                    d[i * W + x * kw + j] += v;
        }
    }
}

/* ---- tensor-level ops ---- */

/* Checks x is a 4-d float tensor and returns its data as contiguous f32 (a converted copy in the
 * arena when it is strided or not f32; the copy is scratch, gradients still go to x). */
static const float *nchw_f32(rb_ctx *c, const rb_tensor *x, const char *op) {
    char b[64];
    if (x->ndim != 4)
        return (const float *)rb_ctx_error(c, RB_ERR_INVALID, "%s: input must be [N, C, H, W], got %s", op,
                                           rb_shape_str(x, b, sizeof b));
    if (x->dtype != RB_F32 && x->dtype != RB_F16 && x->dtype != RB_BF16)
        return (const float *)rb_ctx_error(c, RB_ERR_UNSUPPORTED, "%s: input dtype %s (need f32, f16 or bf16)", op,
                                           rb_dtype_name(x->dtype));
    if (x->dtype == RB_F32 && rb_is_contiguous(x))
        return x->data;
    rb_tensor *t = rb_ctx_tensor(c, RB_F32, 4, x->shape);
    if (!t)
        return NULL;
    if (rb_tensor_copy(t, x) != RB_OK)
        return (const float *)rb_ctx_fail(c, RB_ERR_INVALID);
    return t->data;
}

static rb_status nearest2x_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *x = e->in[0], *g = rb_grad_of(c, x);
    if (!g)
        return c->status;
    upsample_nearest2x_backward(g->data, e->out->grad->data, x->shape[0] * x->shape[1], x->shape[2], x->shape[3]);
    return RB_OK;
}

rb_tensor *rb_upsample_nearest2x(rb_ctx *c, rb_tensor *x) {
    if (c->status != RB_OK)
        return NULL;
    if (!x)
        return rb_ctx_error(c, RB_ERR_INVALID, "upsample_nearest2x: input is NULL");
    const float *xd = nchw_f32(c, x, "upsample_nearest2x");
    if (!xd)
        return NULL;
    int64_t shape[4] = {x->shape[0], x->shape[1], 2 * x->shape[2], 2 * x->shape[3]};
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, 4, shape);
    if (!out)
        return NULL;
    upsample_nearest2x_forward(out->data, xd, x->shape[0] * x->shape[1], x->shape[2], x->shape[3]);
    rb_tape_record(c, "upsample_nearest2x", nearest2x_backward, out, 1, &x);
    return out;
}

/* saved taps: e->user -> {iy, wy, ix, wx} in the arena */
typedef struct {
    int64_t *iy, *ix;
    float *wy, *wx;
} bicubic_taps_t;

static rb_status bicubic_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *x = e->in[0], *g = rb_grad_of(c, x);
    if (!g)
        return c->status;
    const bicubic_taps_t *t = e->user;
    const rb_tensor *go = e->out->grad;
    interpolate_bicubic_backward(g->data, go->data, x->shape[0] * x->shape[1], x->shape[2], x->shape[3], go->shape[2],
                                 go->shape[3], t->iy, t->wy, t->ix, t->wx);
    return RB_OK;
}

rb_tensor *rb_interpolate_bicubic(rb_ctx *c, rb_tensor *x, int64_t out_h, int64_t out_w) {
    if (c->status != RB_OK)
        return NULL;
    if (!x)
        return rb_ctx_error(c, RB_ERR_INVALID, "interpolate_bicubic: input is NULL");
    if (out_h <= 0 || out_w <= 0 || out_h > (1 << 24) || out_w > (1 << 24))
        return rb_ctx_error(c, RB_ERR_INVALID, "interpolate_bicubic: output size %lld x %lld", (long long)out_h,
                            (long long)out_w);
    const float *xd = nchw_f32(c, x, "interpolate_bicubic");
    if (!xd)
        return NULL;
    if (x->shape[2] <= 0 || x->shape[3] <= 0)
        return rb_ctx_error(c, RB_ERR_INVALID, "interpolate_bicubic: empty input image %lld x %lld",
                            (long long)x->shape[2], (long long)x->shape[3]);
    bicubic_taps_t *t = rb_arena_alloc(c->arena, sizeof *t);
    if (!t || !(t->iy = rb_arena_alloc(c->arena, (size_t)out_h * 4 * sizeof *t->iy)) ||
        !(t->wy = rb_arena_alloc(c->arena, (size_t)out_h * 4 * sizeof *t->wy)) ||
        !(t->ix = rb_arena_alloc(c->arena, (size_t)out_w * 4 * sizeof *t->ix)) ||
        !(t->wx = rb_arena_alloc(c->arena, (size_t)out_w * 4 * sizeof *t->wx)))
        return rb_ctx_fail(c, RB_ERR_OOM);
    bicubic_taps(t->iy, t->wy, x->shape[2], out_h);
    bicubic_taps(t->ix, t->wx, x->shape[3], out_w);
    int64_t shape[4] = {x->shape[0], x->shape[1], out_h, out_w};
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, 4, shape);
    if (!out)
        return NULL;
    interpolate_bicubic_forward(out->data, xd, x->shape[0] * x->shape[1], x->shape[2], x->shape[3], out_h, out_w,
                                t->iy, t->wy, t->ix, t->wx);
    rb_tape_entry *e = rb_tape_record(c, "interpolate_bicubic", bicubic_backward, out, 1, &x);
    if (e)
        e->user = t;
    return out;
}

/* e->i[0] = kh, e->i[1] = kw */
static rb_status pool_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *x = e->in[0], *g = rb_grad_of(c, x);
    if (!g)
        return c->status;
    window_mean_pool_backward(g->data, e->out->grad->data, x->shape[0] * x->shape[1], x->shape[2], x->shape[3],
                              (int)e->i[0], (int)e->i[1]);
    return RB_OK;
}

rb_tensor *rb_window_mean_pool(rb_ctx *c, rb_tensor *x, int kh, int kw) {
    if (c->status != RB_OK)
        return NULL;
    if (!x)
        return rb_ctx_error(c, RB_ERR_INVALID, "window_mean_pool: input is NULL");
    char b[64];
    if (x->ndim != 4)
        return rb_ctx_error(c, RB_ERR_INVALID, "window_mean_pool: input must be [N, C, H, W], got %s",
                            rb_shape_str(x, b, sizeof b));
    if (kh <= 0 || kw <= 0 || x->shape[2] % kh || x->shape[3] % kw)
        return rb_ctx_error(c, RB_ERR_INVALID, "window_mean_pool: %d x %d windows do not tile a %lld x %lld image",
                            kh, kw, (long long)x->shape[2], (long long)x->shape[3]);
    const float *xd = nchw_f32(c, x, "window_mean_pool");
    if (!xd)
        return NULL;
    int64_t shape[4] = {x->shape[0], x->shape[1], x->shape[2] / kh, x->shape[3] / kw};
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, 4, shape);
    if (!out)
        return NULL;
    window_mean_pool_forward(out->data, xd, x->shape[0] * x->shape[1], x->shape[2], x->shape[3], kh, kw);
    rb_tape_entry *e = rb_tape_record(c, "window_mean_pool", pool_backward, out, 1, &x);
    if (e) {
        e->i[0] = kh;
        e->i[1] = kw;
    }
    return out;
}
