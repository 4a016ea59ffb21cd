/* l2_normalize, cosine_similarity, mse, cross_entropy: PyTorch values (including the eps regimes),
 * naive double references, finite-difference gradients, argument errors. */
#include "util.h"

static rb_arena g_arena;

static rb_tensor *from(int nd, const int64_t *shape, const float *v) {
    rb_tensor *t = rb_arena_tensor(&g_arena, RB_F32, nd, shape);
    memcpy(t->data, v, (size_t)rb_numel(t) * sizeof(float));
    return t;
}
/* f(n, k)[i] = ((i * k) % 101) / 50 - 1 in float32, the PyTorch script's inputs */
static rb_tensor *seq(int nd, const int64_t *shape, int k, float mul) {
    rb_tensor *t = rb_arena_tensor(&g_arena, RB_F32, nd, shape);
    for (int64_t i = 0; i < rb_numel(t); i++)
        ((float *)t->data)[i] = ((float)((i * k) % 101) / 50.0f - 1.0f) * mul;
    return t;
}
static rb_tensor *rnd(int nd, const int64_t *shape, unsigned seed) { return t_rand_tensor(&g_arena, nd, shape, seed); }
static float at(const rb_tensor *t, int64_t i) { return ((const float *)t->data)[i]; }
static rb_tensor *l2n_fn(rb_ctx *c, rb_tensor **in, void *user) { return rb_l2_normalize(c, in[0], 1e-12f); }
static rb_tensor *cos_fn(rb_ctx *c, rb_tensor **in, void *user) { return rb_cosine_similarity(c, in[0], in[1], 1e-8f); }
static rb_tensor *mse_fn(rb_ctx *c, rb_tensor **in, void *user) { return rb_mse(c, in[0], in[1]); }
static rb_tensor *ce_fn(rb_ctx *c, rb_tensor **in, void *user) { return rb_cross_entropy(c, in[0], in[1]); }

/* torch: x = torch.tensor([3., -4., 12.]); y = F.normalize(x, p=2, dim=-1, eps=1e-12);
 *        (y * torch.tensor([1., 2., 3.])).sum().backward()
 * and with the clamp active: x = torch.tensor([1e-3, -2e-3]), eps=1e-2, weights [1., 2.] */
static void t_l2_normalize(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    t_tape_env te;
    REQUIRE(t_tape_on(&te, &c), "tape");
    size_t mark = rb_arena_mark(&g_arena);
    rb_tensor *x = from(1, (int64_t[]){3}, (float[]){3, -4, 12}), *r = from(1, (int64_t[]){3}, (float[]){1, 2, 3});
    rb_tensor *x2 = from(1, (int64_t[]){2}, (float[]){1e-3f, -2e-3f}), *r2 = from(1, (int64_t[]){2}, (float[]){1, 2});
    x->requires_grad = x2->requires_grad = 1;
    /* one backward per tape: rb_backward replays every entry recorded so far */
    rb_tensor *y = rb_l2_normalize(&c, x, 1e-12f);
    REQUIRE(y && rb_backward_with(&c, y, r) == RB_OK, "l2_normalize: %s", rb_last_error());
    rb_tape_reset(&te.tape);
    rb_tensor *y2 = rb_l2_normalize(&c, x2, 1e-2f);
    REQUIRE(y2 && rb_backward_with(&c, y2, r2) == RB_OK, "l2_normalize: %s", rb_last_error());
    const double ty[3] = {0.230769232, -0.307692319, 0.923076928}, tdx[3] = {0.0345926248, 0.210286766, 0.0614474118};
    for (int i = 0; i < 3; i++)
        CHECK(t_close_to(at(y, i), ty[i], 1e-6) && t_close_to(at(x->grad, i), tdx[i], 1e-5), "y/dx[%d] %.9g %.9g", i,
              at(y, i), at(x->grad, i));
    CHECK(t_close_to(at(y2, 0), 0.100000009, 1e-6) && t_close_to(at(y2, 1), -0.200000018, 1e-6), "eps: y %.9g %.9g",
          at(y2, 0), at(y2, 1));
    CHECK(t_close_to(at(x2->grad, 0), 100, 1e-6) && t_close_to(at(x2->grad, 1), 200, 1e-6), "eps: dx = dy / eps: %g %g",
          at(x2->grad, 0), at(x2->grad, 1));
    t_tape_off(&te, &c);
    /* naive double on [4, 3, 17], then gradcheck */
    rb_tensor *z = rnd(3, (int64_t[]){4, 3, 17}, 1);
    rb_tensor *o = rb_l2_normalize(&c, z, 1e-12f);
    REQUIRE(o, "l2_normalize");
    double worst = 0;
    for (int row = 0; row < 12; row++) {
        double n = 0;
        for (int j = 0; j < 17; j++)
            n += (double)at(z, row * 17 + j) * at(z, row * 17 + j);
        for (int j = 0; j < 17; j++)
            worst = fmax(worst, fabs(at(o, row * 17 + j) - at(z, row * 17 + j) / sqrt(n)));
    }
    CHECK(worst < 1e-7, "vs double %g", worst);
    z->requires_grad = 1;
    double err = t_gradcheck(l2n_fn, (rb_tensor *[]){z}, 1, NULL, 1e-3);
    CHECK(err < 2e-3, "gradcheck %g", err);
    rb_arena_reset(&g_arena, mark);
}

/* torch 1.13: a = torch.tensor([1., 2., 3.]); b = torch.tensor([4., -5., 6.]);
 *   y = F.cosine_similarity(a, b, dim=-1, eps=1e-8); y.backward()
 * clamped: a = torch.tensor([1e-3, 2e-3]); b = torch.tensor([1., 3.]); eps=1e-2. There torch divides
 * by the clamped norm max(||a||, eps) and its gradient still has the -cos a / n^2 term. */
static void t_cosine(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    t_tape_env te;
    REQUIRE(t_tape_on(&te, &c), "tape");
    size_t mark = rb_arena_mark(&g_arena);
    rb_tensor *a = from(1, (int64_t[]){3}, (float[]){1, 2, 3}), *b = from(1, (int64_t[]){3}, (float[]){4, -5, 6});
    rb_tensor *a2 = from(1, (int64_t[]){2}, (float[]){1e-3f, 2e-3f}), *b2 = from(1, (int64_t[]){2}, (float[]){1, 3});
    a->requires_grad = b->requires_grad = a2->requires_grad = b2->requires_grad = 1;
    rb_tensor *y = rb_cosine_similarity(&c, a, b, 1e-8f);
    REQUIRE(y && y->ndim == 0 && rb_backward(&c, y) == RB_OK, "cosine: %s", rb_last_error());
    rb_tape_reset(&te.tape);
    rb_tensor *y2 = rb_cosine_similarity(&c, a2, b2, 1e-2f);
    REQUIRE(y2 && rb_backward(&c, y2) == RB_OK, "cosine: %s", rb_last_error());
    CHECK(t_close_to(at(y, 0), 0.36548689, 1e-6), "cos %.9g", at(y, 0));
    const double tda[3] = {0.0957227722, -0.204498634, 0.104424842}, tdb[3] = {0.011470912, 0.0846474022, 0.0628922284};
    for (int i = 0; i < 3; i++)
        CHECK(t_close_to(at(a->grad, i), tda[i], 1e-5) && t_close_to(at(b->grad, i), tdb[i], 1e-5),
              "da/db[%d] %.9g %.9g", i, at(a->grad, i), at(b->grad, i));
    CHECK(t_close_to(at(y2, 0), 0.221359447, 1e-6), "clamped cos %.9g", at(y2, 0));
    CHECK(t_close_to(at(a2->grad, 0), 29.4091835, 1e-5) && t_close_to(at(a2->grad, 1), 90.4411392, 1e-5),
          "clamped da %.9g %.9g", at(a2->grad, 0), at(a2->grad, 1));
    CHECK(t_close_to(at(b2->grad, 0), 0.00948683545, 1e-5) && t_close_to(at(b2->grad, 1), -0.00316227227, 1e-5),
          "clamped db %.9g %.9g", at(b2->grad, 0), at(b2->grad, 1));
    t_tape_off(&te, &c);
    /* [2, 3, 9] -> [2, 3] against double; an all-zero row gives 0 (eps keeps it finite) */
    rb_tensor *p = rnd(3, (int64_t[]){2, 3, 9}, 2), *q = rnd(3, (int64_t[]){2, 3, 9}, 3);
    memset((float *)p->data + 9, 0, 9 * sizeof(float));
    rb_tensor *o = rb_cosine_similarity(&c, p, q, 1e-8f);
    REQUIRE(o && o->ndim == 2 && o->shape[0] == 2 && o->shape[1] == 3, "cosine shape");
    double worst = 0;
    for (int row = 0; row < 6; row++) {
        double d = 0, n1 = 0, n2 = 0;
        for (int j = 0; j < 9; j++) {
            double u = at(p, row * 9 + j), v = at(q, row * 9 + j);
            d += u * v;
            n1 += u * u;
            n2 += v * v;
        }
        double ref = d / (fmax(sqrt(n1), 1e-8) * fmax(sqrt(n2), 1e-8));
        worst = fmax(worst, fabs(at(o, row) - ref));
    }
    CHECK(worst < 1e-6 && at(o, 1) == 0, "vs double %g, zero row %g", worst, at(o, 1));
    rb_tensor *g1 = rnd(2, (int64_t[]){3, 5}, 4), *g2 = rnd(2, (int64_t[]){3, 5}, 5);
    g1->requires_grad = g2->requires_grad = 1;
    double err = t_gradcheck(cos_fn, (rb_tensor *[]){g1, g2}, 2, NULL, 1e-3);
    CHECK(err < 2e-3, "gradcheck %g", err);
    rb_arena_reset(&g_arena, mark);
}

/* torch: a = f(6, 37); b = f(6, 13); y = F.mse_loss(a, b); y.backward() */
static void t_mse(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    t_tape_env te;
    REQUIRE(t_tape_on(&te, &c), "tape");
    size_t mark = rb_arena_mark(&g_arena);
    rb_tensor *a = seq(1, (int64_t[]){6}, 37, 1), *b = seq(1, (int64_t[]){6}, 13, 1);
    a->requires_grad = b->requires_grad = 1;
    rb_tensor *y = rb_mse(&c, a, b);
    REQUIRE(y && y->ndim == 0 && rb_backward(&c, y) == RB_OK, "mse: %s", rb_last_error());
    CHECK(t_close_to(at(y, 0), 0.273800015, 1e-6), "mse %.9g", at(y, 0));
    const double tda[6] = {0, 0.160000011, 0.320000023, -0.193333328, -0.0333333239, 0.126666665};
    for (int i = 0; i < 6; i++)
        CHECK(t_close_to(at(a->grad, i), tda[i], 1e-6) && t_close_to(at(b->grad, i), -tda[i], 1e-6), "da/db[%d]", i);
    t_tape_off(&te, &c);
    rb_tensor *p = rnd(3, (int64_t[]){4, 50, 101}, 6), *q = rnd(3, (int64_t[]){4, 50, 101}, 7);
    rb_tensor *o = rb_mse(&c, p, q);
    REQUIRE(o, "mse");
    double s = 0;
    for (int64_t i = 0; i < rb_numel(p); i++)
        s += ((double)at(p, i) - at(q, i)) * ((double)at(p, i) - at(q, i));
    s /= (double)rb_numel(p);
    CHECK(fabs(at(o, 0) - s) < 1e-7 * s, "mse %.9g vs double %.9g", at(o, 0), s);
    rb_tensor *g1 = rnd(2, (int64_t[]){3, 4}, 8), *g2 = rnd(2, (int64_t[]){3, 4}, 9);
    g1->requires_grad = g2->requires_grad = 1;
    double err = t_gradcheck(mse_fn, (rb_tensor *[]){g1, g2}, 2, NULL, 1e-2);
    CHECK(err < 1e-3, "gradcheck %g", err);
    rb_arena_reset(&g_arena, mark);
}

/* torch: l = f(12, 37).reshape(3,4) * 3; t = torch.tensor([0, 3, 1]); y = F.cross_entropy(l, t); y.backward() */
static void t_cross_entropy(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    size_t mark = rb_arena_mark(&g_arena);
    const double tdl[12] = {-0.329889983, 0.031704247,   0.291911483, 0.00627422845, 0.0272612926, 0.251003742,
                            0.00539497379, -0.283660024, 0.272410005, -0.32747826,  0.0539095923, 0.00115871115};
    for (int dt = 0; dt < 2; dt++) { /* i64 and i32 targets */
        t_tape_env te;
        REQUIRE(t_tape_on(&te, &c), "tape");
        rb_tensor *l = seq(2, (int64_t[]){3, 4}, 37, 3);
        rb_tensor *t = rb_arena_tensor(&g_arena, dt ? RB_I32 : RB_I64, 1, (int64_t[]){3});
        const int tv[3] = {0, 3, 1};
        for (int i = 0; i < 3; i++) {
            if (dt)
                ((int32_t *)t->data)[i] = tv[i];
            else
                ((int64_t *)t->data)[i] = tv[i];
        }
        l->requires_grad = 1;
        rb_tensor *y = rb_cross_entropy(&c, l, t);
        REQUIRE(y && y->ndim == 0 && rb_backward(&c, y) == RB_OK, "cross_entropy: %s", rb_last_error());
        CHECK(t_close_to(at(y, 0), 3.50606728, 1e-6), "loss %.9g", at(y, 0));
        for (int i = 0; i < 12; i++)
            CHECK(t_close_to(at(l->grad, i), tdl[i], 1e-6), "dl[%d] = %.9g, torch %.9g", i, at(l->grad, i), tdl[i]);
        t_tape_off(&te, &c);
    }
    /* huge logits: no overflow; loss = logsumexp - picked */
    rb_tensor *l = from(2, (int64_t[]){2, 3}, (float[]){1000, 0, -1000, 1000, 0, -1000});
    rb_tensor *t = rb_arena_tensor(&g_arena, RB_I64, 1, (int64_t[]){2});
    ((int64_t *)t->data)[0] = 0;
    ((int64_t *)t->data)[1] = 1;
    rb_tensor *y = rb_cross_entropy(&c, l, t);
    REQUIRE(y, "cross_entropy: %s", rb_last_error());
    CHECK(fabs(at(y, 0) - 500.0) < 1e-4, "mean(0, 1000) = %g", at(y, 0));
    /* naive double on [5, 7] and gradcheck */
    rb_tensor *z = rnd(2, (int64_t[]){5, 7}, 3), *zt = rb_arena_tensor(&g_arena, RB_I64, 1, (int64_t[]){5});
    for (int i = 0; i < 5; i++)
        ((int64_t *)zt->data)[i] = (i * 3) % 7;
    rb_tensor *o = rb_cross_entropy(&c, z, zt);
    REQUIRE(o, "cross_entropy");
    double ref = 0;
    for (int n = 0; n < 5; n++) {
        double s = 0;
        for (int j = 0; j < 7; j++)
            s += exp(at(z, n * 7 + j));
        ref += (log(s) - at(z, n * 7 + (n * 3) % 7)) / 5;
    }
    CHECK(fabs(at(o, 0) - ref) < 1e-6, "vs double %.9g %.9g", at(o, 0), ref);
    z->requires_grad = 1;
    double err = t_gradcheck(ce_fn, (rb_tensor *[]){z, zt}, 2, NULL, 1e-3);
    CHECK(err < 2e-3, "gradcheck %g", err);
    rb_arena_reset(&g_arena, mark);
}

static void t_errors(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    size_t mark = rb_arena_mark(&g_arena);
    rb_tensor *a = rnd(2, (int64_t[]){2, 3}, 1), *b = rnd(2, (int64_t[]){3, 2}, 2), *v = rnd(1, (int64_t[]){6}, 3);
    CHECK(!rb_cosine_similarity(&c, a, b, 1e-8f) && strstr(rb_last_error(), "cosine_similarity"), "[2,3] vs [3,2]: %s",
          rb_last_error());
    rb_ctx_clear(&c);
    CHECK(!rb_mse(&c, a, v) && strstr(rb_last_error(), "differ"), "mse [2,3] vs [6]: %s", rb_last_error());
    rb_ctx_clear(&c);
    rb_tensor *t = rb_arena_tensor(&g_arena, RB_I64, 1, (int64_t[]){2});
    int64_t *td = t->data;
    td[0] = 0;
    td[1] = 3;
    CHECK(!rb_cross_entropy(&c, a, t) && strstr(rb_last_error(), "outside"), "target 3 with C=3: %s", rb_last_error());
    rb_ctx_clear(&c);
    td[1] = -1;
    CHECK(!rb_cross_entropy(&c, a, t) && c.status == RB_ERR_INVALID, "target -1");
    rb_ctx_clear(&c);
    CHECK(!rb_cross_entropy(&c, a, v), "f32 target refused");
    rb_ctx_clear(&c);
    CHECK(!rb_cross_entropy(&c, v, t), "1-d logits refused");
    rb_ctx_clear(&c);
    td[1] = 2;
    rb_tensor *t3 = rb_arena_tensor(&g_arena, RB_I64, 1, (int64_t[]){3});
    CHECK(!rb_cross_entropy(&c, a, t3), "target length 3 for N=2 refused");
    rb_ctx_clear(&c);
    CHECK(rb_cross_entropy(&c, a, t) != NULL, "valid call after clear");
    rb_arena_reset(&g_arena, mark);
}

int main(void) {
    if (rb_arena_init(&g_arena, 64 << 20, "test arena") != RB_OK)
        return 1;
    RUN(t_l2_normalize);
    RUN(t_cosine);
    RUN(t_mse);
    RUN(t_cross_entropy);
    RUN(t_errors);
    rb_arena_free(&g_arena);
    return t_done();
}
