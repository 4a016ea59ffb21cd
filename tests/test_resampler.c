/* MS-Diffusion grounding resampler against golden/ms_diffusion, from both ms_adapter.safetensors and
 * the original torch pickle ms_adapter.bin. */
#include "harness.h"
#include "models/resampler.h"

static void run(const char *file) {
    const char *wp = t_golden_path(file);
    if (!wp)
        return;
    char wpath[4096], iopath[4096];
    snprintf(wpath, sizeof wpath, "%s", wp);
    snprintf(iopath, sizeof iopath, "%s", t_golden_path("ms_diffusion/io.safetensors"));
    rb_weights w;
    REQUIRE(rb_weights_open(&w, wpath) == RB_OK, "%s", rb_last_error());
    rb_resampler r;
    rb_status s = rb_resampler_load(&r, &w, "image_proj.", 8);
    CHECK(s == RB_OK, "load: %s", rb_last_error());
    rb_safetensors io;
    if (s != RB_OK || rb_st_open(&io, iopath) != RB_OK) {
        rb_weights_close(&w);
        return;
    }
    CHECK(r.cfg.depth == 2 && r.cfg.dim == 32 && r.cfg.heads == 4 && r.cfg.num_queries == 16 && r.cfg.output_dim == 36 &&
              r.cfg.phrase_embeddings_dim == 16 && r.cfg.ff_mult == 4,
          "config read from shapes");
    rb_arena a;
    rb_arena_init(&a, 32 << 20, "resampler test");
    rb_ctx c;
    rb_ctx_init(&c, &a);
    rb_tensor x = *rb_st_get(&io, "image_embeds"), ph = *rb_st_get(&io, "phrase_embeds");
    const rb_tensor *boxes = rb_st_get(&io, "boxes"), *want = rb_st_get(&io, "resampler_tokens");
    rb_tensor *y = rb_resampler_forward(&c, &r, &x, boxes->data, &ph, (int[]){0, 0});
    REQUIRE(y && rb_numel(y) == rb_numel(want), "forward: %s", rb_last_error());
    double md;
    /* case.md: ~1e-5 absolute expected of a float32 implementation (values up to 3.5) */
    CHECK(t_allclose(y->data, want->data, (size_t)rb_numel(want), 1e-5f, 0, &md), "%s: max |diff| %g", file, md);
    /* every adapter tensor but the attention processors' (used by the UNet) and the dummy tokens */
    int unused = 0;
    for (int i = 0; i < w.n; i++)
        unused += !w.used[i] && !strncmp(w.names[i], "image_proj.", 11);
    CHECK(unused == 0, "%d resampler tensors unused", unused);
    /* dropped grounding uses the learned latents: the output changes and stays finite */
    rb_tensor *yd = rb_resampler_forward(&c, &r, &x, boxes->data, &ph, (int[]){1, 0});
    REQUIRE(yd, "%s", rb_last_error());
    t_allclose(yd->data, y->data, 16 * 36, 0, 0, &md);
    CHECK(md > 1e-3, "dropping grounding changes subject 0");
    t_allclose((float *)yd->data + 16 * 36, (float *)y->data + 16 * 36, 16 * 36, 0, 0, &md);
    CHECK(md == 0, "and leaves subject 1 alone");
    float bad[8] = {0, 0, NAN, 1, 0, 0, 1, 1};
    rb_ctx_clear(&c);
    CHECK(!rb_resampler_forward(&c, &r, &x, bad, &ph, NULL) && strstr(rb_last_error(), "non-finite"), "NaN box refused");
    rb_arena_free(&a);
    rb_st_close(&io);
    rb_resampler_free(&r);
    rb_weights_close(&w);
}

static void t_resampler_safetensors(void) { run("ms_diffusion/ms_adapter.safetensors"); }
static void t_resampler_pickle(void) { run("ms_diffusion/ms_adapter.bin"); }

static void t_fourier(void) {
    float out[64], box[4] = {0.05f, 0.2f, 0.45f, 0.8f};
    rb_fourier_boxes(out, box, 8);
    /* index k*8 + s*4 + c: sin/cos of 100^(k/8) * box[c] */
    CHECK(fabsf(out[0] - sinf(0.05f)) < 1e-7f && fabsf(out[4] - cosf(0.05f)) < 1e-7f, "k = 0");
    CHECK(fabsf(out[7 * 8 + 4 + 3] - cosf(powf(100.0f, 7.0f / 8) * 0.8f)) < 1e-6f, "k = 7, cos, y1");
}

int main(void) {
    RUN(t_fourier);
    RUN(t_resampler_safetensors);
    RUN(t_resampler_pickle);
    return t_done();
}
