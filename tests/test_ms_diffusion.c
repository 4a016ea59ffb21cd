/* MS-Diffusion on the tiny SDXL UNet against golden/ms_diffusion: the image-token context, and one
 * CFG UNet call with the box-masked cross-attention processors (scale 0.6). */
#include "harness.h"
#include "models/ms_adapter.h"

static rb_unet unet;
static rb_ms_adapter ad;
static rb_safetensors io;
static int ready;

static int setup(void) {
    if (ready)
        return 1;
    char cfg[4096], wts[4096], adp[4096], iop[4096];
    const char *p;
    if (!(p = t_golden_path("ms_diffusion/unet_config.json")))
        return 0;
    snprintf(cfg, sizeof cfg, "%s", p);
    snprintf(wts, sizeof wts, "%s", t_golden_path("ms_diffusion/unet_diffusion_pytorch_model.safetensors"));
    snprintf(adp, sizeof adp, "%s", t_golden_path("ms_diffusion/ms_adapter.bin"));
    snprintf(iop, sizeof iop, "%s", t_golden_path("ms_diffusion/io.safetensors"));
    if (rb_unet_load(&unet, cfg, wts) != RB_OK || rb_ms_adapter_load(&ad, adp, &unet, 8) != RB_OK ||
        rb_st_open(&io, iop) != RB_OK) {
        CHECK(0, "setup: %s", rb_last_error());
        return 0;
    }
    return ready = 1;
}

static const rb_tensor *get(const char *name) { return rb_st_get(&io, name); }

static void t_context(void) {
    if (!setup())
        return;
    rb_arena a;
    rb_arena_init(&a, 16 << 20, "test");
    rb_ctx c;
    rb_ctx_init(&c, &a);
    rb_tensor tok = *get("resampler_tokens");
    rb_tensor *img = rb_ms_image_tokens(&c, &ad, &tok);
    REQUIRE(img && img->shape[1] == 4 + 2 * 16, "image tokens: %s", rb_last_error());
    /* cond row of the golden context = [77 text | image tokens] */
    const rb_tensor *ctxg = get("encoder_hidden_states_with_image_tokens");
    const float *want = (const float *)ctxg->data + (113 + 77) * 36;
    double md;
    CHECK(t_allclose(img->data, want, 36 * 36, 0, 0, &md), "image tokens differ by %g", md);
    rb_arena_free(&a);
}

static void t_unet_masked(void) {
    if (!setup())
        return;
    rb_arena a;
    rb_arena_init(&a, 64 << 20, "test");
    rb_ctx c;
    rb_ctx_init(&c, &a);
    rb_tensor sample = *get("sample"), t = *get("timestep"), ctx = *get("encoder_hidden_states_with_image_tokens");
    rb_tensor te = *get("text_embeds"), ti = *get("time_ids");
    rb_ms_call call = {.adapter = &ad, .n_subjects = 2, .boxes = get("cross_attention_boxes")->data, .scale = 0.6f};
    rb_unet_proc *procs = calloc((size_t)unet.n_attn, sizeof *procs);
    rb_ms_procs(&unet, &call, procs);
    rb_unet_in in = {.sample = &sample, .timestep = &t, .encoder_hidden_states = &ctx, .text_embeds = &te,
                     .time_ids = &ti, .procs = procs};
    rb_unet_out out;
    REQUIRE(rb_unet_forward(&c, &unet, &in, &out) == RB_OK, "forward: %s", rb_last_error());
    const rb_tensor *want = get("out_sample");
    double md;
    /* case.md: ~1e-5 absolute for a float32 implementation */
    CHECK(t_allclose(out.sample->data, want->data, (size_t)rb_numel(want), 2e-5f, 0, &md), "out_sample max |diff| %g", md);
    /* the uncond row (zero boxes) gets no image contribution: equal to a plain UNet call on it */
    rb_ctx_clear(&c);
    rb_arena_reset(&a, 0);
    rb_tensor s0, c0, te0, ti0;
    rb_view_slice(&s0, &sample, 0, 0, 1), rb_view_slice(&c0, &ctx, 0, 0, 1);
    rb_view_slice(&te0, &te, 0, 0, 1), rb_view_slice(&ti0, &ti, 0, 0, 1);
    rb_tensor text0;
    rb_view_slice(&text0, &c0, 1, 0, 77);
    rb_unet_in plain = {.sample = &s0, .timestep = &t, .encoder_hidden_states = &text0, .text_embeds = &te0, .time_ids = &ti0};
    rb_unet_out o2;
    REQUIRE(rb_unet_forward(&c, &unet, &plain, &o2) == RB_OK, "plain forward: %s", rb_last_error());
    CHECK(t_allclose(o2.sample->data, want->data, 4 * 16 * 16, 2e-5f, 0, &md), "uncond row vs plain UNet: %g", md);
    /* a context of the wrong length is refused, naming the module */
    rb_ctx_clear(&c);
    rb_arena_reset(&a, 0);
    call.n_subjects = 3;
    CHECK(rb_unet_forward(&c, &unet, &in, &out) != RB_OK && strstr(rb_last_error(), "attn2"),
          "context length checked: %s", rb_last_error());
    free(procs);
    rb_arena_free(&a);
}

static void t_box_cells(void) {
    int64_t r0, r1, c0, c1;
    rb_ms_box_cells((const float[]){0.05f, 0.2f, 0.45f, 0.8f}, 16, 16, &r0, &r1, &c0, &c1);
    /* columns floor(0.8)=0 .. ceil(7.2)=8, rows floor(3.2)=3 .. ceil(12.8)=13 */
    CHECK(c0 == 0 && c1 == 8 && r0 == 3 && r1 == 13, "cells %lld..%lld x %lld..%lld", (long long)c0, (long long)c1,
          (long long)r0, (long long)r1);
    rb_ms_box_cells((const float[]){-0.5f, 0.0f, 1.5f, 1.0f}, 8, 8, &r0, &r1, &c0, &c1);
    CHECK(c0 == 0 && c1 == 8 && r0 == 0 && r1 == 8, "clamped to the grid");
}

int main(void) {
    RUN(t_box_cells);
    RUN(t_context);
    RUN(t_unet_masked);
    if (ready) {
        rb_st_close(&io);
        rb_ms_adapter_free(&ad);
        rb_unet_free(&unet);
    }
    return t_done();
}
