/* The public C API (include/relbooth.h): a pipeline opened once and used for several generate calls
 * gives exactly the images of separate rb_generate runs (with and without keep_models, with subjects
 * and a LoRA); docs/api-example.c, built against the public header and librelbooth.a only, writes the
 * images rb_generate gives; cancel callbacks, bad arguments and rb_write_png. */
#include <sys/wait.h>
#include <unistd.h>

#include "golden_models.h"
#include "harness.h"
#include "pipelines/generate.h"
#include "relbooth.h"

static char example_bin[4096];

/* a folder of real symlinks to a golden pipeline's components (golden_models.h) */
static const char *pipeline_dir(const char *golden_pipeline, const char *name) {
    static char dir[4096];
    return t_pipeline_dir(golden_pipeline, name, dir, sizeof dir);
}

static int same_image(const rb_image_out *a, const rb_image *b) {
    return a->data && b->data && a->width == b->width && a->height == b->height && a->channels == b->channels &&
           !memcmp(a->data, b->data, (size_t)a->width * a->height * a->channels);
}

/* The DreamRelation golden components: SDXL folder, adapter, image encoder, LoRA, two references. */
typedef struct dr {
    char model[4096], adapter[4096], enc[4096], lora[4096], img0[4400], img1[4400];
} dr;

static int dr_paths(dr *d) {
    const char *g = t_golden_path("pipeline_dreamrelation");
    if (!g)
        return 0;
    char gdir[4096], tmp[8192], pipe[4096];
    snprintf(gdir, sizeof gdir, "%s", g);
    snprintf(tmp, sizeof tmp, "%s/pipeline", gdir);
    t_resolve(tmp, pipe, sizeof pipe);
    const char *m = pipeline_dir(pipe, "dr_pipeline");
    if (!m)
        return 0;
    snprintf(d->model, sizeof d->model, "%s", m);
    snprintf(tmp, sizeof tmp, "%s/image_encoder", gdir);
    t_resolve(tmp, d->enc, sizeof d->enc);
    snprintf(tmp, sizeof tmp, "%s/ms_adapter.safetensors", gdir);
    t_resolve(tmp, d->adapter, sizeof d->adapter);
    snprintf(tmp, sizeof tmp, "%s/pytorch_lora_weights.safetensors", gdir);
    t_resolve(tmp, d->lora, sizeof d->lora);
    snprintf(d->img0, sizeof d->img0, "%s/images/img0_300x200_rgb.png", d->enc);
    snprintf(d->img1, sizeof d->img1, "%s/images/img1_180x240_rgba.png", d->enc);
    return 1;
}

static const char *prompt = "A cat is hugging a dog in the garden.";

/* The reference: two separate rb_generate runs (seeds 1 and 2), made once for both tests. */
static rb_image want[2];

/* One opened pipeline, two calls (seeds 1 and 2) == two rb_generate runs; keep: keep_models. */
static void check_two_calls(int keep) {
    dr d;
    if (!dr_paths(&d))
        return;
    rb_subject subj[2] = {{d.img0, "cat", {0.0f, 0.2f, 0.55f, 0.85f}}, {d.img1, "dog", {0.5f, 0.25f, 0.95f, 0.9f}}};
    for (int k = 0; k < 2 && !want[k].data; k++) {
        rb_gen_params p;
        rb_gen_params_init(&p);
        p.model = d.model, p.ms_adapter = d.adapter, p.image_encoder = d.enc, p.resampler_dim_head = 8;
        p.loras[0] = (rb_lora_ref){d.lora, 0.8f}, p.n_loras = 1;
        p.prompt = prompt, p.subjects[0] = subj[0], p.subjects[1] = subj[1], p.n_subjects = 2;
        p.width = p.height = 64, p.steps = 2, p.seed = (uint64_t)k + 1, p.arena_bytes = (size_t)256 << 20;
        REQUIRE(rb_generate(&p, &want[k]) == RB_OK, "rb_generate: %s", rb_last_error());
    }
    rb_pipeline_config c;
    rb_pipeline_config_init(&c);
    c.model = d.model, c.ms_adapter = d.adapter, c.image_encoder = d.enc, c.resampler_dim_head = 8;
    c.loras[0].path = d.lora, c.loras[0].scale = 0.8f, c.n_loras = 1;
    c.work_bytes = (size_t)256 << 20, c.keep_models = keep;
    rb_pipeline *pl;
    REQUIRE(rb_pipeline_open(&c, &pl) == RB_OK, "open: %s", rb_last_error());
    rb_generate_request r;
    rb_generate_request_init(&r);
    r.prompt = prompt, r.width = r.height = 64, r.steps = 2;
    for (int i = 0; i < 2; i++) {
        r.subjects[i].image = subj[i].image, r.subjects[i].phrase = subj[i].phrase;
        memcpy(r.subjects[i].box, subj[i].box, sizeof subj[i].box);
    }
    r.n_subjects = 2;
    for (int k = 0; k < (keep ? 2 : 1); k++) { /* staged: one call (loads and frees like rb_generate) */
        rb_image_out img;
        r.seed = (uint64_t)k + 1;
        rb_status s = rb_pipeline_generate(pl, &r, &img);
        CHECK(s == RB_OK, "generate %d: %s", k, rb_last_error());
        CHECK(s == RB_OK && same_image(&img, &want[k]), "keep_models=%d, call %d: same image as rb_generate", keep, k);
        rb_image_out_free(&img);
    }
    if (keep) { /* a call without subjects on the same pipeline (the adapter stays loaded but unused) */
        r.n_subjects = 0, r.steps = 1;
        rb_image_out img;
        CHECK(rb_pipeline_generate(pl, &r, &img) == RB_OK && img.width == 64, "no subjects: %s", rb_last_error());
        rb_image_out_free(&img);
        CHECK(memcmp(want[0].data, want[1].data, 64 * 64 * 3) != 0, "seeds 1 and 2 differ");
        rb_image_free(&want[0]);
        rb_image_free(&want[1]);
    }
    rb_pipeline_close(pl);
}

static void t_staged(void) { check_two_calls(0); }
static void t_keep_models(void) { check_two_calls(1); }

static int cancel_after_step(void *user) { return ++*(int *)user > 2; }

static void t_cancel(void) {
    dr d;
    if (!dr_paths(&d))
        return;
    rb_pipeline_config c;
    rb_pipeline_config_init(&c);
    c.model = d.model, c.work_bytes = (size_t)256 << 20, c.keep_models = 1;
    rb_pipeline *pl;
    REQUIRE(rb_pipeline_open(&c, &pl) == RB_OK, "open: %s", rb_last_error());
    rb_generate_request r;
    rb_generate_request_init(&r);
    int polls = 0;
    r.prompt = prompt, r.width = r.height = 64, r.steps = 4, r.cancel = cancel_after_step, r.user = &polls;
    rb_image_out img = {.width = 7};
    CHECK(rb_pipeline_generate(pl, &r, &img) == RB_ERR_CANCELLED && !img.data && img.width == 0, "cancelled: %s",
          rb_last_error());
    r.cancel = NULL, r.steps = 1; /* the pipeline stays usable */
    CHECK(rb_pipeline_generate(pl, &r, &img) == RB_OK && img.data, "after cancel: %s", rb_last_error());
    rb_image_out_free(&img);
    rb_pipeline_close(pl);
}

/* docs/api-example.c (public header + librelbooth.a) writes seed1.png / seed2.png == rb_generate's. */
static void t_example(void) {
    const char *g = t_golden_path("pipeline_sdxl");
    if (!g)
        return;
    char gdir[4096];
    snprintf(gdir, sizeof gdir, "%s", g);
    const char *model = pipeline_dir(gdir, "sdxl");
    REQUIRE(model, "model folder");
    char model_s[4096], out[4096], cmd[16384];
    snprintf(model_s, sizeof model_s, "%s", model);
    snprintf(out, sizeof out, "%s/example", t_tmpdir());
    mkdir(out, 0755);
    REQUIRE(access(example_bin, X_OK) == 0, "%s not built", example_bin);
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' 2 64 >/dev/null 2>&1", example_bin, model_s, out);
    int rc = system(cmd);
    REQUIRE(rc == 0, "api_example exit %d", rc);
    for (int k = 1; k <= 2; k++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/seed%d.png", out, k);
        rb_image got = {0}, want = {0};
        CHECK(rb_image_load(&got, path, 3) == RB_OK, "%s: %s", path, rb_last_error());
        rb_gen_params p;
        rb_gen_params_init(&p);
        p.model = model_s, p.prompt = "A cat is hugging a dog in front of the mountain.";
        p.width = p.height = 64, p.steps = 2, p.seed = (uint64_t)k, p.arena_bytes = (size_t)256 << 20;
        CHECK(rb_generate(&p, &want) == RB_OK, "rb_generate: %s", rb_last_error());
        rb_image_out g2 = {got.width, got.height, got.channels, got.data};
        CHECK(same_image(&g2, &want), "example seed %d == rb_generate", k);
        rb_image_free(&got);
        rb_image_free(&want);
    }
}

static void t_bad_args(void) {
    rb_pipeline_config c;
    rb_pipeline_config_init(&c);
    rb_pipeline *pl = (rb_pipeline *)&c;
    CHECK(rb_pipeline_open(&c, &pl) == RB_ERR_INVALID && pl == NULL, "no model");
    c.model = "/nonexistent/sdxl";
    CHECK(rb_pipeline_open(&c, &pl) == RB_ERR_IO && strstr(rb_last_error(), "/nonexistent/sdxl"), "missing: %s",
          rb_last_error());
    c.model = ".", c.ms_adapter = "x.bin";
    CHECK(rb_pipeline_open(&c, &pl) == RB_ERR_INVALID && strstr(rb_last_error(), "image encoder"), "adapter: %s",
          rb_last_error());
    c.ms_adapter = NULL, c.n_loras = 9;
    CHECK(rb_pipeline_open(&c, &pl) == RB_ERR_INVALID, "9 LoRAs");
    c.n_loras = 0;
    REQUIRE(rb_pipeline_open(&c, &pl) == RB_OK, "open .: %s", rb_last_error());
    rb_generate_request r;
    rb_generate_request_init(&r);
    CHECK(r.width == 1024 && r.steps == 30 && r.guidance == 5.0f && r.seed == 42 && r.batch_count == 1 &&
              r.ip_scale == 0.6f && r.negative_prompt && strstr(r.negative_prompt, "lowres"),
          "request defaults");
    rb_image_out img;
    r.prompt = "x", r.width = 100;
    CHECK(rb_pipeline_generate(pl, &r, &img) == RB_ERR_INVALID && !img.data, "size: %s", rb_last_error());
    r.width = 64, r.sampler = (rb_api_sampler)7;
    CHECK(rb_pipeline_generate(pl, &r, &img) == RB_ERR_INVALID, "sampler: %s", rb_last_error());
    rb_pipeline_close(pl);
    rb_pipeline_close(NULL);
}

static void t_write_png(void) {
    uint8_t px[5 * 3 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)(i * 17 + 3);
    rb_image_out img = {5, 3, 3, px};
    char path[4096];
    snprintf(path, sizeof path, "%s/w.png", t_tmpdir());
    REQUIRE(rb_write_png(path, &img, "a prompt\nSteps: 2") == RB_OK, "%s", rb_last_error());
    rb_image back = {0};
    REQUIRE(rb_image_load(&back, path, 0) == RB_OK, "%s", rb_last_error());
    CHECK(back.width == 5 && back.height == 3 && back.channels == 3 && !memcmp(back.data, px, sizeof px), "round trip");
    rb_image_free(&back);
    img.channels = 2;
    CHECK(rb_write_png(path, &img, NULL) == RB_ERR_INVALID, "2 channels");
}

int main(int argc, char **argv) {
    t_beside_self(argv[0], "api_example", example_bin, sizeof example_bin);
    (void)argc;
    RUN(t_write_png);
    RUN(t_bad_args);
    RUN(t_staged);
    RUN(t_keep_models);
    RUN(t_cancel);
    RUN(t_example);
    return t_done();
}
