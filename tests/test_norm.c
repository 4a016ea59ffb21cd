/* Group norm, layer norm, softmax: PyTorch values, naive double references (including an
 * SDXL-sized group with a large mean), finite-difference gradients, argument errors. */
#include "util.h"

static rb_arena g_arena;

/* the inputs the PyTorch reference used: f(n, k)[i] = ((i * k) % 101) / 50 - 1 in float32 */
static rb_tensor *seq(int nd, const int64_t *shape, int k) {
    rb_tensor *t = rb_arena_tensor(&g_arena, RB_F32, nd, shape);
    for (int64_t i = 0; i < rb_numel(t); i++)
        ((float *)t->data)[i] = (float)((i * k) % 101) / 50.0f - 1.0f;
    return t;
}
static rb_tensor *vec(int64_t n, float a, float b) { /* a + b i */
    rb_tensor *t = rb_arena_tensor(&g_arena, RB_F32, 1, &n);
    for (int64_t i = 0; i < n; i++)
        ((float *)t->data)[i] = a + b * (float)i;
    return t;
}
static rb_tensor *rnd(int nd, const int64_t *shape, unsigned seed) { return t_rand_tensor(&g_arena, nd, shape, seed); }

/* torch 1.13:
 *   def f(n, k): return torch.tensor([(i*k) % 101 for i in range(n)], dtype=torch.float32) / 50 - 1
 *   x = f(48, 37).reshape(2,4,3,2); w = 0.5 + 0.25*torch.arange(4.); b = 0.1*torch.arange(4.) - 0.2
 *   y = F.group_norm(x, 2, w, b, 1e-5); (y * f(48, 13).reshape(y.shape)).sum().backward() */
static void t_group_norm_torch(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    t_tape_env te;
    REQUIRE(t_tape_on(&te, &c), "tape");
    size_t mark = rb_arena_mark(&g_arena);
    rb_tensor *x = seq(4, (int64_t[]){2, 4, 3, 2}, 37), *w = vec(4, 0.5f, 0.25f), *b = vec(4, -0.2f, 0.1f);
    rb_tensor *r = seq(4, (int64_t[]){2, 4, 3, 2}, 13);
    x->requires_grad = w->requires_grad = b->requires_grad = 1;
    rb_tensor *y = rb_group_norm(&c, x, 2, w, b, 1e-5f);
    REQUIRE(y, "group_norm: %s", rb_last_error());
    REQUIRE(rb_backward_with(&c, y, r) == RB_OK, "backward: %s", rb_last_error());
    const int yi[4] = {0, 7, 25, 47};
    const double ty[4] = {-0.910161197, 0.227923363, -0.898810387, -0.930853784}, tdx[2] = {-0.626492202, 0.863008797};
    const double tdw[4] = {1.71848142, -0.520846784, 0.900341213, 0.338056892};
    const double tdb[4] = {-3.12000012, -0.560000062, -0.0200000405, 2.53999996};
    for (int i = 0; i < 4; i++)
        CHECK(t_close_to(((float *)y->data)[yi[i]], ty[i], 1e-6), "y[%d] = %.9g, torch %.9g", yi[i],
              ((float *)y->data)[yi[i]], ty[i]);
    CHECK(t_close_to(((float *)x->grad->data)[0], tdx[0], 1e-5) &&
              t_close_to(((float *)x->grad->data)[30], tdx[1], 1e-5),
          "dx %.9g %.9g", ((float *)x->grad->data)[0], ((float *)x->grad->data)[30]);
    for (int i = 0; i < 4; i++) {
        CHECK(t_close_to(((float *)w->grad->data)[i], tdw[i], 1e-5), "dw[%d] = %.9g", i, ((float *)w->grad->data)[i]);
        CHECK(t_close_to(((float *)b->grad->data)[i], tdb[i], 1e-5), "db[%d] = %.9g", i, ((float *)b->grad->data)[i]);
    }
    t_tape_off(&te, &c);
    rb_arena_reset(&g_arena, mark);
}

/* naive double group norm of x [N, C, S] */
static double gn_err(const rb_tensor *x, const rb_tensor *y, int G, const float *w, const float *b, double eps) {
    int64_t N = x->shape[0], C = x->shape[1], S = rb_numel(x) / (N * C), m = C / G * S;
    const float *xd = x->data, *yd = y->data;
    double worst = 0;
    for (int64_t ng = 0; ng < N * G; ng++) {
        double mu = 0, var = 0;
        for (int64_t i = 0; i < m; i++)
            mu += xd[ng * m + i];
        mu /= (double)m;
        for (int64_t i = 0; i < m; i++)
            var += (xd[ng * m + i] - mu) * (xd[ng * m + i] - mu);
        var /= (double)m;
        for (int64_t i = 0; i < m; i++) {
            int64_t ch = (ng % G) * (C / G) + i / S;
            double ref = (xd[ng * m + i] - mu) / sqrt(var + eps) * (w ? w[ch] : 1) + (b ? b[ch] : 0);
            worst = fmax(worst, fabs(yd[ng * m + i] - ref));
        }
    }
    return worst;
}

/* One SDXL-sized group (20 channels x 128 x 128 = 327680 values) whose mean (100) is 17000 times its
 * spread: single-pass float statistics would be off by ~1e-2; we must stay at f32 rounding. */
static void t_group_norm_accuracy(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    size_t mark = rb_arena_mark(&g_arena);
    rb_tensor *x = rnd(4, (int64_t[]){1, 40, 128, 128}, 21);
    float *xd = x->data;
    for (int64_t i = 0; i < rb_numel(x); i++)
        xd[i] = 100.0f + 0.01f * xd[i] + (i >= rb_numel(x) / 2 ? -150.0f : 0.0f);
    rb_tensor *w = vec(40, 0.5f, 0.05f), *b = vec(40, -1.0f, 0.05f);
    rb_tensor *y = rb_group_norm(&c, x, 2, w, b, 1e-6f);
    REQUIRE(y, "group_norm: %s", rb_last_error());
    double err = gn_err(x, y, 2, w->data, b->data, 1e-6);
    CHECK(err < 5e-6, "max error %g vs double reference (outputs ~2.5)", err);
    rb_arena_reset(&g_arena, mark);
}

typedef struct {
    int groups;
    float eps;
} gn_user;
static rb_tensor *gn_fn(rb_ctx *c, rb_tensor **in, void *user) {
    gn_user *u = user;
    return rb_group_norm(c, in[0], u->groups, in[1], in[2], u->eps);
}
static rb_tensor *ln_fn(rb_ctx *c, rb_tensor **in, void *user) {
    return rb_layer_norm(c, in[0], in[1], in[2], *(float *)user);
}
static rb_tensor *softmax_fn(rb_ctx *c, rb_tensor **in, void *user) { return rb_softmax(c, in[0]); }

static void t_group_norm_shapes_and_grad(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    size_t mark = rb_arena_mark(&g_arena);
    /* [N, C, L], no affine; [N, C] (S = 1); [N, C, H, W] with affine; large eps */
    rb_tensor *x3 = rnd(3, (int64_t[]){2, 6, 5}, 1), *x2 = rnd(2, (int64_t[]){3, 8}, 2);
    rb_tensor *x4 = rnd(4, (int64_t[]){2, 4, 3, 3}, 3), *w = rnd(1, (int64_t[]){4}, 4), *b = rnd(1, (int64_t[]){4}, 5);
    rb_tensor *y3 = rb_group_norm(&c, x3, 3, NULL, NULL, 1e-5f), *y2 = rb_group_norm(&c, x2, 4, NULL, NULL, 1e-5f);
    rb_tensor *y4 = rb_group_norm(&c, x4, 2, w, b, 0.5f);
    REQUIRE(y3 && y2 && y4, "group_norm: %s", rb_last_error());
    CHECK(gn_err(x3, y3, 3, NULL, NULL, 1e-5) < 2e-6, "[2,6,5] G=3");
    CHECK(gn_err(x2, y2, 4, NULL, NULL, 1e-5) < 2e-6, "[3,8] G=4");
    CHECK(gn_err(x4, y4, 2, w->data, b->data, 0.5) < 2e-6, "[2,4,3,3] G=2 eps 0.5");
    /* gradients: all three inputs, then x alone */
    x4->requires_grad = w->requires_grad = b->requires_grad = 1;
    gn_user u = {2, 1e-5f};
    double err = t_gradcheck(gn_fn, (rb_tensor *[]){x4, w, b}, 3, &u, 1e-3);
    CHECK(err < 5e-3, "group_norm gradcheck (x, w, b) %g", err);
    x3->requires_grad = 1;
    gn_user u3 = {3, 1e-5f};
    err = t_gradcheck(gn_fn, (rb_tensor *[]){x3, NULL, NULL}, 3, &u3, 1e-3);
    CHECK(err < 5e-3, "group_norm gradcheck (x, no affine) %g", err);
    /* only the weight wants a gradient */
    x4->requires_grad = b->requires_grad = 0;
    err = t_gradcheck(gn_fn, (rb_tensor *[]){x4, w, b}, 3, &u, 1e-3);
    CHECK(err < 5e-3, "group_norm gradcheck (w only) %g", err);
    rb_arena_reset(&g_arena, mark);
}

/* torch: x = f(15, 37).reshape(3,5); w = 0.5 + 0.25*torch.arange(5.); b = 0.1*torch.arange(5.) - 0.2
 *        y = F.layer_norm(x, (5,), w, b, 1e-5); (y * f(15, 13).reshape(3,5)).sum().backward() */
static void t_layer_norm(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    t_tape_env te;
    REQUIRE(t_tape_on(&te, &c), "tape");
    size_t mark = rb_arena_mark(&g_arena);
    rb_tensor *x = seq(2, (int64_t[]){3, 5}, 37), *w = vec(5, 0.5f, 0.25f), *b = vec(5, -0.2f, 0.1f);
    rb_tensor *r = seq(2, (int64_t[]){3, 5}, 13);
    x->requires_grad = w->requires_grad = b->requires_grad = 1;
    rb_tensor *y = rb_layer_norm(&c, x, w, b, 1e-5f);
    REQUIRE(y && rb_backward_with(&c, y, r) == RB_OK, "layer_norm: %s", rb_last_error());
    const float *yd = y->data, *gx = x->grad->data, *gw = w->grad->data, *gb = b->grad->data;
    CHECK(t_close_to(yd[0], -0.834136069, 1e-6) && t_close_to(yd[14], -1.19802785, 1e-6), "y %.9g %.9g", yd[0], yd[14]);
    CHECK(t_close_to(gx[0], -0.232229292, 1e-5) && t_close_to(gx[14], 1.10055792, 1e-5), "dx %.9g %.9g", gx[0], gx[14]);
    const double tdw[5] = {1.15642989, -0.605853498, -0.731974244, -0.544803917, 0.0761529878};
    const double tdb[5] = {-1.12000012, -0.340000093, 0.440000057, -0.800000072, -0.0200000405};
    for (int i = 0; i < 5; i++)
        CHECK(t_close_to(gw[i], tdw[i], 1e-5) && t_close_to(gb[i], tdb[i], 1e-5), "dw/db[%d] %.9g %.9g", i, gw[i],
              gb[i]);
    t_tape_off(&te, &c);
    /* naive double reference on [4, 3, 70] (a large mean offset too), parallel path */
    rb_tensor *z = rnd(3, (int64_t[]){4, 3, 70}, 9), *zw = rnd(1, (int64_t[]){70}, 10), *zb = rnd(1, (int64_t[]){70}, 11);
    for (int64_t i = 0; i < rb_numel(z); i++)
        ((float *)z->data)[i] += 30.0f;
    rb_tensor *o = rb_layer_norm(&c, z, zw, zb, 1e-5f);
    REQUIRE(o, "layer_norm");
    double worst = 0;
    for (int row = 0; row < 12; row++) {
        const float *zr = (float *)z->data + row * 70;
        double mu = 0, var = 0;
        for (int j = 0; j < 70; j++)
            mu += zr[j] / 70.0;
        for (int j = 0; j < 70; j++)
            var += (zr[j] - mu) * (zr[j] - mu) / 70.0;
        for (int j = 0; j < 70; j++) {
            double ref = (zr[j] - mu) / sqrt(var + 1e-5) * ((float *)zw->data)[j] + ((float *)zb->data)[j];
            worst = fmax(worst, fabs(((float *)o->data)[row * 70 + j] - ref));
        }
    }
    CHECK(worst < 2e-6, "layer_norm vs double %g", worst);
    /* gradients with and without affine */
    rb_tensor *g = rnd(3, (int64_t[]){2, 3, 6}, 12), *gw2 = rnd(1, (int64_t[]){6}, 13), *gb2 = rnd(1, (int64_t[]){6}, 14);
    g->requires_grad = gw2->requires_grad = gb2->requires_grad = 1;
    float eps = 1e-5f;
    double err = t_gradcheck(ln_fn, (rb_tensor *[]){g, gw2, gb2}, 3, &eps, 1e-3);
    CHECK(err < 5e-3, "layer_norm gradcheck %g", err);
    err = t_gradcheck(ln_fn, (rb_tensor *[]){g, NULL, NULL}, 3, &eps, 1e-3);
    CHECK(err < 5e-3, "layer_norm gradcheck (no affine) %g", err);
    /* 40 rows (more than the 32 weight-gradient parts) */
    rb_tensor *h = rnd(2, (int64_t[]){40, 4}, 15), *hw = rnd(1, (int64_t[]){4}, 16), *hb = rnd(1, (int64_t[]){4}, 17);
    h->requires_grad = hw->requires_grad = hb->requires_grad = 1;
    err = t_gradcheck(ln_fn, (rb_tensor *[]){h, hw, hb}, 3, &eps, 1e-3);
    CHECK(err < 5e-3, "layer_norm gradcheck 40 rows %g", err);
    rb_arena_reset(&g_arena, mark);
}

static void t_softmax(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    size_t mark = rb_arena_mark(&g_arena);
    /* torch: F.softmax(torch.tensor([[1000., 1001., 1002., 1003.], [-1e4, 0., 1e4, 9999.]]), -1) */
    rb_tensor *x = rb_arena_tensor(&g_arena, RB_F32, 2, (int64_t[]){2, 4});
    memcpy(x->data, (float[]){1000, 1001, 1002, 1003, -1e4f, 0, 1e4f, 9999}, 32);
    const double ty[8] = {0.0320586041, 0.0871443227, 0.236882836, 0.643914282, 0, 0, 0.731058598, 0.268941432};
    rb_tensor *y = rb_softmax(&c, x);
    REQUIRE(y, "softmax: %s", rb_last_error());
    for (int i = 0; i < 8; i++)
        CHECK(fabs(((float *)y->data)[i] - ty[i]) < 1e-7, "softmax[%d] = %.9g, torch %.9g", i, ((float *)y->data)[i],
              ty[i]);
    /* naive double on [3, 5, 33] */
    rb_tensor *z = rnd(3, (int64_t[]){3, 5, 33}, 3);
    for (int64_t i = 0; i < rb_numel(z); i++)
        ((float *)z->data)[i] *= 20;
    rb_tensor *o = rb_softmax(&c, z);
    REQUIRE(o, "softmax");
    double worst = 0;
    for (int r = 0; r < 15; r++) {
        const float *zr = (float *)z->data + r * 33;
        double s = 0;
        for (int j = 0; j < 33; j++)
            s += exp(zr[j]);
        for (int j = 0; j < 33; j++)
            worst = fmax(worst, fabs(((float *)o->data)[r * 33 + j] - exp(zr[j]) / s));
    }
    CHECK(worst < 1e-7, "softmax vs double %g", worst);
    rb_tensor *g = rnd(2, (int64_t[]){3, 7}, 4);
    g->requires_grad = 1;
    double err = t_gradcheck(softmax_fn, (rb_tensor *[]){g}, 1, NULL, 1e-3);
    CHECK(err < 2e-3, "softmax gradcheck %g", err);
    rb_arena_reset(&g_arena, mark);
}

static void t_errors(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    size_t mark = rb_arena_mark(&g_arena);
    rb_tensor *x = rnd(3, (int64_t[]){2, 6, 4}, 1), *w5 = rnd(1, (int64_t[]){5}, 2), *w6 = rnd(1, (int64_t[]){6}, 3);
    CHECK(!rb_group_norm(&c, x, 4, NULL, NULL, 1e-5f) && strstr(rb_last_error(), "groups"), "6 channels, 4 groups: %s",
          rb_last_error());
    rb_ctx_clear(&c);
    CHECK(!rb_group_norm(&c, x, 0, NULL, NULL, 1e-5f), "0 groups");
    rb_ctx_clear(&c);
    CHECK(!rb_group_norm(&c, x, 3, w5, NULL, 1e-5f) && strstr(rb_last_error(), "weight"), "weight [5] for C=6: %s",
          rb_last_error());
    rb_ctx_clear(&c);
    CHECK(!rb_group_norm(&c, w6, 3, NULL, NULL, 1e-5f) && c.status == RB_ERR_INVALID, "1-d input");
    rb_ctx_clear(&c);
    CHECK(!rb_layer_norm(&c, x, w6, NULL, 1e-5f) && strstr(rb_last_error(), "layer_norm"), "weight [6] for C=4: %s",
          rb_last_error());
    rb_ctx_clear(&c);
    CHECK(!rb_layer_norm(&c, x, NULL, w5, 1e-5f) && strstr(rb_last_error(), "bias"), "bias [5] for C=4");
    rb_ctx_clear(&c);
    CHECK(!rb_softmax(&c, NULL) && c.status == RB_ERR_INVALID, "NULL input");
    CHECK(!rb_layer_norm(&c, x, NULL, NULL, 1e-5f), "sticky status");
    rb_arena_reset(&g_arena, mark);
}

int main(void) {
    if (rb_arena_init(&g_arena, 64 << 20, "test arena") != RB_OK)
        return 1;
    RUN(t_group_norm_torch);
    RUN(t_group_norm_accuracy);
    RUN(t_group_norm_shapes_and_grad);
    RUN(t_layer_norm);
    RUN(t_softmax);
    RUN(t_errors);
    rb_arena_free(&g_arena);
    return t_done();
}
