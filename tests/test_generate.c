/* The generation pipeline against golden/pipeline_sdxl (plain SDXL) and golden/pipeline_ms_diffusion
 * (MS-Diffusion subjects) and golden/pipeline_dreamrelation: every step's UNet input, output and
 * latents, and the final image; plain SDXL also from one SGM checkpoint file built from the golden
 * components; and the relbooth generate command. */
#include <limits.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "golden_models.h"
#include "io/safetensors.h"
#include "pipelines/generate.h"
#include "sgm_text.h"

/* a folder of real symlinks to `golden_pipeline`'s components, named after it (golden_models.h) */
static const char *pipeline_dir(const char *golden_pipeline) {
    static char dir[4096];
    return t_pipeline_dir(golden_pipeline, strrchr(golden_pipeline, '/') + 1, dir, sizeof dir);
}

typedef struct {
    rb_safetensors *io;
    const char *prefix;
    double worst_sample, worst_pred, worst_lat, worst_ctx;
    int steps_seen;
} golden_steps;

static double maxdiff_at(const rb_tensor *got, const rb_tensor *want, int64_t offset) {
    double md;
    t_allclose(got->data, (const float *)want->data + offset, (size_t)rb_numel(got), 0, 0, &md);
    return md;
}

static void on_step(void *user, const rb_gen_step *s) {
    golden_steps *g = user;
    char key[128];
    int64_t n2 = rb_numel(s->unet_sample), n = rb_numel(s->latents);
    snprintf(key, sizeof key, "%sunet_call.sample", g->prefix);
    g->worst_sample = fmax(g->worst_sample, maxdiff_at(s->unet_sample, rb_st_get(g->io, key), s->step * n2));
    snprintf(key, sizeof key, "%sunet_call.noise_pred", g->prefix);
    g->worst_pred = fmax(g->worst_pred, maxdiff_at(s->noise_pred, rb_st_get(g->io, key), s->step * n2));
    snprintf(key, sizeof key, "%slatents_after_step", g->prefix);
    g->worst_lat = fmax(g->worst_lat, maxdiff_at(s->latents, rb_st_get(g->io, key), s->step * n));
    snprintf(key, sizeof key, "%sunet_call.encoder_hidden_states", g->prefix);
    g->worst_ctx = fmax(g->worst_ctx, maxdiff_at(s->context, rb_st_get(g->io, key), 0));
    g->steps_seen++;
}

/* Compares the 8-bit output with the golden float image in [0, 1]. */
static void check_image(const rb_image *img, const rb_tensor *want) {
    REQUIRE(img->data && img->width == want->shape[3] && img->height == want->shape[2], "image size");
    int64_t plane = (int64_t)img->width * img->height, worst = 0;
    double sum = 0;
    const float *w = want->data;
    for (int64_t i = 0; i < plane; i++)
        for (int ch = 0; ch < 3; ch++) {
            int64_t d = llabs((int64_t)img->data[i * 3 + ch] - (int64_t)lrintf(w[ch * plane + i] * 255.0f));
            worst = d > worst ? d : worst;
            sum += (double)d;
        }
    /* the float images agree to ~1e-4, so rounding to 8 bit may differ by one level at a boundary */
    CHECK(worst <= 1 && sum / (3.0 * plane) < 0.01, "image: worst %lld levels, mean %g", (long long)worst,
          sum / (3.0 * plane));
}

/* golden/pipeline_sdxl's run from `model` (a folder, or a single file with its tokenizers and configs). */
static void run_sdxl(const char *gdir, const char *model, const char *tokenizers_dir, const char *config_dir) {
    char iop[8192];
    snprintf(iop, sizeof iop, "%s/io.safetensors", gdir);
    rb_safetensors io;
    REQUIRE(model, "model");
    REQUIRE(rb_st_open(&io, iop) == RB_OK, "%s", rb_last_error());
    rb_gen_params p;
    rb_gen_params_init(&p);
    p.model = model;
    p.tokenizers_dir = tokenizers_dir;
    p.model_config_dir = config_dir;
    p.prompt = "A cat is hugging a dog in front of the mountain.";
    p.negative_prompt = NULL;
    p.steps = 4, p.width = p.height = 128, p.guidance = 5.0f;
    p.initial_latents = rb_st_get(&io, "initial_latents")->data;
    p.arena_bytes = (size_t)256 << 20;
    golden_steps gs = {.io = &io, .prefix = ""};
    p.on_step = on_step, p.user = &gs;
    rb_image img;
    rb_status s = rb_generate(&p, &img);
    CHECK(s == RB_OK, "generate: %s", rb_last_error());
    if (s == RB_OK) {
        CHECK(gs.steps_seen == 4, "4 steps");
        /* case.md: 1 vs 2 threads already differ by 2.2e-5 on the latents (values up to 26) */
        CHECK(gs.worst_ctx < 1e-5 && gs.worst_sample < 1e-4 && gs.worst_pred < 2e-5 && gs.worst_lat < 1e-4,
              "max |diff|: context %g, unet input %g, noise_pred %g, latents %g", gs.worst_ctx, gs.worst_sample,
              gs.worst_pred, gs.worst_lat);
        check_image(&img, rb_st_get(&io, "image"));
        rb_image_free(&img);
    }
    rb_st_close(&io);
}

static void t_pipeline_sdxl(void) {
    const char *g = t_golden_path("pipeline_sdxl");
    if (!g)
        return;
    char gdir[4096];
    snprintf(gdir, sizeof gdir, "%s", g);
    run_sdxl(gdir, pipeline_dir(gdir), NULL, NULL);
}

/* Appends the tensors of golden `cases`/`file` to l, rewritten by `add`; returns the opened file (kept open
 * until written, as the list points into it). */
static int add_golden(sgm_list *l, rb_safetensors *f, const char *cases, const char *file, int how) {
    char path[8192];
    const char *g = t_golden_path(cases);
    if (!g)
        return 0;
    snprintf(path, sizeof path, "%s/%s", g, file);
    t_resolve(path, path, sizeof path);
    if (rb_st_open(f, path) != RB_OK)
        return 0;
    if (how == 0)
        sgm_add_file(l, f);
    else if (how == 1)
        sgm_add_clip_l(l, f);
    else if (sgm_add_clip_g(l, f) < 0)
        return 0;
    return 1;
}

/* The same run from one SDXL checkpoint file in the SGM layout, built at test time from the golden
 * components (sgm_text.h): UNet model.diffusion_model.*, VAE first_stage_model.*, text encoders
 * conditioner.embedders.{0,1}.*. Tokenizers from golden/clip_tokenizer (which has no scheduler/:
 * SDXL's default scheduler config applies), the tiny models' config.json files from a config folder
 * (their head counts and VAE sizes are not what the shapes and the SDXL preset give). */
static void t_pipeline_sdxl_single_file(void) {
    const char *g = t_golden_path("pipeline_sdxl");
    if (!g)
        return;
    char gdir[4096], file[4096], tok[4096], cfgdir[4096];
    snprintf(gdir, sizeof gdir, "%s", g);
    static sgm_list l;
    rb_safetensors f[4];
    int ok = add_golden(&l, &f[0], "unet_sdxl", "sgm_unet.safetensors", 0) &&
             add_golden(&l, &f[1], "vae", "sgm_vae.safetensors", 0) &&
             add_golden(&l, &f[2], "clip_text_l", "model.safetensors", 1) &&
             add_golden(&l, &f[3], "clip_text_g", "model.safetensors", 2);
    REQUIRE(ok, "golden components: %s", rb_last_error());
    snprintf(file, sizeof file, "%s/sdxl_single.safetensors", t_tmpdir());
    rb_status s = sgm_write(&l, file);
    sgm_free(&l);
    for (int i = 0; i < 4; i++)
        rb_st_close(&f[i]);
    REQUIRE(s == RB_OK, "write: %s", rb_last_error());

    /* configs: symlinks to the golden component configs */
    static const char *const comps[][2] = {
        {"unet", "unet_sdxl"}, {"vae", "vae"}, {"text_encoder", "clip_text_l"}, {"text_encoder_2", "clip_text_g"}};
    snprintf(cfgdir, sizeof cfgdir, "%s/single_configs", t_tmpdir());
    mkdir(cfgdir, 0755);
    for (size_t i = 0; i < sizeof comps / sizeof *comps; i++) {
        char src[8192], dst[8192];
        snprintf(dst, sizeof dst, "%s/%s", cfgdir, comps[i][0]);
        mkdir(dst, 0755);
        snprintf(dst, sizeof dst, "%s/%s/config.json", cfgdir, comps[i][0]);
        char rel[8192], abs[PATH_MAX];
        snprintf(rel, sizeof rel, "%s/config.json", t_golden_path(comps[i][1]));
        t_resolve(rel, src, sizeof src);
        unlink(dst);
        REQUIRE(realpath(src, abs) && symlink(abs, dst) == 0, "symlink %s -> %s", dst, src);
    }
    snprintf(tok, sizeof tok, "%s", t_golden_path("clip_tokenizer"));
    run_sdxl(gdir, file, tok, cfgdir);

    /* a single file without tokenizers is refused up front, naming what is missing */
    rb_gen_params p;
    rb_gen_params_init(&p);
    p.model = file, p.prompt = "x";
    rb_image img;
    CHECK(rb_generate(&p, &img) == RB_ERR_INVALID && strstr(rb_last_error(), "tokenizer"), "no tokenizers: %s",
          rb_last_error());
}

static void t_pipeline_ms_diffusion(void) {
    const char *g = t_golden_path("pipeline_ms_diffusion");
    if (!g)
        return;
    char gdir[4096], iop[8192], pipe[8192], adapter[8192], enc[4096], im0[8192], im1[8192];
    snprintf(gdir, sizeof gdir, "%s", g);
    snprintf(iop, sizeof iop, "%s/io.safetensors", gdir);
    snprintf(pipe, sizeof pipe, "%s/pipeline", gdir);
    t_resolve(pipe, pipe, sizeof pipe);
    snprintf(adapter, sizeof adapter, "%s/ms_adapter.safetensors", gdir);
    t_resolve(adapter, adapter, sizeof adapter);
    snprintf(im0, sizeof im0, "%s/image_encoder", gdir);
    t_resolve(im0, enc, sizeof enc);
    snprintf(im0, sizeof im0, "%s/images/img0_300x200_rgb.png", enc);
    snprintf(im1, sizeof im1, "%s/images/img1_180x240_rgba.png", enc);
    rb_safetensors io;
    REQUIRE(rb_st_open(&io, iop) == RB_OK, "%s", rb_last_error());
    rb_gen_params p;
    rb_gen_params_init(&p);
    p.model = pipeline_dir(pipe);
    p.prompt = "best quality, high quality, a cat and a dog on the beach";
    p.steps = 4, p.width = p.height = 128, p.guidance = 5.0f, p.ip_scale = 0.6f;
    p.ms_adapter = adapter, p.image_encoder = enc, p.resampler_dim_head = 8;
    p.ref_resize = 0; /* MS-Diffusion feeds the images as they are */
    p.n_subjects = 2;
    p.subjects[0] = (rb_subject){im0, "cat", {0.05f, 0.2f, 0.45f, 0.8f}};
    p.subjects[1] = (rb_subject){im1, "dog", {0.55f, 0.25f, 0.95f, 0.75f}};
    p.initial_latents = rb_st_get(&io, "initial_latents")->data;
    p.arena_bytes = (size_t)256 << 20;
    golden_steps gs = {.io = &io, .prefix = ""};
    p.on_step = on_step, p.user = &gs;
    rb_image img;
    rb_status s = rb_generate(&p, &img);
    CHECK(s == RB_OK, "generate: %s", rb_last_error());
    if (s == RB_OK) {
        CHECK(gs.worst_ctx < 2e-5 && gs.worst_sample < 1e-4 && gs.worst_pred < 2e-5 && gs.worst_lat < 1e-4,
              "max |diff|: context %g, unet input %g, noise_pred %g, latents %g", gs.worst_ctx, gs.worst_sample,
              gs.worst_pred, gs.worst_lat);
        check_image(&img, rb_st_get(&io, "image"));
        rb_image_free(&img);
    }
    rb_st_close(&io);
}

/* DreamRelation's own inference: references resized to 512, RelationLoRA, with and without local tokens. */
static void dreamrelation(const char *variant, int with_local) {
    const char *g = t_golden_path("pipeline_dreamrelation");
    if (!g)
        return;
    char gdir[4096], iop[8192], pipe[8192], adapter[8192], enc[4096], im0[8192], im1[8192], lora[8192], local[8192];
    snprintf(gdir, sizeof gdir, "%s", g);
    snprintf(iop, sizeof iop, "%s/io.safetensors", gdir);
    snprintf(im0, sizeof im0, "%s/pipeline", gdir);
    t_resolve(im0, pipe, sizeof pipe);
    snprintf(im0, sizeof im0, "%s/ms_adapter.safetensors", gdir);
    t_resolve(im0, adapter, sizeof adapter);
    snprintf(im0, sizeof im0, "%s/image_encoder", gdir);
    t_resolve(im0, enc, sizeof enc);
    snprintf(im0, sizeof im0, "%s/images/img0_300x200_rgb.png", enc);
    snprintf(im1, sizeof im1, "%s/images/img1_180x240_rgba.png", enc);
    snprintf(lora, sizeof lora, "%s/pytorch_lora_weights.safetensors", gdir);
    snprintf(local, sizeof local, "%s/local_image_encoder/epoch_6.pt", gdir);
    rb_safetensors io;
    REQUIRE(rb_st_open(&io, iop) == RB_OK, "%s", rb_last_error());
    rb_gen_params p;
    rb_gen_params_init(&p); /* official defaults: negative prompt, gamma 0.6, references resized to 512 */
    p.model = pipeline_dir(pipe);
    p.prompt = "A cat is hugging a dog in the garden.";
    p.steps = 4, p.width = p.height = 128;
    p.ms_adapter = adapter, p.image_encoder = enc, p.resampler_dim_head = 8;
    p.n_subjects = 2;
    p.subjects[0] = (rb_subject){im0, "cat", {0.0f, 0.2f, 0.55f, 0.85f}};
    p.subjects[1] = (rb_subject){im1, "dog", {0.5f, 0.25f, 0.95f, 0.9f}};
    p.loras[0] = (rb_lora_ref){lora, 1.0f};
    p.n_loras = 1;
    p.local_encoder = with_local ? local : NULL;
    p.initial_latents = rb_st_get(&io, "initial_latents")->data;
    p.arena_bytes = (size_t)512 << 20;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s.", variant);
    golden_steps gs = {.io = &io, .prefix = prefix};
    p.on_step = on_step, p.user = &gs;
    rb_image img;
    rb_status s = rb_generate(&p, &img);
    CHECK(s == RB_OK, "generate: %s", rb_last_error());
    if (s == RB_OK) {
        CHECK(gs.worst_ctx < 2e-5 && gs.worst_sample < 1e-4 && gs.worst_pred < 2e-5 && gs.worst_lat < 1e-4,
              "%s max |diff|: context %g, unet input %g, noise_pred %g, latents %g", variant, gs.worst_ctx,
              gs.worst_sample, gs.worst_pred, gs.worst_lat);
        char key[64];
        snprintf(key, sizeof key, "%s.image", variant);
        check_image(&img, rb_st_get(&io, key));
        rb_image_free(&img);
    }
    rb_st_close(&io);
}

static void t_dreamrelation_global(void) { dreamrelation("global_only", 0); }
static void t_dreamrelation_local(void) { dreamrelation("with_local", 1); }

/* MS-Diffusion's automatic layout on the tiny MS pipeline: with a start step beyond the run it is the
 * box run exactly; starting at once it changes the image (regions from the phrases' attention). */
static void t_auto_layout(void) {
    const char *g = t_golden_path("pipeline_ms_diffusion");
    if (!g)
        return;
    char gdir[4096], tmp[8192], pipe[8192], adapter[8192], enc[4096], im0[8192], im1[8192];
    snprintf(gdir, sizeof gdir, "%s", g);
    snprintf(tmp, sizeof tmp, "%s/pipeline", gdir);
    t_resolve(tmp, pipe, sizeof pipe);
    snprintf(tmp, sizeof tmp, "%s/ms_adapter.safetensors", gdir);
    t_resolve(tmp, adapter, sizeof adapter);
    snprintf(tmp, sizeof tmp, "%s/image_encoder", gdir);
    t_resolve(tmp, enc, sizeof enc);
    snprintf(im0, sizeof im0, "%s/images/img0_300x200_rgb.png", enc);
    snprintf(im1, sizeof im1, "%s/images/img1_180x240_rgba.png", enc);
    rb_gen_params p;
    rb_gen_params_init(&p);
    p.model = pipeline_dir(pipe);
    p.prompt = "best quality, high quality, a cat and a dog on the beach";
    p.steps = 3, p.width = p.height = 128, p.ref_resize = 0;
    p.ms_adapter = adapter, p.image_encoder = enc, p.resampler_dim_head = 8;
    p.n_subjects = 2;
    p.subjects[0] = (rb_subject){im0, "cat", {0.05f, 0.2f, 0.45f, 0.8f}};
    p.subjects[1] = (rb_subject){im1, "dog", {0.55f, 0.25f, 0.95f, 0.75f}};
    p.arena_bytes = (size_t)256 << 20;
    rb_image boxes_img, late, early;
    REQUIRE(rb_generate(&p, &boxes_img) == RB_OK, "%s", rb_last_error());
    p.auto_layout = 1, p.auto_layout_start = 100;
    REQUIRE(rb_generate(&p, &late) == RB_OK, "%s", rb_last_error());
    p.auto_layout_start = 1;
    REQUIRE(rb_generate(&p, &early) == RB_OK, "%s", rb_last_error());
    size_t nb = (size_t)128 * 128 * 3, same_late = 0, same_early = 0;
    for (size_t i = 0; i < nb; i++)
        same_late += boxes_img.data[i] == late.data[i], same_early += boxes_img.data[i] == early.data[i];
    CHECK(same_late == nb, "layout not yet active: identical to the box run (%zu of %zu bytes)", same_late, nb);
    CHECK(same_early < nb * 9 / 10, "layout from step 1 changes the image (%zu of %zu bytes equal)", same_early, nb);
    p.subjects[1].phrase = "horse";
    rb_image bad;
    CHECK(rb_generate(&p, &bad) == RB_ERR_INVALID && strstr(rb_last_error(), "horse"), "a phrase not in the prompt: %s",
          rb_last_error());
    rb_image_free(&boxes_img), rb_image_free(&late), rb_image_free(&early);
}

static void t_bad_params(void) {
    rb_gen_params p;
    rb_gen_params_init(&p);
    rb_image img;
    CHECK(rb_generate(&p, &img) == RB_ERR_INVALID, "no model");
    p.model = "/nonexistent", p.prompt = "x", p.width = 100;
    CHECK(rb_generate(&p, &img) == RB_ERR_INVALID && strstr(rb_last_error(), "100x"), "size: %s", rb_last_error());
    p.width = 128, p.n_subjects = 1, p.ms_adapter = "a", p.image_encoder = "e";
    p.subjects[0] = (rb_subject){"i.png", "cat", {0.5f, 0.2f, 0.4f, 0.8f}};
    CHECK(rb_generate(&p, &img) == RB_ERR_INVALID && strstr(rb_last_error(), "empty"), "empty box: %s", rb_last_error());
    p.subjects[0].box[2] = NAN;
    CHECK(rb_generate(&p, &img) == RB_ERR_INVALID && strstr(rb_last_error(), "[0, 1]"), "NaN box: %s", rb_last_error());
    p.n_subjects = 0;
    CHECK(rb_generate(&p, &img) == RB_ERR_IO && strstr(rb_last_error(), "/nonexistent"), "missing model: %s",
          rb_last_error());
}

/* ---- the command line ---- */

static char relbooth_bin[4096];

/* Runs the CLI with stderr captured; returns the exit status (-1 on a signal) and the stderr lines. */
static int run_cli(const char *args, char *err, size_t n, int *lines) {
    char cmd[40000], errfile[4200];
    snprintf(errfile, sizeof errfile, "%s/stderr.txt", t_tmpdir());
    snprintf(cmd, sizeof cmd, "%s %s >/dev/null 2>%s", relbooth_bin, args, errfile);
    int st = system(cmd);
    FILE *f = fopen(errfile, "r");
    size_t got = f ? fread(err, 1, n - 1, f) : 0;
    if (f)
        fclose(f);
    err[got] = 0;
    *lines = 0;
    for (size_t i = 0; i < got; i++)
        *lines += err[i] == '\n';
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void t_cli_generate(void) {
    const char *g = t_golden_path("pipeline_dreamrelation");
    if (!g)
        return;
    char gdir[4096], pipe[8192], tmp[8192], enc[4096], adapter[4096], yaml[8400], args[32768], err[4096];
    snprintf(gdir, sizeof gdir, "%s", g);
    snprintf(tmp, sizeof tmp, "%s/pipeline", gdir);
    t_resolve(tmp, pipe, sizeof pipe);
    const char *model = pipeline_dir(pipe);
    REQUIRE(model, "model folder");
    char model_s[4096];
    snprintf(model_s, sizeof model_s, "%s", model);
    snprintf(tmp, sizeof tmp, "%s/image_encoder", gdir);
    t_resolve(tmp, enc, sizeof enc);
    snprintf(tmp, sizeof tmp, "%s/ms_adapter.safetensors", gdir);
    t_resolve(tmp, adapter, sizeof adapter);
    /* DreamRelation's YAML config format */
    snprintf(yaml, sizeof yaml, "%s/dr.yaml", t_tmpdir());
    FILE *f = fopen(yaml, "w");
    REQUIRE(f, "yaml");
    fprintf(f, "lora_weights: %s/pytorch_lora_weights.safetensors\nclass_names: [\"cat\", \"dog\"]\n"
               "prompt: \"A cat is hugging a dog in the garden.\"\n"
               "images_path: [\"%s/images/img0_300x200_rgb.png\", \"%s/images/img1_180x240_rgba.png\"]\n"
               "boxes: [[[0.0, 0.2, 0.55, 0.85], [0.5, 0.25, 0.95, 0.9]]]\nphrases: [[\"cat\", \"dog\"]]\n",
            gdir, enc, enc);
    fclose(f);
    char out[4300];
    snprintf(out, sizeof out, "%s/cli.png", t_tmpdir());
    int lines;
    snprintf(args, sizeof args,
             "generate -m %s --config %s --ms-adapter %s --image-encoder %s --resampler-dim-head 8 -W 64 -H 64 "
             "--steps 2 -b 2 -o %s -q",
             model_s, yaml, adapter, enc, out);
    int rc = run_cli(args, err, sizeof err, &lines);
    CHECK(rc == 0, "generate exit %d: %s", rc, err);
    char o0[4400], o1[4400];
    snprintf(o0, sizeof o0, "%s/cli_0.png", t_tmpdir());
    snprintf(o1, sizeof o1, "%s/cli_1.png", t_tmpdir());
    rb_image img = {0};
    CHECK(rb_image_load(&img, o0, 0) == RB_OK && img.width == 64 && img.height == 64, "first image");
    rb_image_free(&img);
    CHECK(rb_image_probe(&img, o1) == RB_OK, "second image");
    /* bad input: one line on stderr, exit 2, no output file */
    snprintf(args, sizeof args, "generate -m %s/nonexistent -p x -W 64 -H 64 -o %s/none.png", t_tmpdir(), t_tmpdir());
    rc = run_cli(args, err, sizeof err, &lines);
    CHECK(rc == 2 && lines == 1 && strstr(err, "nonexistent"), "missing model: exit %d, %d lines: %s", rc, lines, err);
    snprintf(tmp, sizeof tmp, "%s/none.png", t_tmpdir());
    CHECK(access(tmp, F_OK) != 0, "no output left behind");
    snprintf(args, sizeof args,
             "generate -m %s -p x --subject /nonexistent.png:cat:0,0,0.5,0.5 --ms-adapter %s --image-encoder %s "
             "--resampler-dim-head 8 -W 64 -H 64 --steps 1 -o %s/none.png",
             model_s, adapter, enc, t_tmpdir());
    rc = run_cli(args, err, sizeof err, &lines);
    CHECK(rc == 2 && lines == 1 && strstr(err, "subject 1"), "missing subject image: exit %d: %s", rc, err);
    rc = run_cli("generate -p x", err, sizeof err, &lines);
    CHECK(rc == 1, "no model is a usage error (exit %d)", rc);
    rc = run_cli("generate -m m -p x --subject nonsense", err, sizeof err, &lines);
    CHECK(rc == 2 && strstr(err, "subject 1") && strstr(err, "--phrase"), "--subject without phrase and box: exit %d: %s", rc, err);
}

int main(int argc, char **argv) {
    (void)argc;
    t_beside_self(argv[0], "../relbooth", relbooth_bin, sizeof relbooth_bin);
    RUN(t_cli_generate);
    RUN(t_bad_params);
    RUN(t_pipeline_sdxl);
    RUN(t_pipeline_sdxl_single_file);
    RUN(t_pipeline_ms_diffusion);
    RUN(t_dreamrelation_global);
    RUN(t_dreamrelation_local);
    RUN(t_auto_layout);
    return t_done();
}
