/* Adam / AdamW, gradient clipping and optimizer state files, against torch 1.13.1 (Debian, CPU). */
#include <stdint.h>

#include "core/mem.h"
#include "harness.h"
#include "io/safetensors.h"
#include "ops/optim.h"

/* ---- reference values, computed once with Debian's torch 1.13.1 (python3-torch) ----

import torch, struct
sizes = [20, 7]
def p0(k, i): return ((i * 37 + k * 11) % 29 - 14) / 16.0
def g(s, k, i): return ((i * 53 + k * 17 + s * 7) % 31 - 15) / 64.0
def bits(x): return struct.unpack('<I', struct.pack('<f', x))[0]
for name, cls, wd in [('adamw_wd', torch.optim.AdamW, 1e-2), ('adam_wd', torch.optim.Adam, 1e-2),
                      ('adam_nowd', torch.optim.Adam, 0.0)]:
    ps = [torch.nn.Parameter(torch.tensor([p0(k, i) for i in range(n)])) for k, n in enumerate(sizes)]
    opt = cls(ps, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    rows = []
    for s in range(3):
        for k, p in enumerate(ps): p.grad = torch.tensor([g(s, k, i) for i in range(sizes[k])])
        opt.step()
        rows.append([bits(x) for p in ps for x in p.detach().tolist()])
    rows.append([bits(x) for p in ps for x in opt.state[p]['exp_avg_sq'].tolist()])
    print('static const uint32_t %s[4][27] = {' % name)
    for r in rows: print('    {' + ','.join('0x%08x' % v for v in r) + '},')
    print('};')

 * Rows 0-2: both parameters (20 then 7 elements) after steps 1-3; row 3: exp_avg_sq after step 3.
 * Inputs are exact binary fractions, so C and Python start from identical floats. The size 20
 * runs torch's AVX2 vector path and its scalar tail, so both code paths are compared. */
static const uint32_t adamw_wd[4][27] = {
    {0xbf5d6ae8,0xbec519ce,0x3e0a3a29,0x3f228b43,0xbf328ada,0xbe4a3886,0x3ea51a9f,0x3f4d6b51,0xbf028c15,0x3c23d708,0x3f028c15,0xbf528a09,0xbea51a9f,0x3e4a3886,0x3f2d6c22,0xbf228b43,0xbdeb7e91,0x3ec519ce,0x3f5d6ae8,0xbedffa44,0xbe4a3886,0x3ea51a9f,0x3f4d6b51,0xbf028c15,0x3c23d708,0x3f028c15,0xbf528a09},
    {0xbf5afc3b,0xbeca05d7,0x3e05af61,0x3f24ca81,0xbf322d7d,0xbe532083,0x3ea884a7,0x3f4ce88f,0xbf04fb83,0x3c041e6c,0x3f04d9b5,0xbf51f6e4,0xbea94b1b,0x3e51f45d,0x3f2d1df8,0xbf24f21f,0xbde9a437,0x3ec9cb03,0x3f5e25a0,0xbee3c3e3,0xbe532083,0x3ea884a7,0x3f4ce88f,0xbf04fb83,0x3c041e6c,0x3f04d9b5,0xbf51f6e4},
    {0xbf5901e5,0xbecb75a1,0x3dfc8a8f,0x3f261014,0xbf315cfc,0xbe5124d8,0x3ea80fca,0x3f4cb287,0xbf057913,0x3ad56a64,0x3f065b9d,0xbf50ee2a,0xbeadb243,0x3e52d516,0x3f2d295f,0xbf25315c,0xbdf4b092,0x3ecd2d9e,0x3f5f5560,0xbee7fc15,0xbe5124d8,0x3ea80fca,0x3f4cb287,0xbf057913,0x3ad56a64,0x3f065b9d,0xbf50ee2a},
    {0x3894378a,0x38b07d50,0x38311e43,0x38153d6d,0x38a6b39f,0x389eaca8,0x37c880df,0x389e72c1,0x38a6c9e4,0x3815781e,0x3830d4e5,0x38b06ff3,0x3894723b,0x37ce957e,0x389be881,0x38a0281c,0x37ffea84,0x38528fab,0x38bd3dee,0x387ad470,0x389eaca8,0x37c880df,0x389e72c1,0x38a6c9e4,0x3815781e,0x3830d4e5,0x38b06ff3},
};
static const uint32_t adam_wd[4][27] = {
    {0xbf5d70a4,0xbec51eb8,0x3e0a3d70,0x3f228f5c,0xbf328f5c,0xbe4a3d70,0x3ea51eb8,0x3f4d70a4,0xbf028f5c,0x3c23d708,0x3f028f5c,0xbf528f5c,0xbea51eb8,0x3e4a3d71,0x3f2d70a4,0xbf228f5c,0xbdeb851f,0x3ec51eb8,0x3f5d70a4,0xbedae148,0xbe4a3d70,0x3ea51eb8,0x3f4d70a4,0xbf028f5c,0x3c23d708,0x3f028f5c,0xbf528f5c},
    {0xbf5b04d9,0xbeca0d64,0x3e05885c,0x3f24cbde,0xbf321ee3,0xbe531db8,0x3ea86ef7,0x3f4cd974,0xbf04fff2,0x3c040302,0x3f04dc49,0xbf51e6ce,0xbea9429e,0x3e51e64e,0x3f2d100c,0xbf24f692,0xbde94195,0x3ec9d05f,0x3f5e1524,0xbede8b49,0xbe531db8,0x3ea86ef7,0x3f4cd974,0xbf04fff2,0x3c040302,0x3f04dc49,0xbf51e6ce},
    {0xbf59032d,0xbecb66b7,0x3dfc260b,0x3f25f8f7,0xbf3139c6,0xbe5107eb,0x3ea7cf66,0x3f4c881f,0xbf056d29,0x3ad4623c,0x3f064f82,0xbf50c895,0xbeada5fc,0x3e5293d3,0x3f2d039f,0xbf25202b,0xbdf424b7,0x3ecd22df,0x3f5f2f59,0xbee2ba4f,0xbe5107eb,0x3ea7cf66,0x3f4c881f,0xbf056d29,0x3ad4623c,0x3f064f82,0xbf50c895},
    {0x38a25cf5,0x38adec56,0x3833bf57,0x380bf55a,0x38aabaf0,0x389f510d,0x37c913ac,0x38a10ca7,0x38a464fd,0x3815a347,0x382754c6,0x38b6d82b,0x388f5e38,0x37cd76c0,0x389cbac8,0x389e71e7,0x37fd5ebc,0x3849dcbe,0x38b5d308,0x386f2be0,0x389f510d,0x37c913ac,0x38a10ca7,0x38a464fd,0x3815a347,0x382754c6,0x38b6d82b},
};
static const uint32_t adam_nowd[4][27] = {
    {0xbf5d70a4,0xbec51eb8,0x3e0a3d70,0x3f228f5c,0xbf328f5c,0xbe4a3d70,0x3ea51eb8,0x3f4d70a4,0xbf028f5c,0x3c23d708,0x3f028f5c,0xbf528f5c,0xbea51eb8,0x3e4a3d70,0x3f2d70a4,0xbf228f5c,0xbdeb851f,0x3ec51eb8,0x3f5d70a4,0xbee00000,0xbe4a3d70,0x3ea51eb8,0x3f4d70a4,0xbf028f5c,0x3c23d708,0x3f028f5c,0xbf528f5c},
    {0xbf5b07a2,0xbeca0fcd,0x3e05b632,0x3f24d2c3,0xbf323691,0xbe532a9a,0x3ea88cfa,0x3f4cf324,0xbf050222,0x3c04229e,0x3f04e054,0xbf52019b,0xbea9536e,0x3e51fe74,0x3f2d26eb,0xbf24fa61,0xbde9b0cd,0x3ec9d4f9,0x3f5e3107,0xbee3cf5b,0xbe532a9a,0x3ea88cfa,0x3f4cf324,0xbf050222,0x3c04229e,0x3f04e054,0xbf52019b},
    {0xbf5912e7,0xbecb84c3,0x3dfc9f09,0x3f261c8e,0xbf316aa0,0xbe513457,0x3ea81c6e,0x3f4cc25b,0xbf05831a,0x3ad5a704,0x3f0665a3,0xbf50fe41,0xbeadbeec,0x3e52e48d,0x3f2d36c1,0xbf253dd7,0xbdf4c323,0x3ecd3cc0,0x3f5f6677,0xbee80d62,0xbe513457,0x3ea81c6e,0x3f4cc25b,0xbf05831a,0x3ad5a704,0x3f0665a3,0xbf50fe41},
    {0x3894378a,0x38b07d50,0x38311e43,0x38153d6d,0x38a6b39f,0x389eaca8,0x37c880df,0x389e72c1,0x38a6c9e4,0x3815781e,0x3830d4e5,0x38b06ff3,0x3894723b,0x37ce957e,0x389be881,0x38a0281c,0x37ffea84,0x38528fab,0x38bd3dee,0x387ad470,0x389eaca8,0x37c880df,0x389e72c1,0x38a6c9e4,0x3815781e,0x3830d4e5,0x38b06ff3},
};

/* clip_grad_norm_ of the step-0 gradients above:

for max_norm in (0.5, 100.0):
    ps = [torch.nn.Parameter(torch.zeros(n)) for n in sizes]
    for k, p in enumerate(ps): p.grad = torch.tensor([g(0, k, i) for i in range(sizes[k])])
    tn = torch.nn.utils.clip_grad_norm_(ps, max_norm)
    print(max_norm, repr(tn.item()), [hex(bits(x)) for p in ps for x in p.grad.tolist()])

 -> total norm 0.7338762283325195 (float32; the exact value is 0.7338761603635862) for both; with
 max_norm 100 the gradients are unchanged; with max_norm 0.5: */
static const uint32_t clip05[27] = {
    0xbe2383dd, 0x3d989d34, 0xbcae6a85, 0xbdefd277, 0x3defd277, 0x3cae6a85, 0xbd989d34, 0x3e2383dd, 0x3d82cfe4,
    0xbd02cfe4, 0xbe02cfe4, 0x3dda0526, 0x3c2e6a85, 0xbdae6a85, 0x3e189d34, 0x3d5a0526, 0xbd2e6a85, 0xbe0db68c,
    0x3dc437d6, 0x00000000, 0x3cae6a85, 0xbd989d34, 0x3e2383dd, 0x3d82cfe4, 0xbd02cfe4, 0xbe02cfe4, 0x3dda0526};

enum { N0 = 20, N1 = 7, NT = N0 + N1 };

static float p0(int k, int i) { return (float)((i * 37 + k * 11) % 29 - 14) / 16.0f; }
static float g(int s, int k, int i) { return (float)((i * 53 + k * 17 + s * 7) % 31 - 15) / 64.0f; }
static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Two parameters over one buffer (p[0..19], p[20..26]) with gradients over another. */
typedef struct {
    float p[NT], g[NT];
    rb_tensor t[2], gt[2];
    rb_tensor *ptr[2];
} two_params;

static void two_init(two_params *x) {
    memset(x, 0, sizeof *x);
    int64_t s0 = N0, s1 = N1;
    x->t[0] = rb_tensor_wrap(x->p, RB_F32, 1, &s0);
    x->t[1] = rb_tensor_wrap(x->p + N0, RB_F32, 1, &s1);
    x->gt[0] = rb_tensor_wrap(x->g, RB_F32, 1, &s0);
    x->gt[1] = rb_tensor_wrap(x->g + N0, RB_F32, 1, &s1);
    for (int k = 0; k < 2; k++) {
        x->t[k].grad = &x->gt[k];
        x->ptr[k] = &x->t[k];
    }
    for (int i = 0; i < NT; i++)
        x->p[i] = i < N0 ? p0(0, i) : p0(1, i - N0);
}

static void two_grads(two_params *x, int s) {
    for (int i = 0; i < NT; i++)
        x->g[i] = i < N0 ? g(s, 0, i) : g(s, 1, i - N0);
}

static int count_diff(const float *a, const uint32_t *ref, int n) {
    int bad = 0;
    for (int i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &a[i], 4);
        if (u != ref[i]) {
            if (bad < 3)
                fprintf(stderr, "    [%d] %.9g, torch %.9g\n", i, a[i], from_bits(ref[i]));
            bad++;
        }
    }
    return bad;
}

static void run_vs_torch(double wd, int decoupled, const uint32_t ref[4][27]) {
    two_params x;
    two_init(&x);
    rb_adam_config cfg;
    rb_adam_config_init(&cfg);
    cfg.lr = 1e-2;
    cfg.weight_decay = wd;
    cfg.decoupled = decoupled;
    rb_adam opt;
    REQUIRE(rb_adam_init(&opt, &cfg, 2, x.ptr) == RB_OK, "%s", rb_last_error());
    for (int s = 0; s < 3; s++) {
        two_grads(&x, s);
        CHECK(rb_adam_step(&opt) == RB_OK, "%s", rb_last_error());
        int bad = count_diff(x.p, ref[s], NT);
        CHECK(bad == 0, "step %d: %d of %d parameters differ from torch", s + 1, bad, NT);
    }
    float v[NT];
    memcpy(v, opt.exp_avg_sq[0], N0 * sizeof(float));
    memcpy(v + N0, opt.exp_avg_sq[1], N1 * sizeof(float));
    int bad = count_diff(v, ref[3], NT);
    CHECK(bad == 0, "exp_avg_sq: %d of %d differ from torch", bad, NT);
    CHECK(opt.t == 3 && opt.steps[0] == 3 && opt.steps[1] == 3, "step counts %lld %lld %lld", (long long)opt.t,
          (long long)opt.steps[0], (long long)opt.steps[1]);
    rb_adam_free(&opt);
}

static void t_adamw_vs_torch(void) { run_vs_torch(1e-2, 1, adamw_wd); }
static void t_adam_l2_vs_torch(void) { run_vs_torch(1e-2, 0, adam_wd); }
static void t_adam_vs_torch(void) { run_vs_torch(0, 0, adam_nowd); }

static void t_clip_vs_torch(void) {
    two_params x;
    two_init(&x);
    two_grads(&x, 0);
    double total = -1;
    REQUIRE(rb_clip_grad_norm(2, x.ptr, 100.0, 1, &total) == RB_OK, "%s", rb_last_error());
    CHECK(fabs(total - 0.7338761603635862) < 1e-12, "total %.17g", total);
    CHECK(fabs(total - 0.7338762283325195) < 2e-7 * 0.734, "total %.17g vs torch's float32 norm", total);
    for (int i = 0; i < NT; i++)
        CHECK(x.g[i] == (i < N0 ? g(0, 0, i) : g(0, 1, i - N0)), "no clipping below max_norm: [%d] changed", i);

    /* With clipping, torch's coefficient comes from its float32 norm, one ulp above ours, so the
     * clipped values may differ from torch's by an ulp (2^-24 relative); allow 3e-7 relative. */
    REQUIRE(rb_clip_grad_norm(2, x.ptr, 0.5, 1, &total) == RB_OK, "%s", rb_last_error());
    double worst = 0;
    for (int i = 0; i < NT; i++) {
        double r = from_bits(clip05[i]), d = fabs(x.g[i] - r) / (fabs(r) > 0 ? fabs(r) : 1);
        if (d > worst)
            worst = d;
    }
    CHECK(worst < 3e-7, "clipped gradients differ from torch's by %.3g relative", worst);
    /* independent check: the clipped norm is max_norm (up to the 1e-6 of the formula) */
    double ss = 0;
    for (int i = 0; i < NT; i++)
        ss += (double)x.g[i] * x.g[i];
    CHECK(fabs(sqrt(ss) - 0.5 * 0.7338761603635862 / (0.7338761603635862 + 1e-6)) < 1e-7, "clipped norm %.9g",
          sqrt(ss));

    /* a parameter without a gradient is skipped */
    two_grads(&x, 0);
    x.t[1].grad = NULL;
    REQUIRE(rb_clip_grad_norm(2, x.ptr, 100.0, 1, &total) == RB_OK, "%s", rb_last_error());
    double ss0 = 0;
    for (int i = 0; i < N0; i++)
        ss0 += (double)g(0, 0, i) * g(0, 0, i);
    CHECK(fabs(total - sqrt(ss0)) < 1e-12, "total %.17g, expected %.17g", total, sqrt(ss0));
}

/* torch with error_if_nonfinite=False: an inf in a gradient gives norm inf, coefficient 0: finite
 * values become 0 and the inf becomes NaN; a NaN makes everything NaN. */
static void t_clip_nonfinite(void) {
    two_params x;
    two_init(&x);
    two_grads(&x, 0);
    x.g[N0 + 3] = INFINITY;
    double total = 0;
    CHECK(rb_clip_grad_norm(2, x.ptr, 1.0, 1, &total) == RB_ERR_INVALID, "inf norm must be an error");
    CHECK(strstr(rb_last_error(), "norm") != NULL, "message: %s", rb_last_error());
    CHECK(isinf(total) && x.g[0] == g(0, 0, 0) && isinf(x.g[N0 + 3]), "gradients must be left alone");
    CHECK(rb_clip_grad_norm(2, x.ptr, 1.0, 0, &total) == RB_OK, "%s", rb_last_error());
    CHECK(x.g[0] == 0 && x.g[N0] == 0 && isnan(x.g[N0 + 3]), "as torch: %g %g %g", x.g[0], x.g[N0], x.g[N0 + 3]);

    two_grads(&x, 0);
    x.g[5] = NAN;
    CHECK(rb_clip_grad_norm(2, x.ptr, 1.0, 1, &total) == RB_ERR_INVALID && isnan(total), "nan norm must be an error");
    CHECK(rb_clip_grad_norm(2, x.ptr, 1.0, 0, &total) == RB_OK, "%s", rb_last_error());
    int all_nan = 1;
    for (int i = 0; i < NT; i++)
        all_nan &= isnan(x.g[i]) != 0;
    CHECK(all_nan, "a NaN norm makes every gradient NaN, as torch");
    CHECK(rb_clip_grad_norm(2, x.ptr, -1.0, 0, &total) == RB_ERR_INVALID, "negative max_norm");
}

static void t_bad_arguments(void) {
    two_params x;
    two_init(&x);
    rb_adam_config cfg;
    rb_adam_config_init(&cfg);
    rb_adam opt;
    cfg.beta2 = 1.0;
    CHECK(rb_adam_init(&opt, &cfg, 2, x.ptr) == RB_ERR_INVALID, "beta2 = 1 accepted");
    rb_adam_config_init(&cfg);
    x.t[1].dtype = RB_BF16;
    CHECK(rb_adam_init(&opt, &cfg, 2, x.ptr) == RB_ERR_INVALID, "bf16 parameter accepted");
    CHECK(strstr(rb_last_error(), "parameter 1") != NULL, "message: %s", rb_last_error());
    x.t[1].dtype = RB_F32;
    REQUIRE(rb_adam_init(&opt, &cfg, 2, x.ptr) == RB_OK, "%s", rb_last_error());

    /* a gradient of the wrong shape: error, and nothing changes (not even the first parameter) */
    two_grads(&x, 0);
    x.gt[1].shape[0] = 6;
    x.t[1].name = "lora_B";
    float before[NT];
    memcpy(before, x.p, sizeof before);
    CHECK(rb_adam_step(&opt) == RB_ERR_INVALID, "wrong gradient shape accepted");
    CHECK(strstr(rb_last_error(), "lora_B") != NULL, "message: %s", rb_last_error());
    CHECK(!memcmp(before, x.p, sizeof before) && opt.t == 0 && opt.steps[0] == 0, "a failed step changed state");
    x.gt[1].shape[0] = N1;

    /* a parameter without a gradient is skipped and keeps its own step count (as torch) */
    x.t[1].grad = NULL;
    CHECK(rb_adam_step(&opt) == RB_OK, "%s", rb_last_error());
    CHECK(!memcmp(before + N0, x.p + N0, N1 * sizeof(float)) && memcmp(before, x.p, N0 * sizeof(float)),
          "only the parameter with a gradient moves");
    CHECK(opt.t == 1 && opt.steps[0] == 1 && opt.steps[1] == 0, "steps %lld %lld", (long long)opt.steps[0],
          (long long)opt.steps[1]);
    x.t[1].grad = &x.gt[1];
    rb_adam_zero_grad(&opt);
    int zero = 1;
    for (int i = 0; i < NT; i++)
        zero &= x.g[i] == 0;
    CHECK(zero, "zero_grad");
    rb_adam_free(&opt);
}

/* Saving after two steps and loading into a fresh optimizer, then stepping, is bit-identical to
 * three uninterrupted steps. */
static void t_save_load_resume(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/adam_state.safetensors", t_tmpdir());
    for (int decoupled = 0; decoupled < 2; decoupled++) {
        rb_adam_config cfg;
        rb_adam_config_init(&cfg);
        cfg.lr = 1e-2;
        cfg.weight_decay = 1e-2;
        cfg.decoupled = decoupled;
        two_params a, b;
        two_init(&a);
        two_init(&b);
        a.t[0].name = b.t[0].name = "down.lora_A.weight"; /* the other one is keyed by its index */
        rb_adam oa, ob, oc;
        REQUIRE(rb_adam_init(&oa, &cfg, 2, a.ptr) == RB_OK && rb_adam_init(&ob, &cfg, 2, b.ptr) == RB_OK, "%s",
                rb_last_error());
        for (int s = 0; s < 3; s++) {
            two_grads(&a, s);
            REQUIRE(rb_adam_step(&oa) == RB_OK, "%s", rb_last_error());
        }
        for (int s = 0; s < 2; s++) {
            two_grads(&b, s);
            REQUIRE(rb_adam_step(&ob) == RB_OK, "%s", rb_last_error());
        }
        REQUIRE(rb_adam_save(&ob, path) == RB_OK, "%s", rb_last_error());
        rb_adam_free(&ob);

        rb_safetensors f;
        REQUIRE(rb_st_open(&f, path) == RB_OK, "%s", rb_last_error());
        CHECK(f.n == 4 && rb_st_get(&f, "down.lora_A.weight.exp_avg") && rb_st_get(&f, "1.exp_avg_sq"),
              "tensor names");
        const char *fmt = rb_st_meta(&f, "format"), *step = rb_st_meta(&f, "step"), *lr = rb_st_meta(&f, "lr");
        CHECK(fmt && !strcmp(fmt, "relbooth-adam-v1"), "format %s", fmt ? fmt : "(none)");
        CHECK(step && !strcmp(step, "2"), "step %s", step ? step : "(none)");
        CHECK(lr && strtod(lr, NULL) == 1e-2, "lr %s", lr ? lr : "(none)");
        rb_st_close(&f);

        REQUIRE(rb_adam_init(&oc, &cfg, 2, b.ptr) == RB_OK, "%s", rb_last_error());
        REQUIRE(rb_adam_load(&oc, path) == RB_OK, "%s", rb_last_error());
        CHECK(oc.t == 2 && oc.steps[0] == 2 && oc.steps[1] == 2, "restored step %lld", (long long)oc.t);
        two_grads(&b, 2);
        REQUIRE(rb_adam_step(&oc) == RB_OK, "%s", rb_last_error());
        CHECK(!memcmp(a.p, b.p, sizeof a.p), "resumed parameters differ (decoupled %d)", decoupled);
        CHECK(!memcmp(oa.exp_avg[0], oc.exp_avg[0], N0 * 4) && !memcmp(oa.exp_avg_sq[1], oc.exp_avg_sq[1], N1 * 4),
              "resumed state differs");
        rb_adam_free(&oa);
        rb_adam_free(&oc);
    }
    remove(path);
}

static void t_load_errors(void) {
    char path[512], other[512];
    snprintf(path, sizeof path, "%s/adam_err.safetensors", t_tmpdir());
    snprintf(other, sizeof other, "%s/not_adam.safetensors", t_tmpdir());
    rb_adam_config cfg;
    rb_adam_config_init(&cfg);
    two_params x;
    two_init(&x);
    x.t[1].name = "up.lora_B.weight";
    rb_adam opt;
    REQUIRE(rb_adam_init(&opt, &cfg, 2, x.ptr) == RB_OK, "%s", rb_last_error());
    two_grads(&x, 0);
    REQUIRE(rb_adam_step(&opt) == RB_OK && rb_adam_save(&opt, path) == RB_OK, "%s", rb_last_error());
    rb_adam_free(&opt);

    two_params y;
    two_init(&y);
    y.t[1].name = "up.lora_B.weight";
    rb_adam o2;
    /* another learning rate */
    rb_adam_config c2 = cfg;
    c2.lr = 2e-3;
    REQUIRE(rb_adam_init(&o2, &c2, 2, y.ptr) == RB_OK, "%s", rb_last_error());
    CHECK(rb_adam_load(&o2, path) == RB_ERR_INVALID, "lr mismatch accepted");
    CHECK(strstr(rb_last_error(), "lr") && strstr(rb_last_error(), path), "message: %s", rb_last_error());
    CHECK(o2.t == 0 && o2.steps[0] == 0 && o2.exp_avg[0][1] == 0, "a failed load changed the state");
    rb_adam_free(&o2);
    /* Adam instead of AdamW */
    c2 = cfg;
    c2.decoupled = 0;
    REQUIRE(rb_adam_init(&o2, &c2, 2, y.ptr) == RB_OK, "%s", rb_last_error());
    CHECK(rb_adam_load(&o2, path) == RB_ERR_INVALID, "Adam state loaded into AdamW");
    rb_adam_free(&o2);
    /* another name */
    y.t[1].name = "up.lora_A.weight";
    REQUIRE(rb_adam_init(&o2, &cfg, 2, y.ptr) == RB_OK, "%s", rb_last_error());
    CHECK(rb_adam_load(&o2, path) == RB_ERR_INVALID, "renamed parameter accepted");
    CHECK(strstr(rb_last_error(), "up.lora_A.weight.exp_avg") != NULL, "message: %s", rb_last_error());
    rb_adam_free(&o2);
    /* another shape */
    y.t[1].name = "up.lora_B.weight";
    y.t[1].shape[0] = 6;
    REQUIRE(rb_adam_init(&o2, &cfg, 2, y.ptr) == RB_OK, "%s", rb_last_error());
    CHECK(rb_adam_load(&o2, path) == RB_ERR_INVALID, "shape mismatch accepted");
    CHECK(strstr(rb_last_error(), "[7]") && strstr(rb_last_error(), "[6]"), "message: %s", rb_last_error());
    rb_adam_free(&o2);
    y.t[1].shape[0] = N1;
    /* fewer parameters */
    REQUIRE(rb_adam_init(&o2, &cfg, 1, y.ptr) == RB_OK, "%s", rb_last_error());
    CHECK(rb_adam_load(&o2, path) == RB_ERR_INVALID, "parameter count mismatch accepted");
    rb_adam_free(&o2);
    /* a safetensors file that is not an optimizer state */
    const rb_tensor *ts[1] = {&y.t[0]};
    const char *names[1] = {"x"};
    REQUIRE(rb_st_write(other, 1, names, ts, 0, NULL, NULL) == RB_OK, "%s", rb_last_error());
    REQUIRE(rb_adam_init(&o2, &cfg, 2, y.ptr) == RB_OK, "%s", rb_last_error());
    CHECK(rb_adam_load(&o2, other) == RB_ERR_FORMAT, "non-adam file accepted");
    CHECK(strstr(rb_last_error(), "relbooth-adam-v1") != NULL, "message: %s", rb_last_error());
    /* duplicate keys cannot be saved */
    y.t[0].name = y.t[1].name;
    CHECK(rb_adam_save(&o2, path) == RB_ERR_INVALID, "duplicate names saved");
    rb_adam_free(&o2);
    remove(path);
    remove(other);
}

/* Golden: DreamRelation RelationLoRA, first AdamW iteration (torch, see the case's case.md):
 * clip_grad_norm_(1.0) then AdamW(lr 1e-4, betas (0.9, 0.999), eps 1e-8, wd 1e-4) from lora_init
 * with the stored gradient. The golden stores only the first iteration's gradient, so steps 2 and
 * 3 (lora_after_adamw_step{2,3}) need the model's own backward and are tested with the trainer. */
static void t_golden_lora_adamw_step1(void) {
    char init_p[4096], grad_p[4096], ref_p[4096];
    const char *p = t_golden_path("relation_lora_train/lora_init.safetensors");
    if (!p)
        return;
    snprintf(init_p, sizeof init_p, "%s", p);
    snprintf(grad_p, sizeof grad_p, "%s", t_golden_path("relation_lora_train/grad_a.total_kml0.1_cal0.001.safetensors"));
    snprintf(ref_p, sizeof ref_p, "%s", t_golden_path("relation_lora_train/lora_after_adamw_step1.safetensors"));
    rb_safetensors fi, fg, fr;
    REQUIRE(rb_st_open(&fi, init_p) == RB_OK, "%s", rb_last_error());
    REQUIRE(rb_st_open(&fg, grad_p) == RB_OK, "%s", rb_last_error());
    REQUIRE(rb_st_open(&fr, ref_p) == RB_OK, "%s", rb_last_error());
    int n = fi.n;
    rb_tensor *params = calloc((size_t)n, sizeof *params), *grads = calloc((size_t)n, sizeof *grads);
    rb_tensor **ptr = calloc((size_t)n, sizeof *ptr);
    int ok = 1;
    for (int i = 0; i < n && ok; i++) {
        const rb_tensor *src = &fi.entries[i].t, *gs = rb_st_get(&fg, fi.entries[i].name);
        ok = gs && rb_same_shape(gs, src) && src->dtype == RB_F32 &&
             rb_tensor_alloc(&params[i], RB_F32, src->ndim, src->shape, "param") == RB_OK &&
             rb_tensor_alloc(&grads[i], RB_F32, src->ndim, src->shape, "grad") == RB_OK &&
             rb_tensor_copy(&params[i], src) == RB_OK && rb_tensor_copy(&grads[i], gs) == RB_OK;
        params[i].name = fi.entries[i].name;
        params[i].grad = &grads[i];
        ptr[i] = &params[i];
    }
    CHECK(ok && n == 136, "setting up %d parameters: %s", n, rb_last_error());
    double total = 0, maxd = 0;
    rb_adam_config cfg;
    rb_adam_config_init(&cfg);
    cfg.lr = 1e-4;
    cfg.weight_decay = 1e-4;
    rb_adam opt;
    if (ok && rb_clip_grad_norm(n, ptr, 1.0, 1, &total) == RB_OK && rb_adam_init(&opt, &cfg, n, ptr) == RB_OK) {
        CHECK(fabs(total - 0.1728239804506302) < 1e-7, "grad norm %.9g, torch 0.17282398", total);
        CHECK(rb_adam_step(&opt) == RB_OK, "%s", rb_last_error());
        int exact = 0, count = 0;
        for (int i = 0; i < n; i++) {
            const rb_tensor *r = rb_st_get(&fr, params[i].name);
            if (!r || !rb_same_shape(r, &params[i])) {
                CHECK(0, "%s missing or reshaped in step1 file", params[i].name);
                continue;
            }
            for (int64_t k = 0; k < rb_numel(r); k++, count++) {
                double d = fabs(rb_tensor_get(r, k) - ((float *)params[i].data)[k]);
                exact += d == 0;
                if (d > maxd)
                    maxd = d;
            }
        }
        fprintf(stderr, "  golden step 1: max |diff| %.3g, %d of %d elements bit-identical\n", maxd, exact, count);
        /* case.md: compare with an absolute tolerance of ~1e-6 (updates are ~lr*sign(g) = 1e-4) */
        CHECK(maxd <= 1e-6, "max |diff| %.3g vs torch after step 1", maxd);
        rb_adam_free(&opt);
    } else {
        CHECK(0, "%s", rb_last_error());
    }
    for (int i = 0; i < n; i++) {
        rb_tensor_free(&params[i]);
        rb_tensor_free(&grads[i]);
    }
    free(params);
    free(grads);
    free(ptr);
    rb_st_close(&fi);
    rb_st_close(&fg);
    rb_st_close(&fr);
}

int main(void) {
    RUN(t_adamw_vs_torch);
    RUN(t_adam_l2_vs_torch);
    RUN(t_adam_vs_torch);
    RUN(t_clip_vs_torch);
    RUN(t_clip_nonfinite);
    RUN(t_bad_arguments);
    RUN(t_save_load_resume);
    RUN(t_load_errors);
    RUN(t_golden_lora_adamw_step1);
    return t_done();
}
