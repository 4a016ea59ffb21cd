/* `relbooth eval` on the demo (golden tiny) models: generation through rb_generate with MS-Diffusion
 * subjects, scoring with golden/clip_metrics (CLIP) and golden/dino/vit (DINO), the three outputs,
 * resume after an interruption without recomputing, the RelationBench form scored from a folder,
 * and every bad input of the issue through the built binary (exit status 2, the case named). */
/* paths here are short temporary folders; gcc cannot see that through the nested snprintf calls */
#pragma GCC diagnostic ignored "-Wformat-truncation"

#include <jansson.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "golden_models.h"
#include "pipelines/eval.h"

static char bin[4096], root[4096], pipe_dir[4096], adapter[4096], encoder[4096], clip[4096], dino[4096], tok[4096];
static int have_golden;

static int count_of(const char *s, const char *what) {
    int n = 0;
    for (const char *p = s; p && (p = strstr(p, what)); p += strlen(what))
        n++;
    return n;
}

/* The benchmark: refs/{cat,dog,dog2}.png and our JSON manifest with a two-subject and a one-subject case. */
static void make_bench(void) {
    char p[8192];
    snprintf(root, sizeof root, "%s/bench", t_tmpdir());
    mkdir(root, 0755);
    snprintf(p, sizeof p, "%s/refs", root);
    mkdir(p, 0755);
    const char *g = t_golden_path("clip_metrics/images/ref0_256x192_rgb.png");
    snprintf(p, sizeof p, "%s/refs/cat.png", root);
    t_copy_file(g, p);
    g = t_golden_path("clip_metrics/images/ref1_160x200_rgb.png");
    snprintf(p, sizeof p, "%s/refs/dog.png", root);
    t_copy_file(g, p);
    g = t_golden_path("clip_vision/images/img2_224x224_rgb.png");
    snprintf(p, sizeof p, "%s/refs/dog2.png", root);
    t_copy_file(g, p);
    snprintf(p, sizeof p, "%s/manifest.json", root);
    t_write_text(p, "{\"root\": \"refs\",\n"
                  " \"subjects\": [{\"name\": \"cat\", \"images\": [\"cat.png\"], \"phrase\": \"cat\"},\n"
                  "              {\"name\": \"dog\", \"images\": [\"dog.png\", \"dog2.png\"], \"phrase\": \"dog\"}],\n"
                  " \"cases\": [{\"id\": \"hug\", \"prompt\": \"A {} is hugging a {} in front of the mountain.\",\n"
                  "            \"subjects\": [\"cat\", \"dog\"], \"boxes\": [[0, 0.2, 0.5, 0.8], [0.5, 0.2, 1, 0.8]]},\n"
                  "           {\"id\": \"ride\", \"prompt\": \"A {} is riding a horse through a forest.\",\n"
                  "            \"subjects\": [\"dog\"]}]}\n");
}

static void base_params(rb_eval_params *p, const char *manifest, const char *out) {
    rb_eval_params_init(p);
    p->manifest = manifest, p->out_dir = out;
    p->gen.model = pipe_dir, p->gen.ms_adapter = adapter, p->gen.image_encoder = encoder;
    p->gen.resampler_dim_head = 8;
    p->gen.steps = 2, p->gen.width = p->gen.height = 64;
    p->gen.arena_bytes = (size_t)256 << 20;
    p->metrics.clip_dir = clip, p->metrics.dino_dir = dino, p->metrics.tokenizer_dir = tok;
    p->log = getenv("EVAL_LOG") ? stderr : NULL;
}

static void t_manifest(void) {
    if (!have_golden)
        return;
    char path[8192];
    snprintf(path, sizeof path, "%s/manifest.json", root);
    rb_eval_manifest m;
    REQUIRE(rb_eval_manifest_load(&m, path, NULL, NULL) == RB_OK, "%s", rb_last_error());
    CHECK(m.format == RB_EVAL_RELBOOTH && m.n_cases == 2 && m.n_subjects == 2, "counts");
    CHECK(!strcmp(m.cases[0].text, "A cat is hugging a dog in front of the mountain."), "text: %s", m.cases[0].text);
    CHECK(!strcmp(m.cases[0].predicate, "hugging"), "predicate: %s", m.cases[0].predicate);
    CHECK(!strcmp(m.cases[1].predicate, "riding a horse"), "predicate: %s", m.cases[1].predicate);
    CHECK(m.cases[0].boxes[1][0] == 0.5f && m.cases[0].boxes[1][3] == 0.8f, "boxes as given");
    CHECK(m.cases[1].boxes[0][0] == 0 && m.cases[1].boxes[0][2] == 1 && m.cases[1].boxes[0][3] == 1,
          "one subject: whole image");
    CHECK(m.subjects[1].n_images == 2 && strstr(m.subjects[1].images[1], "bench/refs/dog2.png"), "images resolved");
    rb_eval_manifest_free(&m);
    CHECK(rb_eval_count_slots("A { } and a {} and {x}") == 2, "slot count");
}

typedef struct {
    int generated, scored, stop_after;
    volatile int cancel;
} counter;

static void on_image(void *user, const char *id, uint64_t seed, int generated, int scored) {
    counter *c = user;
    c->generated += generated, c->scored += scored;
    if (c->stop_after && c->generated >= c->stop_after)
        c->cancel = 1;
}

/* The expected per-image scores from rb_metrics_score (the tested metric path), independent of eval.c. */
static void expected_means(const char *out, rb_score_scale scale, double want[4]) {
    rb_metrics_config cfg;
    rb_metrics_config_init(&cfg);
    cfg.clip_dir = clip, cfg.dino_dir = dino, cfg.tokenizer_dir = tok;
    rb_metrics m;
    REQUIRE(rb_metrics_open(&m, &cfg) == RB_OK, "%s", rb_last_error());
    int E = rb_metrics_clip_dim(&m), D = rb_metrics_dino_dim(&m);
    const char *refs[3] = {"cat.png", "dog.png", "dog2.png"};
    float rc[3 * 1024], rd[3 * 1024];
    REQUIRE(E <= 1024 && D <= 1024, "dims");
    for (int i = 0; i < 3; i++) {
        char p[8192];
        rb_image img;
        snprintf(p, sizeof p, "%s/refs/%s", root, refs[i]);
        REQUIRE(rb_image_load(&img, p, 3) == RB_OK, "%s", rb_last_error());
        REQUIRE(rb_metrics_image_features(&m, &img, 1, rc + i * E, rd + i * D) == RB_OK, "%s", rb_last_error());
        rb_image_free(&img);
    }
    double sum[4] = {0};
    const char *cases[2] = {"hug", "ride"};
    const char *texts[2] = {"A cat is hugging a dog in front of the mountain.", "A dog is riding a horse through a forest."};
    const char *preds[2] = {"hugging", "riding a horse"};
    const int seeds[1] = {42};
    for (int c = 0; c < 2; c++)
        for (int s = 0; s < 1; s++) {
            char p[8192];
            rb_image img;
            snprintf(p, sizeof p, "%s/images/%s_%d.png", out, cases[c], seeds[s]);
            REQUIRE(rb_image_load(&img, p, 3) == RB_OK, "%s", rb_last_error());
            rb_metrics_scores sc;
            /* hug: cat (ref 0), dog (refs 1, 2); ride: dog (refs 1, 2) */
            const float *c0 = c == 0 ? rc : rc + E, *d0 = c == 0 ? rd : rd + D;
            int nr = c == 0 ? 3 : 2;
            REQUIRE(rb_metrics_score(&m, &img, texts[c], preds[c], c0, d0, nr, &sc) == RB_OK, "%s", rb_last_error());
            rb_image_free(&img);
            double x[8], y[8];
            for (int r = 0; r < nr; r++)
                x[r] = rb_score_apply(scale, sc.clip_i[r]), y[r] = rb_score_apply(scale, sc.dino[r]);
            sum[0] += rb_score_apply(scale, sc.clip_t);
            sum[1] += rb_score_apply(scale, sc.clip_r);
            sum[2] += c == 0 ? (x[0] + (x[1] + x[2]) / 2) / 2 : (x[0] + x[1]) / 2;
            sum[3] += c == 0 ? (y[0] + (y[1] + y[2]) / 2) / 2 : (y[0] + y[1]) / 2;
        }
    for (int k = 0; k < 4; k++)
        want[k] = sum[k] / 2;
    rb_metrics_close(&m);
}

static void t_generate_resume(void) {
    if (!have_golden)
        return;
    char manifest[8192], out[8192], first[8192];
    snprintf(manifest, sizeof manifest, "%s/manifest.json", root);
    snprintf(out, sizeof out, "%s/out_gen", t_tmpdir());
    rb_eval_params p;
    base_params(&p, manifest, out);
    /* one seed: each rb_generate call loads the (tiny) pipeline again, ~9 s of CPU on the 2-core machine;
     * several seeds per case are exercised by the folder-scoring test */
    p.seeds[0] = 42, p.n_seeds = 1;
    counter cnt = {.stop_after = 1};
    p.on_image = on_image, p.user = &cnt, p.cancel = &cnt.cancel;
    rb_eval_stats st;
    /* interrupted after the first image */
    rb_status s = rb_eval_run(&p, &st);
    CHECK(s == RB_ERR_CANCELLED && st.generated == 1 && cnt.generated == 1, "cancelled: %d, %s", s, rb_last_error());
    snprintf(first, sizeof first, "%s/images/hug_42.png", out);
    struct stat st0, st1;
    REQUIRE(stat(first, &st0) == 0, "first image written");
    /* rerun: the first image is not generated again */
    counter cnt2 = {0};
    p.user = &cnt2, p.cancel = &cnt2.cancel;
    s = rb_eval_run(&p, &st);
    REQUIRE(s == RB_OK, "%s", rb_last_error());
    CHECK(st.generated == 1 && st.skipped_generate == 1 && st.scored == 2 && cnt2.generated == 1 && cnt2.scored == 2,
          "resume: generated %d, skipped %d, scored %d", st.generated, st.skipped_generate, st.scored);
    REQUIRE(stat(first, &st1) == 0, "first image");
    CHECK(st0.st_ino == st1.st_ino && st0.st_mtim.tv_sec == st1.st_mtim.tv_sec &&
              st0.st_mtim.tv_nsec == st1.st_mtim.tv_nsec,
          "first image untouched");
    CHECK(st.cases == 2 && st.images == 2, "cases %d images %d", st.cases, st.images);

    /* the three outputs */
    char path[8192];
    snprintf(path, sizeof path, "%s/metrics.json", out);
    json_error_t jerr;
    json_t *j = json_load_file(path, 0, &jerr);
    REQUIRE(j, "metrics.json: %s", jerr.text);
    CHECK(!strcmp(json_string_value(json_object_get(j, "convention")), "x100"), "convention");
    CHECK(json_integer_value(json_object_get(j, "cases")) == 2 && json_integer_value(json_object_get(j, "images")) == 2,
          "counts");
    double want[4], want_raw[4];
    expected_means(out, RB_SCORE_X100, want);
    expected_means(out, RB_SCORE_COSINE, want_raw);
    const char *names[4] = {"CLIP-T", "CLIP-R", "CLIP-I", "DINO"};
    double got[4] = {st.clip_t, st.clip_r, st.clip_i, st.dino};
    for (int k = 0; k < 4; k++) {
        json_t *mk = json_object_get(json_object_get(j, "metrics"), names[k]);
        double v = json_number_value(json_object_get(mk, "mean"));
        CHECK(json_integer_value(json_object_get(mk, "count")) == 2, "%s count", names[k]);
        CHECK(fabs(v - want[k]) <= 1e-6 * fmax(1, fabs(want[k])) && fabs(got[k] - want[k]) <= 1e-9 * fmax(1, fabs(want[k])),
              "%s: metrics.json %.9g, stats %.9g, rb_metrics_score %.9g", names[k], v, got[k], want[k]);
    }
    CHECK(!strcmp(json_string_value(json_object_get(json_object_get(j, "models"), "clip")), clip), "clip path");
    json_decref(j);
    snprintf(path, sizeof path, "%s/cases.csv", out);
    char *csv = t_read_text(path);
    REQUIRE(csv, "cases.csv");
    CHECK(count_of(csv, "\n") == 3 && count_of(csv, "\nhug,42,") == 1 && count_of(csv, "\nride,42,") == 1, "csv rows:\n%s",
          csv);
    CHECK(strstr(csv, ",hugging,cat;dog,") && strstr(csv, ",riding a horse,dog,"), "csv predicate/subjects");
    free(csv);
    snprintf(path, sizeof path, "%s/report.html", out);
    char *html = t_read_text(path);
    REQUIRE(html, "report.html");
    CHECK(count_of(html, "<img src=\"thumbs/img_") == 2 && count_of(html, "<img src=\"thumbs/ref_") == 5, "grid images");
    CHECK(strstr(html, "CLIP-R") && strstr(html, "x100") && strstr(html, "</html>"), "metric table");
    free(html);
    snprintf(path, sizeof path, "%s/thumbs/ref_dog_1.png", out);
    CHECK(access(path, R_OK) == 0, "reference thumbnail");
    snprintf(path, sizeof path, "%s/thumbs/img_ride_42.png", out);
    CHECK(access(path, R_OK) == 0, "image thumbnail");

    /* a third run computes nothing; a new convention changes the numbers, not the work */
    counter cnt3 = {0};
    p.user = &cnt3, p.cancel = &cnt3.cancel, p.scale = RB_SCORE_COSINE;
    s = rb_eval_run(&p, &st);
    CHECK(s == RB_OK && st.generated == 0 && st.scored == 0 && st.skipped_score == 2 && cnt3.generated == 0 &&
              cnt3.scored == 0,
          "nothing recomputed: %d %d", st.generated, st.scored);
    double raw[4] = {st.clip_t, st.clip_r, st.clip_i, st.dino};
    for (int k = 0; k < 4; k++)
        CHECK(fabs(raw[k] - want_raw[k]) < 1e-9, "cosine %s: %.9g vs %.9g", names[k], raw[k], want_raw[k]);
    /* the generated PNG carries its generation parameters */
    char *png = t_read_text(first);
    CHECK(png && memmem(png, (size_t)st1.st_size, "tEXtparameters", 14), "parameters chunk");
    free(png);
}

/* The RelationBench form, scored from a folder of <case id>_<seed>.png images. */
static void t_relationbench_images(void) {
    if (!have_golden)
        return;
    char p[8192], q[8192], imgs[8192], out[8192];
    snprintf(p, sizeof p, "%s/rb", t_tmpdir());
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/rb/benchmark", t_tmpdir());
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/rb/benchmark/plushie_cat", t_tmpdir());
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/refs/cat.png", root);
    snprintf(q, sizeof q, "%s/rb/benchmark/plushie_cat/00.jpg", t_tmpdir()); /* PNG bytes under .jpg */
    t_copy_file(p, q);
    snprintf(p, sizeof p, "%s/refs/dog.png", root);
    snprintf(q, sizeof q, "%s/rb/benchmark/plushie_cat/01.jpg", t_tmpdir());
    t_copy_file(p, q);
    snprintf(p, sizeof p, "%s/rb/prompts.json", t_tmpdir());
    t_write_text(p, "[{\"sub1\": \"benchmark/plushie_cat\", \"prompt\": \"A plushie cat is hugging a cat in front of "
                  "the mountain.\", \"phrase\": \"plushie_cat\", \"model\": \"lora-trained-xl-hugging\"}]");
    rb_eval_manifest m;
    REQUIRE(rb_eval_manifest_load(&m, p, NULL, NULL) == RB_OK, "%s", rb_last_error());
    CHECK(m.format == RB_EVAL_RELATIONBENCH && m.n_cases == 2 && !strcmp(m.cases[0].id, "001_plushie_cat_00") &&
              !strcmp(m.cases[1].id, "001_plushie_cat_01"),
          "one case per reference photo: %d %s", m.n_cases, m.n_cases ? m.cases[0].id : "");
    CHECK(m.n_cases == 2 && !strcmp(m.cases[0].predicate, "hugging a cat") &&
              !strcmp(m.subjects[m.cases[0].subjects[0]].phrase, "plushie cat"),
          "predicate '%s'", m.n_cases ? m.cases[0].predicate : "");
    rb_eval_manifest_free(&m);
    /* images: reuse the generated ones */
    snprintf(imgs, sizeof imgs, "%s/rb_images", t_tmpdir());
    mkdir(imgs, 0755);
    const char *names[3] = {"001_plushie_cat_00_42.png", "001_plushie_cat_01_42.png", "001_plushie_cat_01_5.png"};
    for (int i = 0; i < 3; i++) {
        snprintf(q, sizeof q, "%s/out_gen/images/%s", t_tmpdir(), i == 2 ? "ride_42.png" : "hug_42.png");
        char d[8192];
        snprintf(d, sizeof d, "%s/%s", imgs, names[i]);
        t_copy_file(q, d);
    }
    snprintf(out, sizeof out, "%s/out_rb", t_tmpdir());
    rb_eval_params ep;
    base_params(&ep, p, out);
    ep.gen.model = NULL;
    ep.images_dir = imgs;
    ep.scale = RB_SCORE_COSINE;
    rb_eval_stats st;
    REQUIRE(rb_eval_run(&ep, &st) == RB_OK, "%s", rb_last_error());
    CHECK(st.cases == 2 && st.images == 3 && st.scored == 3 && st.generated == 0, "images %d", st.images);
    snprintf(q, sizeof q, "%s/metrics.json", out);
    json_t *j = json_load_file(q, 0, NULL);
    REQUIRE(j, "metrics.json");
    CHECK(!strcmp(json_string_value(json_object_get(j, "format")), "relationbench") &&
              !strcmp(json_string_value(json_object_get(j, "convention")), "cosine") &&
              json_array_size(json_object_get(j, "seeds")) == 2,
          "metrics.json fields");
    double ct = json_number_value(json_object_get(json_object_get(json_object_get(j, "metrics"), "CLIP-T"), "mean"));
    CHECK(ct > -1 && ct < 1 && fabs(ct - st.clip_t) < 1e-9, "cosine CLIP-T %g", ct);
    json_decref(j);
}

/* Runs `relbooth eval -q <args>`; exit status, stderr in err. */
static char err[8192], out_ignored[4096];
static int run(const char *args) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "%s eval -q %s", bin, args);
    return t_run_capture(cmd, out_ignored, sizeof out_ignored, err, sizeof err);
}

static int one_line(const char *prefix) {
    const char *nl = strchr(err, '\n');
    return !strncmp(err, prefix, strlen(prefix)) && nl && nl[1] == 0;
}

static void t_bad_input(void) {
    if (access(bin, X_OK) != 0) {
        t_skip("%s not built", bin);
        return;
    }
    char dir[4096], m[8192], args[16384];
    snprintf(dir, sizeof dir, "%s/bad", t_tmpdir());
    mkdir(dir, 0755);
    CHECK(run("") == 1 && run("x.json -o o") == 1, "usage");
    CHECK(run("x.json -o o --clip c --generate") == 1, "--generate without --model");
    /* missing reference image */
    snprintf(m, sizeof m, "%s/missing_ref.json", dir);
    t_write_text(m, "{\"subjects\": [{\"name\": \"cat\", \"images\": [\"nope/cat.png\"]}],"
                  " \"cases\": [{\"id\": \"c1\", \"prompt\": \"A {} is sleeping.\", \"subjects\": [\"cat\"]}]}");
    snprintf(args, sizeof args, "%s -o %s/o --clip x --images %s", m, dir, dir);
    CHECK(run(args) == 2 && one_line("relbooth eval: case c1: reference image") && strstr(err, "nope/cat.png"),
          "missing reference: %s", err);
    /* empty benchmark, both forms */
    snprintf(m, sizeof m, "%s/empty.json", dir);
    t_write_text(m, "{\"subjects\": [], \"cases\": []}");
    snprintf(args, sizeof args, "%s -o %s/o --clip x --images %s", m, dir, dir);
    CHECK(run(args) == 2 && one_line("relbooth eval: manifest ") && strstr(err, "no cases"), "empty: %s", err);
    t_write_text(m, "[]");
    CHECK(run(args) == 2 && one_line("relbooth eval: manifest ") && strstr(err, "no cases"), "empty list: %s", err);
    if (!have_golden)
        return;
    /* {} slots that do not match the subjects */
    snprintf(m, sizeof m, "%s/slots.json", dir);
    snprintf(args, sizeof args,
             "{\"subjects\": [{\"name\": \"cat\", \"images\": [\"%s/refs/cat.png\"]}],"
             " \"cases\": [{\"id\": \"ok\", \"prompt\": \"A {} is sleeping.\", \"subjects\": [\"cat\"]},"
             " {\"id\": \"hug2\", \"prompt\": \"A {} is hugging a {}.\", \"subjects\": [\"cat\"]}]}",
             root);
    t_write_text(m, args);
    snprintf(args, sizeof args, "%s -o %s/o --clip x --images %s", m, dir, dir);
    CHECK(run(args) == 2 && one_line("relbooth eval: case hug2: prompt has 2 {} slot(s) but 1 subject(s)"),
          "slots: %s", err);
    /* RelationBench: a subject that the prompt does not name, a missing reference folder */
    snprintf(m, sizeof m, "%s/rbbad.json", dir);
    snprintf(args, sizeof args, "[{\"sub1\": \"benchmark/plushie_cat\", \"prompt\": \"A dog is kissing a cat.\", "
                                "\"phrase\": \"plushie_cat\"}]");
    t_write_text(m, args);
    snprintf(args, sizeof args, "%s --root %s/rb -o %s/o --clip x --images %s", m, t_tmpdir(), dir, dir);
    CHECK(run(args) == 2 && one_line("relbooth eval: case 001_plushie_cat: the subject") && strstr(err, "prompt"),
          "subject not in prompt: %s", err);
    snprintf(args, sizeof args, "%s --root %s/nowhere -o %s/o --clip x --images %s", m, t_tmpdir(), dir, dir);
    CHECK(run(args) == 2 && one_line("relbooth eval: case 001 (benchmark/plushie_cat): reference folder"),
          "missing folder: %s", err);
    /* unreadable output / images folder, and an image missing from the folder */
    snprintf(m, sizeof m, "%s/manifest.json", root);
    snprintf(args, sizeof args, "%s -o /nonexistent/relbooth/out --clip x --images %s", m, dir);
    CHECK(run(args) == 2 && one_line("relbooth eval: output folder /nonexistent/relbooth/out: "), "out: %s", err);
    snprintf(args, sizeof args, "%s -o %s/o --clip x --images %s/nonexistent", m, dir, dir);
    CHECK(run(args) == 2 && one_line("relbooth eval: images folder ") && strstr(err, "cannot read"), "images: %s",
          err);
    snprintf(args, sizeof args, "%s -o %s/o --clip x --images %s/out_gen/images --seeds 42,8", m, dir, t_tmpdir());
    CHECK(run(args) == 2 && one_line("relbooth eval: case hug: no image hug_8.png"), "missing image: %s", err);
}

int main(int argc, char **argv) {
    (void)argc;
    t_beside_self(argv[0], "../relbooth", bin, sizeof bin);
    const char *g = t_golden_path("pipeline_sdxl");
    if (g && t_pipeline_dir(g, "pipeline_sdxl", pipe_dir, sizeof pipe_dir)) {
        snprintf(adapter, sizeof adapter, "%s", t_golden_path("ms_diffusion/ms_adapter.safetensors"));
        snprintf(encoder, sizeof encoder, "%s", t_golden_path("clip_vision"));
        snprintf(clip, sizeof clip, "%s", t_golden_path("clip_metrics"));
        snprintf(dino, sizeof dino, "%s", t_golden_path("dino/vit"));
        snprintf(tok, sizeof tok, "%s", t_golden_path("clip_tokenizer/tokenizer"));
        make_bench();
        have_golden = 1;
    }
    RUN(t_manifest);
    RUN(t_generate_resume);
    RUN(t_relationbench_images);
    RUN(t_bad_input);
    return t_done();
}
