/* Resampling ops: bicubic against numbers from PyTorch and a double-precision reference, nearest 2x
 * and window mean pooling against naive loops, gradients by finite differences, bad arguments. */
#include "util.h"

static rb_arena arena;
static rb_ctx cx;

/* A fresh context over an emptied arena. */
static rb_ctx *ctx(void) { return t_fresh_ctx(&arena, &cx, 64 << 20); }

/* ---- double-precision reference for bicubic (written from the formula, not from the kernel) ---- */

static double cubic_w(double d) { /* Keys' kernel with a = -0.75 at distance d */
    const double a = -0.75;
    d = fabs(d);
    if (d <= 1)
        return ((a + 2) * d - (a + 3)) * d * d + 1;
    if (d < 2)
        return a * d * d * d - 5 * a * d * d + 8 * a * d - 4 * a;
    return 0;
}

static void ref_bicubic(double *out, const float *in, int64_t planes, int64_t Hi, int64_t Wi, int64_t Ho, int64_t Wo) {
    for (int64_t p = 0; p < planes; p++)
        for (int64_t y = 0; y < Ho; y++)
            for (int64_t x = 0; x < Wo; x++) {
                double sy = (y + 0.5) * Hi / Ho - 0.5, sx = (x + 0.5) * Wi / Wo - 0.5;
                int64_t fy = (int64_t)floor(sy), fx = (int64_t)floor(sx);
                double acc = 0;
                for (int64_t j = fy - 1; j <= fy + 2; j++)
                    for (int64_t i = fx - 1; i <= fx + 2; i++) {
                        int64_t cj = j < 0 ? 0 : j >= Hi ? Hi - 1 : j, ci = i < 0 ? 0 : i >= Wi ? Wi - 1 : i;
                        acc += cubic_w(sy - j) * cubic_w(sx - i) * in[(p * Hi + cj) * Wi + ci];
                    }
                out[(p * Ho + y) * Wo + x] = acc;
            }
}

/* Runs rb_interpolate_bicubic on x [1, planes, Hi, Wi] and checks it against the double reference. */
static rb_tensor *bicubic_checked(rb_ctx *c, float *x, int64_t planes, int64_t Hi, int64_t Wi, int64_t Ho, int64_t Wo) {
    rb_tensor xt = rb_tensor_wrap(x, RB_F32, 4, (int64_t[]){1, planes, Hi, Wi});
    rb_tensor *out = rb_interpolate_bicubic(c, &xt, Ho, Wo);
    CHECK(out != NULL, "bicubic: %s", rb_last_error());
    if (!out)
        return NULL;
    CHECK(out->shape[0] == 1 && out->shape[1] == planes && out->shape[2] == Ho && out->shape[3] == Wo, "shape");
    double *ref = malloc((size_t)(planes * Ho * Wo) * sizeof *ref);
    ref_bicubic(ref, x, planes, Hi, Wi, Ho, Wo);
    double worst = 0;
    for (int64_t k = 0; k < planes * Ho * Wo; k++)
        worst = fmax(worst, fabs(((float *)out->data)[k] - ref[k]));
    CHECK(worst < 1e-5, "%lldx%lld -> %lldx%lld: max |out - double reference| = %g", (long long)Hi, (long long)Wi,
          (long long)Ho, (long long)Wo, worst);
    free(ref);
    return out;
}

static void t_bicubic_torch_up_small(void) {
    /* x = torch.tensor([((i*7)%13 - 6)/4 for i in range(16)], dtype=torch.float32).reshape(1,1,4,4)
     * F.interpolate(x, size=(7,9), mode="bicubic", align_corners=False).flatten()   (torch 1.13.0) */
    static const float want[63] = {
        -1.73977697, -1.27240968, -0.293671161, 0.195762351, -0.549608469, -1.29497933, -0.805545747, 0.173192859,
        0.640559971, -1.55054557, -1.08317828, -0.104440287, 0.384992957, -0.360377461, -1.10574806, -0.61631465,
        0.362423509, 0.829790473, -1.24187183, -0.774504602, 0.204233259, 0.693666518, -0.0517039001, -0.797074437,
        -0.307641029, 0.6710971, 1.13846397, -0.97327745, -0.423782706, 0.729346037, 1.29734147, 0.40234381,
        -0.492653847, 0.075341627, 1.2284708, 1.77796531, -0.618257403, -0.201012835, 0.671294332, 1.11278117,
        0.458728164, -0.195324808, 0.246162012, 1.11846948, 1.53571391, -0.0969617814, -0.207121894, -0.454711854,
        -0.517732441, -0.210914791, 0.0959028155, 0.0328822359, -0.214707896, -0.324867934, 0.247649461,
        -0.24792777, -1.31391692, -1.74562204, -0.736618519, 0.272384852, -0.159320027, -1.22530985, -1.72088683};
    float x[16];
    for (int i = 0; i < 16; i++)
        x[i] = (float)(((i * 7) % 13 - 6) / 4.0);
    rb_ctx *c = ctx();
    rb_tensor *out = bicubic_checked(c, x, 1, 4, 4, 7, 9);
    REQUIRE(out != NULL, "op");
    double md;
    CHECK(t_allclose(out->data, want, 63, 2e-6f, 0, &md), "vs torch: max diff %g", md);
}

static void t_bicubic_torch_up_16_to_64(void) {
    /* b = torch.tensor([((i*37)%101 - 50)/25 for i in range(512)], dtype=torch.float32).reshape(1,2,16,16)
     * o = F.interpolate(b, size=(64,64), mode="bicubic", align_corners=False)
     * w = torch.tensor([(k%7)-3 for k in range(o.numel())], dtype=torch.float64).reshape(o.shape)
     * o.double().sum() = -47.4346923, (o.double()*w).sum() = -98.1714233, and the entries below */
    float x[512];
    for (int i = 0; i < 512; i++)
        x[i] = (float)(((i * 37) % 101 - 50) / 25.0);
    rb_ctx *c = ctx();
    rb_tensor *out = bicubic_checked(c, x, 2, 16, 16, 64, 64);
    REQUIRE(out != NULL, "op");
    const float *o = out->data;
    double sum = 0, wsum = 0;
    for (int k = 0; k < 2 * 64 * 64; k++) {
        sum += o[k];
        wsum += o[k] * (double)(k % 7 - 3);
    }
    CHECK(fabs(sum - -47.4346923) < 1e-4, "sum %.9g", sum);
    CHECK(fabs(wsum - -98.1714233) < 1e-4, "weighted sum %.9g", wsum);
    static const struct {
        int ch, y, x;
        float v;
    } at[] = {{0, 0, 0, -2.59368443f}, {0, 0, 63, 0.272883654f}, {1, 31, 17, -0.879031122f},
              {1, 63, 63, -1.5427736f}, {0, 5, 40, -0.5995785f}};
    for (int k = 0; k < 5; k++) {
        float v = o[(at[k].ch * 64 + at[k].y) * 64 + at[k].x];
        CHECK(fabsf(v - at[k].v) < 2e-6f, "o[0,%d,%d,%d] = %.9g, torch %.9g", at[k].ch, at[k].y, at[k].x, v, at[k].v);
    }
}

static void t_bicubic_torch_down(void) {
    /* c = torch.tensor([((i*5)%11 - 5)/3 for i in range(81)], dtype=torch.float32).reshape(1,1,9,9)
     * F.interpolate(c, size=(4,4), mode="bicubic", align_corners=False).flatten()   (no antialias) */
    static const float want[16] = {-0.349425465, -0.348330081, -0.467879117, -0.442545593, 0.563802063, 0.562920034,
                                   0.21821177,   0.781098664,  1.05397928,   1.37786138,   0.948893249, 0.184407547,
                                   -0.638997436, -1.79313648,  0.438896328,  0.952473998};
    float x[81];
    for (int i = 0; i < 81; i++)
        x[i] = (float)(((i * 5) % 11 - 5) / 3.0);
    rb_ctx *c = ctx();
    rb_tensor *out = bicubic_checked(c, x, 1, 9, 9, 4, 4);
    REQUIRE(out != NULL, "op");
    double md;
    CHECK(t_allclose(out->data, want, 16, 2e-6f, 0, &md), "vs torch: max diff %g", md);
}

static void t_bicubic_shapes_and_dtypes(void) {
    float x[3 * 5 * 7];
    t_fill(x, 105, 7);
    rb_ctx *c = ctx();
    CHECK(bicubic_checked(c, x, 3, 5, 7, 5, 7) != NULL, "same size");
    CHECK(bicubic_checked(c, x, 3, 5, 7, 1, 13) != NULL, "1 x 13");
    CHECK(bicubic_checked(c, x, 3, 5, 7, 11, 3) != NULL, "11 x 3");
    /* bf16 input gives the f32 result of its values; a permuted (strided) view gives the same as a copy */
    uint16_t xb[105];
    float xr[105];
    for (int i = 0; i < 105; i++) {
        xb[i] = rb_f32_to_bf16(x[i]);
        xr[i] = rb_bf16_to_f32(xb[i]);
    }
    rb_tensor tb = rb_tensor_wrap(xb, RB_BF16, 4, (int64_t[]){1, 3, 5, 7});
    rb_tensor tr = rb_tensor_wrap(xr, RB_F32, 4, (int64_t[]){1, 3, 5, 7}), tp;
    rb_tensor *ob = rb_interpolate_bicubic(c, &tb, 8, 6), *orr = rb_interpolate_bicubic(c, &tr, 8, 6);
    REQUIRE(ob && orr, "bf16: %s", rb_last_error());
    CHECK(memcmp(ob->data, orr->data, rb_nbytes(ob)) == 0, "bf16 input = f32 of its values");
    REQUIRE(rb_view_permute(&tp, &tr, (int[]){1, 0, 2, 3}) == RB_OK, "view");
    rb_tensor *op = rb_interpolate_bicubic(c, &tp, 8, 6);
    REQUIRE(op != NULL, "strided: %s", rb_last_error());
    CHECK(memcmp(op->data, orr->data, rb_nbytes(op)) == 0, "strided input");
}

typedef struct {
    int64_t a, b;
} two;

static rb_tensor *f_bicubic(rb_ctx *c, rb_tensor **in, void *u) {
    two *s = u;
    return rb_interpolate_bicubic(c, in[0], s->a, s->b);
}

static void t_bicubic_grad(void) {
    float x[2 * 3 * 5 * 6];
    t_fill(x, 180, 3);
    rb_tensor xt = rb_tensor_wrap(x, RB_F32, 4, (int64_t[]){2, 3, 5, 6});
    xt.requires_grad = 1;
    rb_tensor *in[1] = {&xt};
    two up = {9, 13}, down = {3, 2}, mixed = {11, 4};
    double e;
    CHECK((e = t_gradcheck(f_bicubic, in, 1, &up, 1e-2)) < 1e-3, "up: rel err %g", e);
    CHECK((e = t_gradcheck(f_bicubic, in, 1, &down, 1e-2)) < 1e-3, "down: rel err %g", e);
    CHECK((e = t_gradcheck(f_bicubic, in, 1, &mixed, 1e-2)) < 1e-3, "mixed: rel err %g", e);
}

/* ---- nearest 2x ---- */

static void t_nearest2x(void) {
    float x[2 * 3 * 4 * 5];
    t_fill(x, 120, 5);
    rb_ctx *c = ctx();
    rb_tensor xt = rb_tensor_wrap(x, RB_F32, 4, (int64_t[]){2, 3, 4, 5});
    rb_tensor *o = rb_upsample_nearest2x(c, &xt);
    REQUIRE(o != NULL, "op: %s", rb_last_error());
    CHECK(o->shape[2] == 8 && o->shape[3] == 10, "shape");
    int bad = 0;
    for (int p = 0; p < 6; p++)
        for (int y = 0; y < 8; y++)
            for (int xx = 0; xx < 10; xx++)
                bad += ((float *)o->data)[(p * 8 + y) * 10 + xx] != x[(p * 4 + y / 2) * 5 + xx / 2];
    CHECK(bad == 0, "%d wrong elements", bad);
    /* a strided view (H and W swapped) */
    rb_tensor v;
    REQUIRE(rb_view_permute(&v, &xt, (int[]){0, 1, 3, 2}) == RB_OK, "view");
    rb_tensor *ov = rb_upsample_nearest2x(c, &v);
    REQUIRE(ov != NULL, "strided: %s", rb_last_error());
    bad = 0;
    for (int p = 0; p < 6; p++)
        for (int y = 0; y < 10; y++)
            for (int xx = 0; xx < 8; xx++)
                bad += ((float *)ov->data)[(p * 10 + y) * 8 + xx] != x[(p * 4 + xx / 2) * 5 + y / 2];
    CHECK(bad == 0, "strided: %d wrong elements", bad);
}

static rb_tensor *f_nearest(rb_ctx *c, rb_tensor **in, void *u) { return rb_upsample_nearest2x(c, in[0]); }

static void t_nearest2x_grad(void) {
    float x[2 * 2 * 3 * 4];
    t_fill(x, 48, 9);
    rb_tensor xt = rb_tensor_wrap(x, RB_F32, 4, (int64_t[]){2, 2, 3, 4});
    xt.requires_grad = 1;
    rb_tensor *in[1] = {&xt};
    double e = t_gradcheck(f_nearest, in, 1, NULL, 1e-2);
    CHECK(e < 1e-3, "rel err %g", e);
}

/* ---- window mean pool ---- */

static void t_window_mean_pool(void) {
    float x[2 * 3 * 6 * 8];
    t_fill(x, 288, 11);
    rb_ctx *c = ctx();
    rb_tensor xt = rb_tensor_wrap(x, RB_F32, 4, (int64_t[]){2, 3, 6, 8});
    rb_tensor *o = rb_window_mean_pool(c, &xt, 3, 2);
    REQUIRE(o != NULL, "op: %s", rb_last_error());
    CHECK(o->shape[2] == 2 && o->shape[3] == 4, "shape");
    double worst = 0;
    for (int p = 0; p < 6; p++)
        for (int y = 0; y < 2; y++)
            for (int xx = 0; xx < 4; xx++) {
                double s = 0;
                for (int i = 0; i < 3; i++)
                    for (int j = 0; j < 2; j++)
                        s += x[(p * 6 + y * 3 + i) * 8 + xx * 2 + j];
                worst = fmax(worst, fabs(((float *)o->data)[(p * 2 + y) * 4 + xx] - s / 6));
            }
    CHECK(worst < 1e-6, "max diff %g", worst);
    rb_tensor *all = rb_window_mean_pool(c, &xt, 6, 8);
    REQUIRE(all != NULL, "whole image");
    double s0 = 0;
    for (int k = 0; k < 48; k++)
        s0 += x[k];
    CHECK(fabs(((float *)all->data)[0] - s0 / 48) < 1e-6, "whole-image mean");
}

static rb_tensor *f_pool(rb_ctx *c, rb_tensor **in, void *u) {
    two *s = u;
    return rb_window_mean_pool(c, in[0], (int)s->a, (int)s->b);
}

static void t_window_mean_pool_grad(void) {
    float x[2 * 2 * 4 * 6];
    t_fill(x, 96, 13);
    rb_tensor xt = rb_tensor_wrap(x, RB_F32, 4, (int64_t[]){2, 2, 4, 6});
    xt.requires_grad = 1;
    rb_tensor *in[1] = {&xt};
    two k = {2, 3};
    double e = t_gradcheck(f_pool, in, 1, &k, 1e-2);
    CHECK(e < 1e-3, "rel err %g", e);
}

/* ---- bad arguments ---- */

static void t_bad_arguments(void) {
    float x[2 * 3 * 5];
    t_fill(x, 30, 1);
    rb_tensor t3 = rb_tensor_wrap(x, RB_F32, 3, (int64_t[]){2, 3, 5});
    rb_tensor t4 = rb_tensor_wrap(x, RB_F32, 4, (int64_t[]){1, 2, 3, 5});
    int64_t ids[4] = {0};
    rb_tensor ti = rb_tensor_wrap(ids, RB_I64, 4, (int64_t[]){1, 1, 2, 2});
    rb_ctx *c = ctx();
    CHECK(!rb_upsample_nearest2x(c, NULL) && c->status == RB_ERR_INVALID && strstr(rb_last_error(), "NULL"),
          "NULL input: %s", rb_last_error());
    c = ctx();
    CHECK(!rb_upsample_nearest2x(c, &t3) && strstr(rb_last_error(), "[N, C, H, W]"), "3-d: %s", rb_last_error());
    c = ctx();
    CHECK(!rb_interpolate_bicubic(c, &t4, 0, 4) && c->status == RB_ERR_INVALID, "zero size");
    c = ctx();
    CHECK(!rb_interpolate_bicubic(c, &ti, 4, 4) && c->status == RB_ERR_UNSUPPORTED, "i64 input: %s", rb_last_error());
    c = ctx();
    CHECK(!rb_window_mean_pool(c, &t4, 2, 2) && strstr(rb_last_error(), "do not tile"), "3 %% 2: %s",
          rb_last_error());
    c = ctx();
    CHECK(!rb_window_mean_pool(c, &t4, 0, 1) && c->status == RB_ERR_INVALID, "zero window");
    /* a failed context stays failed: later ops return NULL without touching anything */
    CHECK(!rb_window_mean_pool(c, &t4, 1, 1) && c->status == RB_ERR_INVALID, "sticky status");
}

int main(void) {
    RUN(t_bicubic_torch_up_small);
    RUN(t_bicubic_torch_up_16_to_64);
    RUN(t_bicubic_torch_down);
    RUN(t_bicubic_shapes_and_dtypes);
    RUN(t_bicubic_grad);
    RUN(t_nearest2x);
    RUN(t_nearest2x_grad);
    RUN(t_window_mean_pool);
    RUN(t_window_mean_pool_grad);
    RUN(t_bad_arguments);
    rb_arena_free(&arena);
    return t_done();
}
