/* LoRA applied to the tiny SDXL UNet at run time against golden/lora: all six files (PEFT,
 * diffusers, kohya with diffusers or SGM names, with and without alpha), scales 1.0 and 0.5. */
#include "gradcheck.h"
#include "harness.h"
#include "models/unet.h"

static rb_unet unet;
static rb_safetensors io;
static int ready;

static int setup(void) {
    if (ready)
        return 1;
    char cfg[4096], wts[4096], iop[4096];
    const char *p = t_golden_path("lora/config.json");
    if (!p)
        return 0;
    snprintf(cfg, sizeof cfg, "%s", p);
    snprintf(wts, sizeof wts, "%s", t_golden_path("lora/diffusion_pytorch_model.safetensors"));
    snprintf(iop, sizeof iop, "%s", t_golden_path("lora/io.safetensors"));
    if (rb_unet_load(&unet, cfg, wts) != RB_OK || rb_st_open(&io, iop) != RB_OK) {
        CHECK(0, "setup: %s", rb_last_error());
        return 0;
    }
    return ready = 1;
}

static void run(const char *file, float scale, const char *want_name) {
    if (!setup())
        return;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", t_golden_path("lora"), file);
    rb_lora_set set;
    rb_lora_options opt = rb_lora_defaults();
    opt.scale = scale;
    REQUIRE(rb_lora_load(&set, path, &opt) == RB_OK, "%s", rb_last_error());
    rb_status s = rb_unet_attach_lora(&unet, &set);
    CHECK(s == RB_OK, "attach: %s", rb_last_error());
    rb_arena a;
    rb_arena_init(&a, 64 << 20, "test");
    rb_ctx c;
    rb_ctx_init(&c, &a);
    rb_tensor x = *rb_st_get(&io, "sample"), t = *rb_st_get(&io, "timestep"), e = *rb_st_get(&io, "encoder_hidden_states");
    rb_tensor te = *rb_st_get(&io, "text_embeds"), ti = *rb_st_get(&io, "time_ids");
    rb_unet_in in = {.sample = &x, .timestep = &t, .encoder_hidden_states = &e, .text_embeds = &te, .time_ids = &ti};
    rb_unet_out out;
    if (s == RB_OK && rb_unet_forward(&c, &unet, &in, &out) == RB_OK) {
        const rb_tensor *want = rb_st_get(&io, want_name);
        double md;
        /* the reference's own merge-vs-LoRA difference is 2.4e-6; the plain UNet matches to 2.1e-6 */
        CHECK(t_allclose(out.sample->data, want->data, (size_t)rb_numel(want), 2e-5f, 0, &md), "%s x %.1f: max |diff| %g",
              file, scale, md);
    } else {
        CHECK(0, "forward: %s", rb_last_error());
    }
    rb_unet_detach_lora(&unet);
    rb_arena_free(&a);
    rb_lora_free(&set);
}

static void t_attn2_formats(void) {
    static const char *files[] = {"lora_attn2_peft.safetensors", "lora_attn2_diffusers.safetensors",
                                  "lora_attn2_kohya_diffusers_names.safetensors", "lora_attn2_kohya_sgm.safetensors"};
    for (int i = 0; i < 4; i++) {
        run(files[i], 1.0f, "out_sample_attn2_scale1.0");
        run(files[i], 0.5f, "out_sample_attn2_scale0.5");
    }
}

static void t_attn12(void) {
    run("lora_attn12_peft.safetensors", 1.0f, "out_sample_attn12_peft_scale1.0");
    run("lora_attn12_kohya_sgm_alpha.safetensors", 1.0f, "out_sample_attn12_kohya_alpha_scale1.0");
    run("lora_attn12_kohya_sgm_alpha.safetensors", 0.5f, "out_sample_attn12_kohya_alpha_scale0.5");
}

static void t_two_loras(void) {
    /* two sets at once: half of the attn2 LoRA twice equals the whole at scale 1.0 */
    if (!setup())
        return;
    char path[4096];
    snprintf(path, sizeof path, "%s/lora_attn2_peft.safetensors", t_golden_path("lora"));
    rb_lora_set s1, s2;
    rb_lora_options opt = rb_lora_defaults();
    opt.scale = 0.5f;
    REQUIRE(rb_lora_load(&s1, path, &opt) == RB_OK && rb_lora_load(&s2, path, &opt) == RB_OK, "%s", rb_last_error());
    REQUIRE(rb_unet_attach_lora(&unet, &s1) == RB_OK && rb_unet_attach_lora(&unet, &s2) == RB_OK, "%s", rb_last_error());
    rb_arena a;
    rb_arena_init(&a, 64 << 20, "test");
    rb_ctx c;
    rb_ctx_init(&c, &a);
    rb_tensor x = *rb_st_get(&io, "sample"), t = *rb_st_get(&io, "timestep"), e = *rb_st_get(&io, "encoder_hidden_states");
    rb_tensor te = *rb_st_get(&io, "text_embeds"), ti = *rb_st_get(&io, "time_ids");
    rb_unet_in in = {.sample = &x, .timestep = &t, .encoder_hidden_states = &e, .text_embeds = &te, .time_ids = &ti};
    rb_unet_out out;
    REQUIRE(rb_unet_forward(&c, &unet, &in, &out) == RB_OK, "%s", rb_last_error());
    const rb_tensor *want = rb_st_get(&io, "out_sample_attn2_scale1.0");
    double md;
    CHECK(t_allclose(out.sample->data, want->data, (size_t)rb_numel(want), 2e-5f, 0, &md), "max |diff| %g", md);
    rb_unet_detach_lora(&unet);
    rb_arena_free(&a);
    rb_lora_free(&s1);
    rb_lora_free(&s2);
}

/* LoRA gradients through the UNet with transformer blocks recomputed in backward equal those of a
 * plain taped run, while much less stays in the arena between forward and backward. */
static double grads_run(rb_lora_set *set, int recompute, float *out_grads, size_t *used_after_forward) {
    rb_arena a, g;
    rb_arena_init(&a, 256 << 20, "act");
    rb_arena_init(&g, 256 << 20, "grads");
    rb_tape tape;
    rb_tape_init(&tape, 256, &g);
    rb_ctx c;
    rb_ctx_init(&c, &a);
    c.tape = &tape;
    for (int i = 0; i < set->n; i++)
        for (int k = 0; k < 2; k++) {
            rb_tensor *t = k ? set->pairs[i]->up : set->pairs[i]->down;
            memset(t->grad->data, 0, rb_nbytes(t->grad));
        }
    rb_tensor x = *rb_st_get(&io, "sample"), t = *rb_st_get(&io, "timestep"), e = *rb_st_get(&io, "encoder_hidden_states");
    rb_tensor te = *rb_st_get(&io, "text_embeds"), ti = *rb_st_get(&io, "time_ids");
    rb_unet_in in = {.sample = &x, .timestep = &t, .encoder_hidden_states = &e, .text_embeds = &te, .time_ids = &ti,
                     .recompute = recompute};
    rb_unet_out out;
    double loss = NAN;
    if (rb_unet_forward(&c, &unet, &in, &out) == RB_OK) {
        *used_after_forward = a.used;
        rb_tensor *dout = rb_arena_tensor(&a, RB_F32, 4, out.sample->shape);
        t_fill(dout->data, (size_t)rb_numel(dout), 7);
        if (rb_backward_with(&c, out.sample, dout) == RB_OK)
            loss = 0;
    }
    size_t k = 0;
    for (int i = 0; i < set->n; i++)
        for (int j = 0; j < 2; j++) {
            rb_tensor *gt = (j ? set->pairs[i]->up : set->pairs[i]->down)->grad;
            memcpy(out_grads + k, gt->data, rb_nbytes(gt));
            k += (size_t)rb_numel(gt);
        }
    rb_tape_free(&tape);
    rb_arena_free(&a);
    rb_arena_free(&g);
    return loss;
}

static void t_recompute_gradients(void) {
    if (!setup())
        return;
    char path[4096];
    snprintf(path, sizeof path, "%s/lora_attn2_peft.safetensors", t_golden_path("lora"));
    rb_lora_set set;
    rb_lora_options opt = rb_lora_defaults();
    REQUIRE(rb_lora_load(&set, path, &opt) == RB_OK && rb_unet_attach_lora(&unet, &set) == RB_OK, "%s", rb_last_error());
    size_t n = 0;
    for (int i = 0; i < set.n; i++)
        for (int k = 0; k < 2; k++) {
            rb_tensor *t = k ? set.pairs[i]->up : set.pairs[i]->down;
            t->requires_grad = 1;
            t->grad = malloc(sizeof *t->grad);
            REQUIRE(rb_tensor_alloc(t->grad, RB_F32, t->ndim, t->shape, "grad") == RB_OK, "grad");
            n += (size_t)rb_numel(t);
        }
    float *g0 = malloc(n * sizeof *g0), *g1 = malloc(n * sizeof *g1);
    size_t used0 = 0, used1 = 0;
    CHECK(grads_run(&set, 0, g0, &used0) == 0 && grads_run(&set, 1, g1, &used1) == 0, "runs: %s", rb_last_error());
    double md, gmax = 0;
    t_allclose(g1, g0, n, 0, 0, &md);
    for (size_t i = 0; i < n; i++)
        gmax = fmax(gmax, fabs(g0[i]));
    CHECK(gmax > 0 && md == 0, "recomputed gradients differ by %g (max |grad| %g)", md, gmax);
    CHECK(used1 * 2 < used0, "arena after forward: %zu bytes recomputing vs %zu keeping everything", used1, used0);
    fprintf(stderr, "  arena after forward: %zu bytes recomputing, %zu keeping everything\n", used1, used0);
    for (int i = 0; i < set.n; i++)
        for (int k = 0; k < 2; k++) {
            rb_tensor *t = k ? set.pairs[i]->up : set.pairs[i]->down;
            rb_tensor_free(t->grad);
            free(t->grad);
            t->grad = NULL;
        }
    free(g0);
    free(g1);
    rb_unet_detach_lora(&unet);
    rb_lora_free(&set);
}

static void t_unsupported_module(void) {
    if (!setup())
        return;
    rb_lora_set set;
    rb_lora_init(&set);
    REQUIRE(rb_lora_add(&set, "unet", "conv_in", 2, 4, 8, 2.0f) != NULL, "add");
    CHECK(rb_unet_attach_lora(&unet, &set) == RB_ERR_UNSUPPORTED && strstr(rb_last_error(), "conv_in"),
          "a LoRA on a non-attention module is refused at run time: %s", rb_last_error());
    rb_unet_detach_lora(&unet);
    rb_lora_free(&set);
}

int main(void) {
    RUN(t_attn2_formats);
    RUN(t_attn12);
    RUN(t_two_loras);
    RUN(t_recompute_gradients);
    RUN(t_unsupported_module);
    if (ready) {
        rb_st_close(&io);
        rb_unet_free(&unet);
    }
    return t_done();
}
