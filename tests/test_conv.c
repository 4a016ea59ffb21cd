/* rb_conv2d: forward against a naive double-precision convolution (strides, paddings, kernels 1x1 /
 * 3x3 / 4x4, odd sizes, f32/bf16/f16 weights, f32 and bf16 compute), finite-difference gradients of
 * input, weight and bias, errors for bad shapes, and no allocation after warm-up. */
#include "util.h"

#include "ops/conv.h"

static rb_tensor mk(rb_dtype dt, int ndim, const int64_t *shape, unsigned seed) {
    rb_tensor t;
    memset(&t, 0, sizeof t);
    if (rb_tensor_alloc(&t, dt, ndim, shape, "test") != RB_OK)
        return t;
    int64_t n = rb_numel(&t);
    float *tmp = malloc((size_t)(n ? n : 1) * sizeof *tmp);
    t_fill(tmp, (size_t)n, seed);
    rb_convert_from_f32(t.data, dt, tmp, (size_t)n);
    free(tmp);
    return t;
}

static float rnd(float v, int round_bf16) { return round_bf16 ? rb_bf16_to_f32(rb_f32_to_bf16(v)) : v; }

static double *ref_conv(const rb_tensor *x, const rb_tensor *w, const rb_tensor *b, int sh, int sw, int ph, int pw,
                        int64_t Ho, int64_t Wo, int round_bf16) {
    int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t O = w->shape[0], kh = w->shape[2], kw = w->shape[3];
    double *y = calloc((size_t)(N * O * Ho * Wo), sizeof *y);
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++)
            for (int64_t i = 0; i < Ho; i++)
                for (int64_t j = 0; j < Wo; j++) {
                    double s = b ? rb_tensor_get(b, o) : 0;
                    for (int64_t ci = 0; ci < C; ci++)
                        for (int64_t u = 0; u < kh; u++)
                            for (int64_t v = 0; v < kw; v++) {
                                int64_t hi = i * sh - ph + u, wi = j * sw - pw + v;
                                if (hi < 0 || hi >= H || wi < 0 || wi >= W)
                                    continue;
                                float xv = rnd((float)rb_tensor_get(x, ((n * C + ci) * H + hi) * W + wi), round_bf16);
                                float wv = rnd((float)rb_tensor_get(w, ((o * C + ci) * kh + u) * kw + v), round_bf16);
                                s += (double)xv * wv;
                            }
                    y[((n * O + o) * Ho + i) * Wo + j] = s;
                }
    return y;
}

static double rel_err(const rb_tensor *got, const double *ref, int64_t n) {
    double scale = 1, err = 0;
    for (int64_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(ref[i]));
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(rb_tensor_get(got, i) - ref[i]);
        err = d > err || d != d ? d : err;
    }
    return err / scale;
}

static const struct {
    int64_t N, C, H, W, O, kh, kw;
    int s, p;
} cases[] = {
    {1, 3, 8, 8, 4, 3, 3, 1, 1},   {2, 5, 9, 7, 6, 3, 3, 2, 1},  {1, 4, 8, 8, 3, 1, 1, 1, 0},
    {2, 3, 10, 10, 5, 4, 4, 2, 1}, {1, 2, 7, 9, 3, 3, 3, 2, 0},  {1, 32, 6, 6, 48, 3, 3, 1, 1},
    {1, 16, 8, 8, 16, 1, 1, 2, 0}, {1, 1, 1, 1, 1, 1, 1, 1, 0},
};

static void t_forward(void) {
    rb_arena ar;
    rb_ctx c;
    REQUIRE(rb_arena_init(&ar, 32 << 20, "test") == RB_OK, "arena");
    rb_ctx_init(&c, &ar);
    rb_dtype wdts[] = {RB_F32, RB_BF16, RB_F16};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++)
        for (int wi = 0; wi < 3; wi++)
            for (int mode = 0; mode < 2; mode++) {
                c.matmul_dtype = mode ? RB_BF16 : RB_F32;
                rb_tensor x = mk(RB_F32, 4, (int64_t[]){cases[ci].N, cases[ci].C, cases[ci].H, cases[ci].W}, 1 + (unsigned)ci);
                rb_tensor w = mk(wdts[wi], 4, (int64_t[]){cases[ci].O, cases[ci].C, cases[ci].kh, cases[ci].kw}, 50 + (unsigned)ci);
                rb_tensor b = mk(RB_F32, 1, (int64_t[]){cases[ci].O}, 90 + (unsigned)ci);
                rb_tensor *bb = ci % 2 ? NULL : &b;
                int s = cases[ci].s, p = cases[ci].p;
                rb_tensor *y = rb_conv2d(&c, &x, &w, bb, s, s, p, p);
                CHECK(y != NULL, "case %zu: %s", ci, rb_last_error());
                if (y) {
                    int64_t Ho = (cases[ci].H + 2 * p - cases[ci].kh) / s + 1, Wo = (cases[ci].W + 2 * p - cases[ci].kw) / s + 1;
                    CHECK(y->shape[0] == cases[ci].N && y->shape[1] == cases[ci].O && y->shape[2] == Ho && y->shape[3] == Wo,
                          "case %zu output shape", ci);
                    double *ref = ref_conv(&x, &w, bb, s, s, p, p, Ho, Wo, mode);
                    double err = rel_err(y, ref, rb_numel(y));
                    CHECK(err < 2e-6 * sqrt((double)(cases[ci].C * cases[ci].kh * cases[ci].kw)) + 1e-6,
                          "case %zu wdt %s mode %d: err %g", ci, rb_dtype_name(wdts[wi]), mode, err);
                    free(ref);
                    if (mode) {
                        ref = ref_conv(&x, &w, bb, s, s, p, p, Ho, Wo, 0);
                        err = rel_err(y, ref, rb_numel(y));
                        CHECK(err < 1e-2, "case %zu bf16 vs exact: err %g", ci, err);
                        free(ref);
                    }
                }
                rb_arena_reset(&ar, 0);
                rb_tensor_free(&x), rb_tensor_free(&w), rb_tensor_free(&b);
            }
    rb_arena_free(&ar);
}

static rb_tensor *op_conv(rb_ctx *c, rb_tensor **in, void *user) {
    const int *sp = user;
    return rb_conv2d(c, in[0], in[1], in[2], sp[0], sp[0], sp[1], sp[1]);
}

static void t_gradients(void) {
    size_t pick[] = {0, 1, 2, 3, 4};
    for (size_t k = 0; k < sizeof pick / sizeof *pick; k++) {
        size_t ci = pick[k];
        rb_tensor x = mk(RB_F32, 4, (int64_t[]){cases[ci].N, cases[ci].C, cases[ci].H, cases[ci].W}, 3 + (unsigned)ci);
        rb_tensor w = mk(RB_F32, 4, (int64_t[]){cases[ci].O, cases[ci].C, cases[ci].kh, cases[ci].kw}, 30 + (unsigned)ci);
        rb_tensor b = mk(RB_F32, 1, (int64_t[]){cases[ci].O}, 60 + (unsigned)ci);
        x.requires_grad = w.requires_grad = b.requires_grad = 1;
        if (k == 4)
            w.requires_grad = 0; /* input and bias only: the bias-alone reduction path */
        int sp[2] = {cases[ci].s, cases[ci].p};
        double err = t_gradcheck(op_conv, (rb_tensor *[]){&x, &w, &b}, 3, sp, 1e-2);
        CHECK(err < 1e-3, "case %zu gradient err %g", ci, err);
        rb_tensor_free(&x), rb_tensor_free(&w), rb_tensor_free(&b);
    }
}

static void t_bad_shapes(void) {
    rb_arena ar;
    rb_ctx c;
    REQUIRE(rb_arena_init(&ar, 1 << 20, "test") == RB_OK, "arena");
    rb_ctx_init(&c, &ar);
    rb_tensor x = mk(RB_F32, 4, (int64_t[]){1, 3, 4, 4}, 1), w = mk(RB_F32, 4, (int64_t[]){2, 4, 3, 3}, 2),
              w5 = mk(RB_F32, 4, (int64_t[]){2, 3, 5, 5}, 3), w3 = mk(RB_F32, 4, (int64_t[]){2, 3, 3, 3}, 4),
              b = mk(RB_F32, 1, (int64_t[]){3}, 5), x3 = mk(RB_F32, 3, (int64_t[]){3, 4, 4}, 6);
    rb_tensor *r[7];
    int n = 0;
    r[n++] = rb_conv2d(&c, &x, &w, NULL, 1, 1, 1, 1); /* channels 3 vs 4 */
    rb_ctx_clear(&c);
    r[n++] = rb_conv2d(&c, &x, &w5, NULL, 1, 1, 0, 0); /* kernel larger than input */
    rb_ctx_clear(&c);
    r[n++] = rb_conv2d(&c, &x, &w3, &b, 1, 1, 1, 1); /* bias [3] for O = 2 */
    rb_ctx_clear(&c);
    r[n++] = rb_conv2d(&c, &x, &w3, NULL, 0, 1, 1, 1); /* stride 0 */
    rb_ctx_clear(&c);
    r[n++] = rb_conv2d(&c, &x, &w3, NULL, 1, 1, -1, 0); /* negative padding */
    rb_ctx_clear(&c);
    r[n++] = rb_conv2d(&c, &x3, &w3, NULL, 1, 1, 1, 1); /* 3-d input */
    int bad_status = c.status != RB_OK;
    rb_ctx_clear(&c);
    for (int i = 0; i < n; i++)
        CHECK(r[i] == NULL, "bad call %d accepted", i);
    CHECK(bad_status && rb_last_error()[0], "status and message set");
    CHECK(rb_conv2d(&c, &x, &w3, NULL, 1, 1, 1, 1) != NULL, "valid call after errors: %s", rb_last_error());
    rb_tensor_free(&x), rb_tensor_free(&w), rb_tensor_free(&w5), rb_tensor_free(&w3), rb_tensor_free(&b),
        rb_tensor_free(&x3);
    rb_arena_free(&ar);
}

typedef struct {
    rb_tensor *x, *w, *w2, *b;
} conv_pair;
static rb_tensor *conv_pair_step(rb_ctx *c, void *user) {
    conv_pair *p = user;
    rb_tensor *h = rb_conv2d(c, p->x, p->w, NULL, 1, 1, 1, 1);
    rb_tensor *y = rb_conv2d(c, h, p->w2, p->b, 2, 2, 1, 1);
    p->x->grad = p->w2->grad = p->b->grad = NULL;
    return y;
}

static void t_no_alloc_after_warmup(void) {
    rb_tensor x = mk(RB_F32, 4, (int64_t[]){1, 32, 16, 16}, 1), w = mk(RB_F16, 4, (int64_t[]){32, 32, 3, 3}, 2),
              w2 = mk(RB_F32, 4, (int64_t[]){16, 32, 3, 3}, 3), b = mk(RB_F32, 1, (int64_t[]){16}, 4);
    x.requires_grad = w2.requires_grad = b.requires_grad = 1;
    conv_pair p = {&x, &w, &w2, &b};
    t_check_no_alloc_after_warmup(conv_pair_step, &p);
    rb_tensor_free(&x), rb_tensor_free(&w), rb_tensor_free(&w2), rb_tensor_free(&b);
}

int main(void) {
    rb_set_num_threads(2);
    RUN(t_forward);
    RUN(t_gradients);
    RUN(t_bad_shapes);
    RUN(t_no_alloc_after_warmup);
    return t_done();
}
