/* LoRA: the SGM->diffusers name table against the golden keymap; the golden's four attn2 key formats and the
 * two attn12 files parse to the same normalised pairs (modules, A/B, alpha as the reference loader uses it);
 * every pair fits the base UNet weight it targets; merging matches a double-precision W + s*alpha/r*B@A; the
 * run-time rb_lora_linear matches both the naive formula and the merged weight and has correct gradients;
 * unused keys are reported; save/load round trip; old processor keys, f16 weights, I64 alpha; bad files. */
#include "gradcheck.h"

#include "core/mem.h"
#include "models/lora.h"

/* ---- the SGM table vs unet_sdxl/sgm_unet_keymap.json ({"diffusers.key": "model.diffusion_model.sgm.key", ...},
 *      one pair per line; read with sscanf, not by the library) ---- */
static void strip_param(char *s) {
    size_t n = strlen(s);
    if (n > 7 && !strcmp(s + n - 7, ".weight"))
        s[n - 7] = 0;
    else if (n > 5 && !strcmp(s + n - 5, ".bias"))
        s[n - 5] = 0;
}

static void t_sgm_table_vs_keymap(void) {
    const char *path = t_golden_path("unet_sdxl/sgm_unet_keymap.json");
    if (!path)
        return;
    FILE *f = fopen(path, "r");
    REQUIRE(f, "open %s", path);
    char line[1024], dif[512], sgm[512], out[512], under[512];
    int n = 0, bad = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, " \"%511[^\"]\" : \"%511[^\"]\"", dif, sgm) != 2)
            continue;
        const char *pre = "model.diffusion_model.";
        if (strncmp(sgm, pre, strlen(pre)))
            continue;
        memmove(sgm, sgm + strlen(pre), strlen(sgm) - strlen(pre) + 1);
        strip_param(dif);
        strip_param(sgm);
        n++;
        rb_status s = rb_lora_sgm_unet_module(sgm, out, sizeof out);
        if (s != RB_OK || strcmp(out, dif)) {
            if (bad++ < 5)
                fprintf(stderr, "  %s -> %s, want %s (%s)\n", sgm, s ? "error" : out, dif, s ? rb_last_error() : "");
            continue;
        }
        /* kohya spelling of both namings */
        for (int which = 0; which < 2; which++) {
            snprintf(under, sizeof under, "%s", which ? dif : sgm);
            for (char *p = under; *p; p++)
                if (*p == '.')
                    *p = '_';
            s = rb_lora_kohya_unet_module(under, out, sizeof out);
            if (s != RB_OK || strcmp(out, dif))
                if (bad++ < 5)
                    fprintf(stderr, "  kohya %s -> %s, want %s\n", under, s ? rb_last_error() : out, dif);
        }
    }
    fclose(f);
    CHECK(n > 600, "only %d keymap entries read", n);
    CHECK(bad == 0, "%d of %d names mapped wrongly", bad, n);
    CHECK(rb_lora_sgm_unet_module("input_blocks.4.1.transformer_blocks.0.attn2.to_q", out, sizeof out) == RB_OK &&
              !strcmp(out, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q"),
          "%s", out);
    CHECK(rb_lora_sgm_unet_module("input_blocks.4.0.in_layers.7", out, sizeof out) == RB_ERR_FORMAT, "bad resnet part");
    CHECK(rb_lora_kohya_unet_module("foo_bar", out, sizeof out) == RB_ERR_FORMAT, "not a unet module");
}

/* ---- the golden files ---- */
static int load_golden(rb_lora_set *s, const char *file) {
    char rel[256];
    snprintf(rel, sizeof rel, "lora/%s", file);
    const char *path = t_golden_path(rel);
    if (!path)
        return 0;
    rb_lora_options o = rb_lora_defaults();
    rb_status st = rb_lora_load(s, path, &o);
    if (st != RB_OK)
        fprintf(stderr, "  %s: %s\n", file, rb_last_error());
    return st == RB_OK;
}

static int same_tensor(const rb_tensor *a, const rb_tensor *b) {
    return rb_same_shape(a, b) && !memcmp(a->data, b->data, rb_nbytes(a));
}

static void t_golden_formats(void) {
    static const char *files[4] = {"lora_attn2_peft.safetensors", "lora_attn2_diffusers.safetensors",
                                   "lora_attn2_kohya_diffusers_names.safetensors", "lora_attn2_kohya_sgm.safetensors"};
    static const int fmts[4] = {RB_LORA_FMT_PEFT, RB_LORA_FMT_DIFFUSERS, RB_LORA_FMT_KOHYA, RB_LORA_FMT_KOHYA_SGM};
    rb_lora_set s[4];
    int ok = 1;
    for (int i = 0; i < 4; i++) {
        rb_lora_init(&s[i]);
        if (!load_golden(&s[i], files[i]))
            ok = 0;
    }
    if (t_cur_skipped || !ok) {
        CHECK(t_cur_skipped, "load failed");
        goto out;
    }
    /* 17 transformer blocks x 4 Linear layers of attn2 */
    for (int i = 0; i < 4; i++) {
        CHECK(s[i].n == 68 && s[i].n_unused == 0, "%s: %d pairs, %d unused", files[i], s[i].n, s[i].n_unused);
        CHECK(s[i].formats == fmts[i], "%s: formats %#x", files[i], s[i].formats);
    }
    for (int k = 0; k < s[0].n; k++) {
        const rb_lora_pair *p = s[0].pairs[k];
        CHECK(strstr(p->module, ".attn2.to_") && !strcmp(p->component, "unet"), "%s", p->module);
        CHECK(p->rank == 4 && p->alpha == 4.0f && p->scale == 1.0f, "%s: rank %d alpha %g", p->module, p->rank, p->alpha);
        for (int i = 1; i < 4; i++) {
            const rb_lora_pair *q = rb_lora_find(&s[i], p->module);
            CHECK(q, "%s: no %s", files[i], p->module);
            if (!q)
                continue;
            CHECK(same_tensor(p->down, q->down) && same_tensor(p->up, q->up), "%s: %s A/B differ", files[i], p->module);
            CHECK(rb_lora_multiplier(q) == 1.0f, "%s: %s multiplier %g", files[i], p->module, rb_lora_multiplier(q));
        }
    }
    CHECK(rb_lora_find(&s[3], "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0") &&
              rb_lora_find(&s[3], "up_blocks.0.attentions.2.transformer_blocks.1.attn2.to_k") &&
              !rb_lora_find(&s[3], "up_blocks.0.attentions.2.transformer_blocks.1.attn1.to_k") &&
              !rb_lora_find_in(&s[3], "text_encoder", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q"),
          "find");
out:
    for (int i = 0; i < 4; i++)
        rb_lora_free(&s[i]);
}

static void t_golden_attn12_alpha(void) {
    rb_lora_set peft, kohya;
    rb_lora_init(&peft);
    rb_lora_init(&kohya);
    int ok = load_golden(&peft, "lora_attn12_peft.safetensors") &&
             load_golden(&kohya, "lora_attn12_kohya_sgm_alpha.safetensors");
    if (t_cur_skipped || !ok) {
        CHECK(t_cur_skipped, "load failed");
        goto out;
    }
    CHECK(peft.n == 136 && peft.n_unused == 0 && kohya.n == 136 && kohya.n_unused == 0, "%d/%d pairs, %d/%d unused",
          peft.n, kohya.n, peft.n_unused, kohya.n_unused);
    for (int k = 0; k < peft.n; k++) {
        const rb_lora_pair *p = peft.pairs[k], *q = rb_lora_find(&kohya, p->module);
        CHECK(rb_lora_multiplier(p) == 1.0f, "peft %s: %g", p->module, rb_lora_multiplier(p));
        CHECK(q && same_tensor(p->down, q->down) && same_tensor(p->up, q->up), "kohya %s", p->module);
        /* case.md: alpha 2.0, rank 4 -> multiplier 0.5 */
        CHECK(q && q->alpha == 2.0f && q->rank == 4 && rb_lora_multiplier(q) == 0.5f, "kohya %s alpha", p->module);
    }
out:
    rb_lora_free(&peft);
    rb_lora_free(&kohya);
}

/* Every pair targets an existing UNet Linear of matching shape; merging at scales 1 and 0.5 matches
 * W + s * alpha/r * B@A computed in double. */
static void t_golden_merge(void) {
    const char *up = t_golden_path("lora/diffusion_pytorch_model.safetensors");
    if (!up)
        return;
    rb_safetensors base;
    REQUIRE(rb_st_open(&base, up) == RB_OK, "%s", rb_last_error());
    rb_lora_set s;
    rb_lora_init(&s);
    if (!load_golden(&s, "lora_attn12_kohya_sgm_alpha.safetensors")) {
        CHECK(0, "load");
        rb_st_close(&base);
        return;
    }
    double worst = 0;
    for (int k = 0; k < s.n; k++) {
        const rb_lora_pair *p = s.pairs[k];
        char name[600];
        snprintf(name, sizeof name, "%s.weight", p->module);
        const rb_tensor *W = rb_st_get(&base, name);
        CHECK(W && W->ndim == 2 && W->shape[0] == p->up->shape[0] && W->shape[1] == p->down->shape[1],
              "%s: no matching base weight", name);
        if (!W)
            continue;
        rb_tensor out;
        REQUIRE(rb_tensor_alloc(&out, RB_F32, 2, W->shape, "merged") == RB_OK, "alloc");
        for (int si = 0; si < 2; si++) {
            rb_lora_pair q = *p;
            q.scale = si ? 0.5f : 1.0f;
            REQUIRE(rb_lora_merge(&out, W, &q, 1) == RB_OK, "%s", rb_last_error());
            int64_t O = W->shape[0], I = W->shape[1];
            const float *A = p->down->data, *B = p->up->data, *o = out.data;
            for (int64_t i = 0; i < O; i++)
                for (int64_t j = 0; j < I; j++) {
                    double d = 0;
                    for (int r = 0; r < p->rank; r++)
                        d += (double)B[i * p->rank + r] * A[r * I + j];
                    double ref = rb_tensor_get(W, i * I + j) + q.scale * 2.0 / 4.0 * d;
                    double e = fabs(o[i * I + j] - ref) / (1 + fabs(ref));
                    if (e > worst)
                        worst = e;
                }
        }
        rb_tensor_free(&out);
    }
    CHECK(worst < 1e-6, "merge error %g", worst);
    rb_lora_free(&s);
    rb_st_close(&base);
}

/* ---- run-time application ---- */
static rb_tensor mk(int ndim, const int64_t *shape, unsigned seed) {
    rb_tensor t;
    memset(&t, 0, sizeof t);
    if (rb_tensor_alloc(&t, RB_F32, ndim, shape, "test") == RB_OK)
        t_fill(t.data, (size_t)rb_numel(&t), seed);
    return t;
}

typedef struct { float scale[2], alpha[2]; int n; } lin_args;

static rb_tensor *lora_fn(rb_ctx *c, rb_tensor **in, void *user) {
    lin_args *a = user;
    rb_lora_pair p[2] = {{"unet", "m0", in[3], in[4], (int)in[3]->shape[0], a->alpha[0], a->scale[0]},
                         {"unet", "m1", in[5], in[6], (int)in[5]->shape[0], a->alpha[1], a->scale[1]}};
    return rb_lora_linear(c, in[0], in[1], in[2], p, a->n);
}

static void t_lora_linear(void) {
    const int64_t M = 2, L = 5, I = 12, O = 10;
    int64_t xs[3] = {M, L, I}, ws[2] = {O, I}, bs[1] = {O}, d0[2] = {4, I}, u0[2] = {O, 4}, d1[2] = {3, I},
            u1[2] = {O, 3};
    rb_tensor t[7] = {mk(3, xs, 1), mk(2, ws, 2), mk(1, bs, 3), mk(2, d0, 4), mk(2, u0, 5), mk(2, d1, 6), mk(2, u1, 7)};
    rb_tensor *in[7];
    for (int i = 0; i < 7; i++) {
        REQUIRE(t[i].data, "alloc");
        in[i] = &t[i];
    }
    lin_args a = {{0.7f, -1.3f}, {8.0f, 3.0f}, 2};
    rb_arena ar;
    REQUIRE(rb_arena_init(&ar, 16 << 20, "lora test") == RB_OK, "arena");
    rb_ctx c;
    rb_ctx_init(&c, &ar);
    rb_tensor *y = lora_fn(&c, in, &a);
    REQUIRE(y && y->ndim == 3 && y->shape[2] == O, "lora_linear: %s", rb_last_error());
    /* naive double reference */
    double worst = 0;
    for (int64_t m = 0; m < M * L; m++)
        for (int64_t o = 0; o < O; o++) {
            double ref = rb_tensor_get(in[2], o);
            for (int64_t i = 0; i < I; i++)
                ref += rb_tensor_get(in[0], m * I + i) * rb_tensor_get(in[1], o * I + i);
            for (int p = 0; p < 2; p++) {
                rb_tensor *D = in[3 + 2 * p], *U = in[4 + 2 * p];
                int64_t r = D->shape[0];
                for (int64_t k = 0; k < r; k++) {
                    double h = 0;
                    for (int64_t i = 0; i < I; i++)
                        h += rb_tensor_get(in[0], m * I + i) * rb_tensor_get(D, k * I + i);
                    ref += (double)a.scale[p] * a.alpha[p] / (double)r * h * rb_tensor_get(U, o * r + k);
                }
            }
            double e = fabs(rb_tensor_get(y, m * O + o) - ref);
            if (e > worst)
                worst = e;
        }
    CHECK(worst < 2e-5, "lora_linear vs naive: %g", worst);

    /* same as a plain linear with the merged weight */
    rb_tensor merged;
    REQUIRE(rb_tensor_alloc(&merged, RB_F32, 2, ws, "merged") == RB_OK, "alloc");
    rb_lora_pair p[2] = {{"unet", "m0", in[3], in[4], 4, a.alpha[0], a.scale[0]},
                         {"unet", "m1", in[5], in[6], 3, a.alpha[1], a.scale[1]}};
    REQUIRE(rb_lora_merge(&merged, in[1], p, 2) == RB_OK, "%s", rb_last_error());
    rb_tensor *ym = rb_linear(&c, in[0], &merged, in[2]);
    double md = 0;
    REQUIRE(ym, "linear");
    t_allclose(ym->data, y->data, (size_t)rb_numel(y), 0, 0, &md);
    CHECK(md < 2e-5, "merged vs run-time: %g", md);
    /* no pairs = plain linear; a bad pair is an error naming the module */
    rb_tensor *y0 = rb_lora_linear(&c, in[0], in[1], in[2], NULL, 0), *yl = rb_linear(&c, in[0], in[1], in[2]);
    REQUIRE(y0 && yl, "plain");
    CHECK(!memcmp(y0->data, yl->data, rb_nbytes(yl)), "no pairs differs from rb_linear");
    rb_lora_pair badp = {"unet", "bad.module", in[4], in[3], 4, 4, 1};
    CHECK(!rb_lora_linear(&c, in[0], in[1], in[2], &badp, 1) && c.status == RB_ERR_INVALID &&
              strstr(rb_last_error(), "bad.module"),
          "bad pair accepted: %s", rb_last_error());
    rb_ctx_clear(&c);
    rb_tensor_free(&merged);
    rb_arena_free(&ar);

    /* gradients into x, down and up of both pairs (W, b frozen as in LoRA training), then into W and b too */
    for (int i = 0; i < 7; i++)
        t[i].requires_grad = i == 0 || i >= 3;
    double g = t_gradcheck(lora_fn, in, 7, &a, 1e-2);
    CHECK(g < 2e-3, "gradcheck (x, A, B): %g", g);
    t[1].requires_grad = t[2].requires_grad = 1;
    g = t_gradcheck(lora_fn, in, 7, &a, 1e-2);
    CHECK(g < 2e-3, "gradcheck (all): %g", g);
    for (int i = 0; i < 7; i++)
        rb_tensor_free(&t[i]);
}

/* ---- files written here ---- */
static const char *tmp_path(const char *name) {
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", t_tmpdir(), name);
    return buf;
}

static void t_unused_keys(void) {
    int64_t ds[2] = {2, 6}, us[2] = {5, 2}, os[1] = {3};
    rb_tensor d = mk(2, ds, 11), u = mk(2, us, 12), other = mk(1, os, 13);
    int64_t alpha_v = 1;
    rb_tensor alpha = rb_tensor_wrap(&alpha_v, RB_I64, 0, NULL);
    const char *names[6] = {
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_q.lora_A.weight",
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_q.lora_B.weight",
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight", /* no lora_B */
        "unet.some_extra_tensor",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v.alpha", /* alpha without A/B */
        "lora_unet_nonsense_module.lora_down.weight",
    };
    const rb_tensor *ts[6] = {&d, &u, &d, &other, &alpha, &d};
    const char *path = tmp_path("unused.safetensors");
    REQUIRE(rb_st_write(path, 6, names, ts, 0, NULL, NULL) == RB_OK, "%s", rb_last_error());
    rb_lora_set s;
    rb_lora_options o = rb_lora_defaults();
    o.log_unused = 0;
    REQUIRE(rb_lora_load(&s, path, &o) == RB_OK, "%s", rb_last_error());
    CHECK(s.n == 1 && rb_lora_find(&s, "mid_block.attentions.0.transformer_blocks.0.attn2.to_q"), "%d pairs", s.n);
    CHECK(s.n_unused == 4, "%d unused", s.n_unused);
    for (int i = 2; i < 6; i++) {
        int found = 0;
        for (int j = 0; j < s.n_unused; j++)
            found |= !strcmp(s.unused[j], names[i]);
        CHECK(found, "%s not reported", names[i]);
    }
    rb_lora_free(&s);
    rb_tensor_free(&d);
    rb_tensor_free(&u);
    rb_tensor_free(&other);
}

/* The older attention-processor keys, f16 tensors, an I64 kohya alpha, lora_adapter_metadata and the
 * caller's default alpha. */
static void t_other_spellings(void) {
    int64_t ds[2] = {2, 6}, us[2] = {5, 2};
    rb_tensor d = mk(2, ds, 21), u = mk(2, us, 22), dh, uh;
    REQUIRE(rb_tensor_alloc(&dh, RB_F16, 2, ds, "f16") == RB_OK && rb_tensor_alloc(&uh, RB_F16, 2, us, "f16") == RB_OK,
            "alloc");
    REQUIRE(rb_tensor_copy(&dh, &d) == RB_OK && rb_tensor_copy(&uh, &u) == RB_OK, "copy");
    int64_t a64 = 1;
    rb_tensor alpha = rb_tensor_wrap(&a64, RB_I64, 0, NULL);
    const char *names[7] = {
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight",
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight",
        "lora_unet_output_blocks_2_1_transformer_blocks_1_attn1_to_k.lora_down.weight",
        "lora_unet_output_blocks_2_1_transformer_blocks_1_attn1_to_k.lora_up.weight",
        "lora_unet_output_blocks_2_1_transformer_blocks_1_attn1_to_k.alpha",
        "lora_te2_text_model_encoder_layers_3_self_attn_q_proj.lora_down.weight",
        "lora_te2_text_model_encoder_layers_3_self_attn_q_proj.lora_up.weight",
    };
    const rb_tensor *ts[7] = {&d, &u, &dh, &uh, &alpha, &d, &u};
    const char *mk_[1] = {"lora_adapter_metadata"}, *mv[1] = {"{\n  \"unet.lora_alpha\": 8,\n  \"unet.r\": 2\n}"};
    const char *path = tmp_path("spellings.safetensors");
    REQUIRE(rb_st_write(path, 7, names, ts, 1, mk_, mv) == RB_OK, "%s", rb_last_error());
    rb_lora_set s;
    REQUIRE(rb_lora_load(&s, path, NULL) == RB_OK, "%s", rb_last_error());
    CHECK(s.n == 3 && s.n_unused == 0, "%d pairs, %d unused", s.n, s.n_unused);
    const rb_lora_pair *p = rb_lora_find(&s, "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0");
    CHECK(p && same_tensor(p->down, &d) && p->alpha == 8.0f, "processor key: alpha %g", p ? p->alpha : -1);
    p = rb_lora_find(&s, "up_blocks.0.attentions.2.transformer_blocks.1.attn1.to_k");
    CHECK(p && p->alpha == 1.0f && rb_lora_multiplier(p) == 0.5f, "kohya I64 alpha");
    int close = p != NULL;
    for (int64_t i = 0; p && i < 12; i++)
        close &= ((const float *)p->down->data)[i] == (float)rb_tensor_get(&dh, i);
    CHECK(close, "f16 down not converted");
    p = rb_lora_find_in(&s, "text_encoder_2", "text_model.encoder.layers.3.self_attn.q_proj");
    CHECK(p && p->alpha == 2.0f, "te2 kohya without alpha: alpha = rank");
    rb_lora_free(&s);
    rb_lora_options o = rb_lora_defaults();
    o.default_alpha = 3;
    o.scale = 0.25f;
    REQUIRE(rb_lora_load(&s, path, &o) == RB_OK, "%s", rb_last_error());
    p = rb_lora_find(&s, "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0");
    CHECK(p && p->alpha == 3.0f && p->scale == 0.25f, "default_alpha/scale options");
    rb_lora_set_scale(&s, 2.0f);
    CHECK(p && p->scale == 2.0f, "set_scale");
    rb_lora_free(&s);
    rb_tensor_free(&d);
    rb_tensor_free(&u);
    rb_tensor_free(&dh);
    rb_tensor_free(&uh);
}

static void t_save_roundtrip(void) {
    rb_lora_set s, r;
    rb_lora_init(&s);
    rb_lora_pair *a = rb_lora_add(&s, "unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", 4, 36, 16, 4);
    rb_lora_pair *b = rb_lora_add(&s, "unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q", 4, 16, 16, 2);
    REQUIRE(a && b, "add: %s", rb_last_error());
    CHECK(!rb_lora_add(&s, "unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q", 4, 16, 16, 2),
          "duplicate module accepted");
    t_fill(a->down->data, 4 * 36, 31);
    t_fill(b->up->data, 16 * 4, 32);
    const char *path = tmp_path("saved.safetensors");
    REQUIRE(rb_lora_save(&s, path) == RB_OK, "%s", rb_last_error());
    REQUIRE(rb_lora_load(&r, path, NULL) == RB_OK, "%s", rb_last_error());
    CHECK(r.n == 2 && r.n_unused == 0 && r.formats == RB_LORA_FMT_DIFFUSERS, "%d pairs %d unused", r.n, r.n_unused);
    const rb_lora_pair *ra = rb_lora_find(&r, a->module), *rbp = rb_lora_find(&r, b->module);
    CHECK(ra && same_tensor(ra->down, a->down) && same_tensor(ra->up, a->up) && ra->alpha == 4.0f, "pair a");
    CHECK(rbp && same_tensor(rbp->down, b->down) && same_tensor(rbp->up, b->up) && rbp->alpha == 2.0f, "pair b");
    rb_lora_free(&r);
    rb_lora_free(&s);
}

static void t_bad_files(void) {
    int64_t ds[2] = {2, 6}, us[2] = {5, 3}, vs[1] = {2};
    rb_tensor d = mk(2, ds, 41), u = mk(2, us, 42), v = mk(1, vs, 43);
    const char *names[3] = {"unet.x.to_q.lora_A.weight", "unet.x.to_q.lora_B.weight", "unet.x.to_q.alpha"};
    const rb_tensor *ts[3] = {&d, &u, &v};
    const char *path = tmp_path("bad.safetensors");
    rb_lora_set s;
    REQUIRE(rb_st_write(path, 2, names, ts, 0, NULL, NULL) == RB_OK, "%s", rb_last_error());
    CHECK(rb_lora_load(&s, path, NULL) == RB_ERR_FORMAT && strstr(rb_last_error(), "lora_A"), "rank mismatch: %s",
          rb_last_error());
    rb_tensor u2 = mk(2, (int64_t[]){5, 2}, 44);
    ts[1] = &u2;
    REQUIRE(rb_st_write(path, 3, names, ts, 0, NULL, NULL) == RB_OK, "%s", rb_last_error());
    CHECK(rb_lora_load(&s, path, NULL) == RB_ERR_FORMAT && strstr(rb_last_error(), "alpha"), "vector alpha: %s",
          rb_last_error());
    CHECK(rb_lora_load(&s, tmp_path("missing.safetensors"), NULL) == RB_ERR_IO, "missing file");
    rb_tensor_free(&d);
    rb_tensor_free(&u);
    rb_tensor_free(&u2);
    rb_tensor_free(&v);
}

int main(void) {
    RUN(t_sgm_table_vs_keymap);
    RUN(t_golden_formats);
    RUN(t_golden_attn12_alpha);
    RUN(t_golden_merge);
    RUN(t_lora_linear);
    RUN(t_unused_keys);
    RUN(t_other_spellings);
    RUN(t_save_roundtrip);
    RUN(t_bad_files);
    return t_done();
}
