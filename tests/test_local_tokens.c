/* DreamRelation's local tokens (models/local_tokens.h) against golden/local_tokens (the vendored
 * open_clip's encode_pseudo_boxes v2 + torchvision roi_align, from all three checkpoint forms) and
 * golden/pipeline_dreamrelation (the resampler input of the with_local run, from the PNGs through the
 * 896 processor); pooling also against a naive double-precision roi_align written here, and its
 * gradient by finite differences. Tolerances: 10x the reference's own fp32-vs-fp64 difference of
 * each tensor (case.md tables). */
#include "gradcheck.h"
#include "harness.h"
#include "golden_models.h"
#include "models/local_tokens.h"

#include <limits.h>
#include <unistd.h>

#include "io/image.h"
#include "io/safetensors.h"
#include "models/image_processor.h"

/* [n, g, g, D] channels-last -> [n, D, g, g] as the golden stores dense_features */
static rb_tensor *to_nchw(rb_ctx *c, rb_tensor *x) { return rb_permute(c, x, (int[]){0, 3, 1, 2}); }

/* ---- naive roi_align in double (torchvision's formulas, aligned=True, output 1x1, adaptive grid) ---- */
static double bilinear(const float *img, int64_t H, int64_t W, int64_t D, int64_t d, double y, double x) {
    if (y < -1.0 || y > (double)H || x < -1.0 || x > (double)W)
        return 0;
    if (y <= 0) y = 0;
    if (x <= 0) x = 0;
    int64_t y0 = (int64_t)y, x0 = (int64_t)x, y1, x1;
    if (y0 >= H - 1) y1 = y0 = H - 1, y = (double)y0;
    else y1 = y0 + 1;
    if (x0 >= W - 1) x1 = x0 = W - 1, x = (double)x0;
    else x1 = x0 + 1;
    double ly = y - (double)y0, lx = x - (double)x0;
#define V(yy, xx) (double)img[((yy) * W + (xx)) * D + d]
    return (1 - ly) * (1 - lx) * V(y0, x0) + (1 - ly) * lx * V(y0, x1) + ly * (1 - lx) * V(y1, x0) + ly * lx * V(y1, x1);
#undef V
}

/* expected [n, P*P, D] from dense [n, H, W, D]: box k = i*P + j, x range i (outer), y range j */
static void naive_pool(double *out, const float *dense, int64_t n, int64_t H, int64_t W, int64_t D, int P, int official) {
    for (int64_t b = 0; b < n; b++)
        for (int k = 0; k < P * P; k++)
            for (int64_t d = 0; d < D; d++) {
                int i = k / P, j = k % P;
                double x0 = (double)i / P * W - 0.5, x1 = (double)(i + 1) / P * W - 0.5;
                double y0 = (double)j / P * H - 0.5, y1 = (double)(j + 1) / P * H - 0.5;
                int gx = (int)ceil(x1 - x0), gy = (int)ceil(y1 - y0);
                double s = 0;
                for (int iy = 0; iy < gy; iy++)
                    for (int ix = 0; ix < gx; ix++)
                        s += bilinear(dense + (official ? 0 : b) * H * W * D, H, W, D, d,
                                      y0 + (iy + 0.5) * (y1 - y0) / gy, x0 + (ix + 0.5) * (x1 - x0) / gx);
                out[(b * P * P + k) * D + d] = s / (gx * gy);
            }
}

static void t_pool_vs_naive(void) {
    rb_arena arena;
    REQUIRE(rb_arena_init(&arena, 16 << 20, "local pool test") == RB_OK, "arena");
    rb_ctx c;
    rb_ctx_init(&c, &arena);
    /* grids: 8 (integer 2x2 blocks: plain means), 13 (fractional boxes), 7 x 10 (non-square), P = 3 too */
    static const int cases[][3] = {{8, 8, 4}, {13, 13, 4}, {7, 10, 4}, {13, 13, 3}, {3, 3, 4}};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        int64_t n = 2, H = cases[ci][0], W = cases[ci][1], D = 5;
        int P = cases[ci][2];
        float *x = malloc(sizeof(float) * (size_t)(n * H * W * D));
        double *want = malloc(sizeof(double) * (size_t)(n * P * P * D));
        float *wantf = malloc(sizeof(float) * (size_t)(n * P * P * D));
        t_fill(x, (size_t)(n * H * W * D), (unsigned)ci + 7);
        rb_tensor t = rb_tensor_wrap(x, RB_F32, 4, (int64_t[]){n, H, W, D});
        for (int official = 0; official < 2; official++) {
            naive_pool(want, x, n, H, W, D, P, official);
            for (int64_t i = 0; i < n * P * P * D; i++)
                wantf[i] = (float)want[i];
            rb_tensor *got = rb_local_pool(&c, &t, P, official);
            REQUIRE(got && got->shape[0] == n && got->shape[1] == P * P && got->shape[2] == D, "pool: %s",
                    rb_last_error());
            double md;
            CHECK(t_allclose(got->data, wantf, (size_t)(n * P * P * D), 1e-6f, 0, &md),
                  "%dx%d P=%d official=%d: max |diff| %g", (int)H, (int)W, P, official, md);
            if (official) /* every subject gets subject 0's tokens */
                CHECK(!memcmp(got->data, (float *)got->data + P * P * D, sizeof(float) * (size_t)(P * P * D)),
                      "official rows equal");
        }
        if (H == 8 && W == 8) { /* a box covering 2x2 whole cells is the exact block mean */
            rb_tensor *got = rb_local_pool(&c, &t, P, 0);
            REQUIRE(got, "%s", rb_last_error());
            double worst = 0;
            for (int64_t b = 0; b < n; b++)
                for (int k = 0; k < P * P; k++)
                    for (int64_t d = 0; d < D; d++) {
                        int i = k / P, j = k % P; /* i: x block, j: y block */
                        double s = 0;
                        for (int yy = 2 * j; yy < 2 * j + 2; yy++)
                            for (int xx = 2 * i; xx < 2 * i + 2; xx++)
                                s += x[((b * H + yy) * W + xx) * D + d];
                        worst = fmax(worst, fabs(s / 4 - ((float *)got->data)[(b * P * P + k) * D + d]));
                    }
            CHECK(worst < 1e-7, "block mean: %g", worst);
        }
        free(x);
        free(want);
        free(wantf);
        rb_arena_reset(&arena, 0);
    }
    rb_arena_free(&arena);
}

typedef struct { int P, official; } pool_args;
static rb_tensor *pool_fn(rb_ctx *c, rb_tensor **in, void *user) {
    const pool_args *a = user;
    return rb_local_pool(c, in[0], a->P, a->official);
}

static void t_pool_gradient(void) {
    static float x[2 * 6 * 7 * 3];
    t_fill(x, sizeof x / sizeof *x, 3);
    rb_tensor t = rb_tensor_wrap(x, RB_F32, 4, (int64_t[]){2, 6, 7, 3});
    t.requires_grad = 1;
    rb_tensor *in[1] = {&t};
    for (int official = 0; official < 2; official++) {
        pool_args a = {4, official};
        double e = t_gradcheck(pool_fn, in, 1, &a, 1e-2);
        CHECK(e < 1e-3, "official=%d: gradient error %g", official, e);
    }
}

/* ---- golden/local_tokens ---- */

static void golden_one(const char *cfg, const char *ckpt, const rb_safetensors *io) {
    static rb_local_encoder e;
    REQUIRE(rb_local_encoder_load(&e, ckpt, cfg) == RB_OK, "load %s: %s", ckpt, rb_last_error());
    fprintf(stderr, "  %s (config %s)\n", strrchr(ckpt, '/') + 1, cfg ? "given" : "found next to it");
    CHECK(e.vis.cfg.image_size == 56 && e.vis.cfg.layers == 3 && e.vis.cfg.hidden == 32, "config");
    rb_arena arena;
    REQUIRE(rb_arena_init(&arena, 64 << 20, "local tokens test") == RB_OK, "arena");
    rb_ctx c;
    rb_ctx_init(&c, &arena);
    /* main run: 224 -> grid 16 (checkpoint grid 4) */
    t_compare("interpolated_positional_embedding", rb_local_position_embedding(&c, &e, 16, 16),
              rb_st_get(io, "interpolated_positional_embedding"), 7.25e-7f);
    rb_tensor px = *rb_st_get(io, "pixel_values"), *ln = NULL;
    rb_tensor *dense = rb_local_dense(&c, &e, &px, &ln);
    t_compare("dense_ln_post_output", ln, rb_st_get(io, "dense_ln_post_output"), 3.6e-5f);
    t_compare("dense_features", rb_contiguous(&c, to_nchw(&c, dense)), rb_st_get(io, "dense_features"), 6.0e-6f);
    rb_tensor *corr = rb_local_pool(&c, dense, 4, 0), *off = rb_local_pool(&c, dense, 4, 1);
    t_compare("local_tokens_corrected", corr, rb_st_get(io, "local_tokens_corrected"), 1.27e-6f);
    t_compare("local_tokens_official", off, rb_st_get(io, "local_tokens_official"), 1.27e-6f);
    t_compare("rb_local_tokens (corrected)", rb_local_tokens(&c, &e, &px, 4, 0), rb_st_get(io, "local_tokens_corrected"),
              1.27e-6f);
    rb_tensor glob = *rb_st_get(io, "global_tokens");
    t_compare("resampler_input_corrected", rb_local_concat(&c, &glob, corr), rb_st_get(io, "resampler_input_corrected"),
              3.87e-5f);
    t_compare("resampler_input_official", rb_local_concat(&c, &glob, off), rb_st_get(io, "resampler_input_official"),
              3.87e-5f);
    /* extra run: 182 -> grid 13, boxes of 3.25 cells (fractional roi_align sampling) */
    t_compare("extra.interpolated_positional_embedding", rb_local_position_embedding(&c, &e, 13, 13),
              rb_st_get(io, "extra.interpolated_positional_embedding"), 3.52e-6f);
    px = *rb_st_get(io, "pixel_values_extra");
    dense = rb_local_dense(&c, &e, &px, NULL);
    t_compare("extra.dense_features", rb_contiguous(&c, to_nchw(&c, dense)), rb_st_get(io, "extra.dense_features"),
              5.07e-6f);
    t_compare("extra.local_tokens_corrected", rb_local_pool(&c, dense, 4, 0),
              rb_st_get(io, "extra.local_tokens_corrected"), 1.32e-6f);
    t_compare("extra.local_tokens_official", rb_local_pool(&c, dense, 4, 1), rb_st_get(io, "extra.local_tokens_official"),
              1.32e-6f);
    CHECK(c.status == RB_OK, "%s", rb_last_error());
    rb_arena_free(&arena);
    rb_local_encoder_free(&e);
}

static void t_golden_local_tokens(void) {
    const char *g = t_golden_path("local_tokens");
    if (!g)
        return;
    char dir[4096], cfg[4200], ckpt[4200], io_path[4200];
    snprintf(dir, sizeof dir, "%s", g);
    snprintf(cfg, sizeof cfg, "%s/open_clip_config.json", dir);
    snprintf(io_path, sizeof io_path, "%s/io.safetensors", dir);
    rb_safetensors io;
    REQUIRE(rb_st_open(&io, io_path) == RB_OK, "%s", rb_last_error());
    static const char *const files[] = {"open_clip.safetensors", "open_clip_state_dict.pt",
                                        "open_clip_epoch_6_module.pt"};
    for (int i = 0; i < 3; i++) {
        snprintf(ckpt, sizeof ckpt, "%s/%s", dir, files[i]);
        golden_one(i == 2 ? NULL : cfg, ckpt, &io); /* the epoch_6 form with the config detected */
    }
    rb_st_close(&io);
}

/* ---- golden/pipeline_dreamrelation: with_local and with_local_official_pooling ---- */

/* the reference images .convert("RGB").resize((512, 512)) -> CLIPImageProcessor(size=896, crop_size=896) */
static float *pixels_896(const char *img_dir, int n) {
    static const char *const names[] = {"img0_300x200_rgb.png", "img1_180x240_rgba.png"};
    rb_preprocess_config cfg;
    rb_preprocess_config_init(&cfg, RB_PREPROCESS_CLIP);
    cfg.shortest_edge = cfg.crop_h = cfg.crop_w = 896;
    size_t per = (size_t)3 * 896 * 896;
    float *px = malloc(sizeof(float) * per * (size_t)n);
    for (int i = 0; i < n && px; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", img_dir, names[i]);
        rb_image img, big;
        rb_status s = rb_image_load(&img, path, 3);
        if (s == RB_OK) {
            s = rb_image_resize(&big, &img, 512, 512, RB_RESAMPLE_BICUBIC);
            rb_image_free(&img);
        }
        if (s == RB_OK) {
            s = rb_image_preprocess(&big, &cfg, px + (size_t)i * per);
            rb_image_free(&big);
        }
        if (s != RB_OK) {
            CHECK(0, "%s: %s", path, rb_last_error());
            free(px);
            return NULL;
        }
    }
    return px;
}

static void t_golden_pipeline_with_local(void) {
    const char *g = t_golden_path("pipeline_dreamrelation");
    if (!g)
        return;
    char dir[4096], path[4200], img_dir[4200], tmp[4200];
    snprintf(dir, sizeof dir, "%s", g);
    snprintf(tmp, sizeof tmp, "%s/image_encoder/images", dir);
    t_resolve(tmp, img_dir, sizeof img_dir);
    float *px = pixels_896(img_dir, 2);
    if (!px)
        return;
    static rb_local_encoder e;
    snprintf(path, sizeof path, "%s/local_image_encoder/epoch_6.pt", dir);
    rb_safetensors io;
    snprintf(tmp, sizeof tmp, "%s/io.safetensors", dir);
    if (rb_local_encoder_load(&e, path, NULL) != RB_OK || rb_st_open(&io, tmp) != RB_OK) {
        CHECK(0, "%s", rb_last_error());
        free(px);
        return;
    }
    CHECK(e.vis.cfg.image_size == 224 && e.vis.cfg.layers == 2, "config detected next to epoch_6.pt");
    rb_arena arena;
    rb_arena_init(&arena, 256 << 20, "local tokens test");
    rb_ctx c;
    rb_ctx_init(&c, &arena);
    rb_tensor pix = rb_tensor_wrap(px, RB_F32, 4, (int64_t[]){2, 3, 896, 896});
    /* the 257 global tokens of the with_local run are those of global_only (same images, same CLIP) */
    rb_tensor glob = *rb_st_get(&io, "global_only.resampler_input");
    rb_tensor *dense = rb_local_dense(&c, &e, &pix, NULL);
    CHECK(dense && dense->shape[1] == 64 && dense->shape[2] == 64, "64 x 64 grid at 896");
    /* local rows: 10x the fp32-vs-fp64 spread of local_tokens (same pooling, same magnitudes) */
    t_compare("with_local.resampler_input", rb_local_concat(&c, &glob, rb_local_pool(&c, dense, 4, 0)),
              rb_st_get(&io, "with_local.resampler_input"), 1.27e-6f);
    t_compare("with_local_official_pooling.resampler_input", rb_local_concat(&c, &glob, rb_local_pool(&c, dense, 4, 1)),
              rb_st_get(&io, "with_local_official_pooling.resampler_input"), 1.27e-6f);
    rb_arena_free(&arena);
    rb_st_close(&io);
    rb_local_encoder_free(&e);
    free(px);
}

static void t_errors(void) {
    static rb_local_encoder e;
    CHECK(rb_local_encoder_load(&e, "/nonexistent/epoch_6.pt", NULL) != RB_OK &&
              strstr(rb_last_error(), "/nonexistent/epoch_6.pt"),
          "missing checkpoint named: %s", rb_last_error());
    /* no open_clip_config.json next to the checkpoint: the built-in ViT-bigG-14 config is used, and
     * the tiny checkpoint's shapes do not fit it */
    const char *g = t_golden_path("local_tokens/open_clip.safetensors");
    char abs[PATH_MAX];
    if (g && realpath(g, abs)) {
        char link[512];
        snprintf(link, sizeof link, "%s/lone.safetensors", t_tmpdir());
        unlink(link);
        REQUIRE(symlink(abs, link) == 0, "symlink %s", link);
        CHECK(rb_local_encoder_load(&e, link, NULL) == RB_ERR_FORMAT && strstr(rb_last_error(), "lone.safetensors"),
              "bigG config vs tiny checkpoint: %s", rb_last_error());
        fprintf(stderr, "  built-in ViT-bigG-14 config on the tiny checkpoint: %s\n", rb_last_error());
        unlink(link);
    }
    rb_arena arena;
    rb_arena_init(&arena, 1 << 20, "local tokens test");
    rb_ctx c;
    rb_ctx_init(&c, &arena);
    static float x[2 * 4 * 4 * 3];
    rb_tensor t = rb_tensor_wrap(x, RB_F32, 3, (int64_t[]){2, 16, 3});
    CHECK(!rb_local_pool(&c, &t, 4, 0) && c.status == RB_ERR_INVALID, "3-d dense refused");
    rb_ctx_clear(&c);
    t = rb_tensor_wrap(x, RB_F32, 4, (int64_t[]){2, 4, 4, 3});
    CHECK(!rb_local_pool(&c, &t, 0, 0) && c.status == RB_ERR_INVALID, "n_pool 0 refused");
    rb_ctx_clear(&c);
    rb_tensor a = rb_tensor_wrap(x, RB_F32, 3, (int64_t[]){2, 8, 3}), b = rb_tensor_wrap(x, RB_F32, 3, (int64_t[]){1, 8, 3});
    CHECK(!rb_local_concat(&c, &a, &b) && strstr(rb_last_error(), "disagree"), "batch mismatch: %s", rb_last_error());
    rb_arena_free(&arena);
}

int main(void) {
    RUN(t_pool_vs_naive);
    RUN(t_pool_gradient);
    RUN(t_golden_local_tokens);
    RUN(t_golden_pipeline_with_local);
    RUN(t_errors);
    return t_done();
}
