/* Activations: forward and derivative against double-precision formulas and PyTorch values,
 * gradients by finite differences, GEGLU shape rules. */
#include "gradcheck.h"

static rb_arena g_arena;

static const float xs[9] = {-10, -3, -1, -0.5f, 0, 0.5f, 1, 3, 10};

/* torch 1.13 on xs: v = torch.tensor([-10., -3., -1., -0.5, 0., 0.5, 1., 3., 10.], requires_grad=True);
 * y = fn(v); y.sum().backward(); print(y, v.grad) with fn = F.gelu, F.gelu(approximate="tanh"),
 * v * torch.sigmoid(1.702 * v), F.silu */
static const double torch_y[4][9] = {
    {0, -0.00404986739, -0.158655286, -0.154268786, 0, 0.345731199, 0.841344714, 2.99595022, 10},
    {0, -0.00363743305, -0.158807993, -0.154285997, 0, 0.345714003, 0.841192007, 2.99636269, 10},
    {-4.0579593e-07, -0.0180713106, -0.154204234, -0.149611562, 0, 0.350388438, 0.845795751, 2.98192883, 10},
    {-0.000453978719, -0.142277613, -0.268941432, -0.188770339, 0, 0.311229676, 0.731058598, 2.85772252,
     9.99954605}};
static const double torch_dy[4][9] = {
    {0, -0.0119456053, -0.0833154321, 0.13250491, 0.5, 0.86749506, 1.08331537, 1.01194561, 1},
    {0, -0.0115842968, -0.0829640925, 0.13263011, 0.5, 0.86736989, 1.08296406, 1.01158428, 1},
    {-6.50085042e-07, -0.0245483276, -0.0677796155, 0.120778084, 0.5, 0.879221916, 1.06777966, 1.02454829, 1},
    {-0.000408560241, -0.0881041065, 0.0723294839, 0.260038823, 0.5, 0.739961207, 0.927670538, 1.08810413,
     1.00040877}};

/* independent double formulas (value, derivative) */
static double ref_y(int k, double x) {
    switch (k) {
    case 0: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case 1: return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case 2: return x / (1 + exp(-1.702 * x));
    default: return x / (1 + exp(-x));
    }
}
static double ref_dy(int k, double x) {
    double h = 1e-5; /* central difference in double: error ~1e-10 */
    return (ref_y(k, x + h) - ref_y(k, x - h)) / (2 * h);
}

static rb_tensor *act(rb_ctx *c, int k, rb_tensor *x) {
    switch (k) {
    case 0: return rb_gelu(c, x, 0);
    case 1: return rb_gelu(c, x, 1);
    case 2: return rb_quick_gelu(c, x);
    default: return rb_silu(c, x);
    }
}
static rb_tensor *act_fn(rb_ctx *c, rb_tensor **in, void *user) { return act(c, *(int *)user, in[0]); }
static rb_tensor *geglu_fn(rb_ctx *c, rb_tensor **in, void *user) { return rb_geglu(c, in[0]); }

static const char *names[4] = {"gelu", "gelu_tanh", "quick_gelu", "silu"};

static void t_torch_values(void) {
    rb_arena grads;
    rb_tape tape;
    rb_ctx c;
    REQUIRE(rb_arena_init(&grads, 1 << 20, "grads") == RB_OK, "arena");
    rb_tape_init(&tape, 16, &grads);
    rb_ctx_init(&c, &g_arena);
    c.tape = &tape;
    for (int k = 0; k < 4; k++) {
        size_t mark = rb_arena_mark(&g_arena);
        rb_tensor *x = rb_arena_tensor(&g_arena, RB_F32, 1, (int64_t[]){9});
        memcpy(x->data, xs, sizeof xs);
        x->requires_grad = 1;
        x->grad = NULL;
        rb_tensor *y = act(&c, k, x), *s = rb_sum(&c, y);
        REQUIRE(s, "%s: %s", names[k], rb_last_error());
        REQUIRE(rb_backward(&c, s) == RB_OK, "backward: %s", rb_last_error());
        for (int i = 0; i < 9; i++) {
            float v = ((float *)y->data)[i], g = ((float *)x->grad->data)[i];
            CHECK(fabs(v - torch_y[k][i]) <= 2e-7 + 1e-6 * fabs(torch_y[k][i]), "%s(%g) = %.9g, torch %.9g",
                  names[k], xs[i], v, torch_y[k][i]);
            CHECK(fabs(g - torch_dy[k][i]) <= 2e-7 + 1e-6 * fabs(torch_dy[k][i]), "%s'(%g) = %.9g, torch %.9g",
                  names[k], xs[i], g, torch_dy[k][i]);
        }
        rb_tape_reset(&tape);
        rb_arena_reset(&grads, 0);
        rb_arena_reset(&g_arena, mark);
    }
    rb_tape_free(&tape);
    rb_arena_free(&grads);
}

/* Many points (the parallel path) against the double formulas; then finite-difference gradients. */
static void t_dense_and_gradcheck(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    size_t mark = rb_arena_mark(&g_arena);
    int64_t n = 40000;
    rb_tensor *x = rb_arena_tensor(&g_arena, RB_F32, 1, &n);
    for (int64_t i = 0; i < n; i++)
        ((float *)x->data)[i] = (float)(-8.0 + 16.0 * (double)i / (double)(n - 1));
    for (int k = 0; k < 4; k++) {
        rb_tensor *y = act(&c, k, x);
        REQUIRE(y, "%s: %s", names[k], rb_last_error());
        double worst = 0;
        for (int64_t i = 0; i < n; i++) {
            double r = ref_y(k, ((float *)x->data)[i]);
            worst = fmax(worst, fabs(((float *)y->data)[i] - r) / (1 + fabs(r)));
        }
        CHECK(worst < 1e-6, "%s forward max rel error %g", names[k], worst);
    }
    /* derivatives at the same points: backward with dout = 1 */
    rb_arena grads;
    rb_tape tape;
    REQUIRE(rb_arena_init(&grads, 1 << 20, "grads") == RB_OK, "arena");
    rb_tape_init(&tape, 16, &grads);
    c.tape = &tape;
    for (int k = 0; k < 4; k++) {
        rb_tensor *v = rb_arena_tensor(&g_arena, RB_F32, 1, (int64_t[]){1000});
        for (int i = 0; i < 1000; i++)
            ((float *)v->data)[i] = (float)(-6.0 + 12.0 * i / 999.0);
        v->requires_grad = 1;
        rb_tensor *s = rb_sum(&c, act(&c, k, v));
        REQUIRE(s && rb_backward(&c, s) == RB_OK, "backward: %s", rb_last_error());
        double worst = 0;
        for (int i = 0; i < 1000; i++)
            worst = fmax(worst, fabs(((float *)v->grad->data)[i] - ref_dy(k, ((float *)v->data)[i])));
        CHECK(worst < 2e-6, "%s derivative max error %g", names[k], worst);
        rb_tape_reset(&tape);
        rb_arena_reset(&grads, 0);
    }
    c.tape = NULL;
    rb_tape_free(&tape);
    rb_arena_free(&grads);
    rb_tensor *g = rb_arena_tensor(&g_arena, RB_F32, 3, (int64_t[]){2, 3, 5});
    t_fill(g->data, 30, 11);
    for (int i = 0; i < 30; i++)
        ((float *)g->data)[i] *= 3;
    g->requires_grad = 1;
    rb_tensor *in[1] = {g};
    for (int k = 0; k < 4; k++) {
        double err = t_gradcheck(act_fn, in, 1, &k, 1e-3);
        CHECK(err < 2e-3, "%s gradcheck %g", names[k], err);
    }
    rb_arena_reset(&g_arena, mark);
}

static void t_geglu(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    size_t mark = rb_arena_mark(&g_arena);
    /* torch: x = torch.tensor([[0.5, -1.5, 0.3, 2.0]], requires_grad=True); h, g = x.chunk(2, -1);
     * y = h * F.gelu(g); y.sum().backward() */
    rb_tensor *x = rb_arena_tensor(&g_arena, RB_F32, 2, (int64_t[]){1, 4});
    memcpy(x->data, (float[]){0.5f, -1.5f, 0.3f, 2.0f}, 16);
    x->requires_grad = 1;
    rb_arena grads;
    rb_tape tape;
    REQUIRE(rb_arena_init(&grads, 1 << 20, "grads") == RB_OK, "arena");
    rb_tape_init(&tape, 16, &grads);
    c.tape = &tape;
    rb_tensor *y = rb_geglu(&c, x), *s = rb_sum(&c, y);
    REQUIRE(s && y->ndim == 2 && y->shape[1] == 2, "geglu: %s", rb_last_error());
    REQUIRE(rb_backward(&c, s) == RB_OK, "backward");
    const double ty[2] = {0.0926867127, -2.93174982}, tg[4] = {0.185373425, 1.95449996, 0.36616388, -1.62784791};
    for (int i = 0; i < 2; i++)
        CHECK(fabs(((float *)y->data)[i] - ty[i]) < 1e-6, "geglu y[%d] = %.9g", i, ((float *)y->data)[i]);
    for (int i = 0; i < 4; i++)
        CHECK(fabs(((float *)x->grad->data)[i] - tg[i]) < 1e-6, "geglu dx[%d] = %.9g", i,
              ((float *)x->grad->data)[i]);
    c.tape = NULL;
    rb_tape_free(&tape);
    rb_arena_free(&grads);
    /* [2, 3, 8] -> [2, 3, 4] against the formula, then gradcheck */
    rb_tensor *z = rb_arena_tensor(&g_arena, RB_F32, 3, (int64_t[]){2, 3, 8});
    t_fill(z->data, 48, 12);
    z->requires_grad = 1;
    rb_tensor *o = rb_geglu(&c, z);
    REQUIRE(o && o->shape[2] == 4, "geglu shape");
    for (int r = 0; r < 6; r++)
        for (int j = 0; j < 4; j++) {
            const float *zr = (float *)z->data + r * 8;
            double ref = zr[j] * ref_y(0, zr[4 + j]);
            CHECK(fabs(((float *)o->data)[r * 4 + j] - ref) < 1e-6, "geglu[%d,%d]", r, j);
        }
    rb_tensor *in[1] = {z};
    CHECK(t_gradcheck(geglu_fn, in, 1, NULL, 1e-3) < 2e-3, "geglu gradcheck");
    /* odd last dim is an error */
    rb_tensor *odd = rb_arena_tensor(&g_arena, RB_F32, 2, (int64_t[]){2, 5});
    CHECK(rb_geglu(&c, odd) == NULL && c.status == RB_ERR_INVALID && strstr(rb_last_error(), "even"),
          "odd last dim refused: %s", rb_last_error());
    rb_arena_reset(&g_arena, mark);
}

int main(void) {
    if (rb_arena_init(&g_arena, 64 << 20, "test arena") != RB_OK)
        return 1;
    RUN(t_torch_values);
    RUN(t_dense_and_gradcheck);
    RUN(t_geglu);
    rb_arena_free(&g_arena);
    return t_done();
}
