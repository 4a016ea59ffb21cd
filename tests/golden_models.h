/* Fixtures shared by the tests that run models against the golden folder (/work/shared/golden):
 * comparing an output tensor with its golden tensor, preprocessing the golden PNGs, and a folder of
 * real symlinks to a golden diffusers pipeline. */
#ifndef RB_TEST_GOLDEN_MODELS_H
#define RB_TEST_GOLDEN_MODELS_H

#include <unistd.h>

#include "harness.h"
#include "core/tensor.h"
#include "io/image.h"
#include "models/image_processor.h"

/* got against the golden tensor want, elementwise within atol (no rtol); the max |diff| goes to stderr. */
static inline void t_compare(const char *what, const rb_tensor *got, const rb_tensor *want, float atol) {
    REQUIRE(got && want, "%s: missing (%s)", what, rb_last_error());
    REQUIRE(rb_numel(got) == rb_numel(want) && rb_is_contiguous(got), "%s: %lld vs %lld elements", what,
            (long long)rb_numel(got), (long long)rb_numel(want));
    double md;
    int ok = t_allclose(got->data, want->data, (size_t)rb_numel(want), atol, 0, &md);
    CHECK(ok, "%s: max |diff| %g > %g", what, md, atol);
    fprintf(stderr, "  %-40s max |diff| %.3g (atol %.3g)\n", what, md, atol);
}

/* pixel_values [n, 3, H, W] of the PNGs `names` in `img_dir` through preprocessor_config.json
 * `cfg_path` (models/image_processor.h); malloc'd, NULL on failure (check failed). */
static inline float *t_pixels_from_pngs(const char *cfg_path, const char *img_dir, const char *const *names, int n,
                                        int64_t shape[4]) {
    rb_preprocess_config cfg;
    if (rb_preprocess_config_load(&cfg, cfg_path) != RB_OK) {
        CHECK(0, "%s", rb_last_error());
        return NULL;
    }
    float *px = NULL;
    for (int i = 0; i < n; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", img_dir, names[i]);
        rb_image img;
        int h = 0, w = 0;
        rb_status s = rb_image_load(&img, path, 0);
        if (s == RB_OK) {
            s = rb_preprocess_output_size(&cfg, img.width, img.height, &h, &w);
            if (s == RB_OK && !px) {
                shape[0] = n, shape[1] = 3, shape[2] = h, shape[3] = w;
                px = malloc(sizeof(float) * (size_t)n * 3 * (size_t)h * (size_t)w);
            }
            if (s == RB_OK && (!px || h != shape[2] || w != shape[3]))
                s = RB_ERR_INVALID;
            if (s == RB_OK)
                s = rb_image_preprocess(&img, &cfg, px + (size_t)i * 3 * (size_t)h * (size_t)w);
            rb_image_free(&img);
        }
        if (s != RB_OK) {
            CHECK(0, "%s: %s", path, rb_last_error());
            free(px);
            return NULL;
        }
    }
    return px;
}

/* The golden pipeline folders link their components (as link stubs in some checkouts): make the
 * folder <t_tmpdir()>/<name> of real symlinks to the resolved components of `golden_pipeline`, so
 * that the library sees an ordinary diffusers folder. Returns dir (cap bytes), or NULL. */
static inline const char *t_pipeline_dir(const char *golden_pipeline, const char *name, char *dir, size_t cap) {
    static const char *parts[] = {"model_index.json", "scheduler", "text_encoder", "text_encoder_2", "tokenizer",
                                  "tokenizer_2", "unet", "vae"};
    snprintf(dir, cap, "%s/%s", t_tmpdir(), name);
    mkdir(dir, 0755);
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        char src[4096], rel[8192], dst[8400];
        snprintf(rel, sizeof rel, "%.4000s/%s", golden_pipeline, parts[i]);
        t_resolve(rel, src, sizeof src);
        if (src[0] != '/') {
            char cwd[2048];
            if (getcwd(cwd, sizeof cwd))
                snprintf(rel, sizeof rel, "%s/%s", cwd, src), snprintf(src, sizeof src, "%.4095s", rel);
        }
        snprintf(dst, sizeof dst, "%.4000s/%s", dir, parts[i]);
        unlink(dst);
        if (symlink(src, dst) != 0)
            return NULL;
    }
    return dir;
}

#endif
