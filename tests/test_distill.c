/* CLIPSelf distillation (src/pipelines/distill.[ch]) on the tiny open_clip ViT of
 * golden/local_tokens (width 32, 3 blocks, patch 14, 56 px) with golden/clip_metrics/images as the
 * image folder: the loss falls, the student's gradients match central differences, and the written
 * checkpoint loads as a local encoder that gives the student's dense features. */
#include <unistd.h>

#include "harness.h"
#include "pipelines/distill.h"

#define STUDENT_SIZE 112 /* an 8 x 8 patch grid (the checkpoint's is 4 x 4: positions are rescaled) */

static int setup(rb_distill_params *p, char *imgdir, size_t n) {
    const char *ckpt = t_golden_path("local_tokens/open_clip.safetensors");
    if (!ckpt)
        return 0;
    static char ck[4096], cfg[4096];
    snprintf(ck, sizeof ck, "%s", ckpt);
    const char *c = t_golden_path("local_tokens/open_clip_config.json");
    const char *im = t_golden_path("clip_metrics/images");
    if (!c || !im)
        return 0;
    snprintf(cfg, sizeof cfg, "%s", c);
    snprintf(imgdir, n, "%s", im);
    rb_distill_params_init(p);
    p->teacher = ck;
    p->teacher_config = cfg;
    p->data = imgdir;
    p->image_size = STUDENT_SIZE;
    p->grid_min = 2;
    p->grid_max = 4;
    p->batch = 2;
    p->adam.lr = 1e-3; /* a tiny random model: a visible change in 10 steps */
    p->adam.weight_decay = 0.1;
    p->arena_bytes = (size_t)64 << 20;
    return 1;
}

static int load_two(const char *dir, rb_image *imgs) {
    static const char *const names[] = {"ref0_256x192_rgb.png", "ref1_160x200_rgb.png"};
    for (int i = 0; i < 2; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (rb_image_load(&imgs[i], path, 3) != RB_OK)
            return 0;
    }
    return 1;
}

/* (a) the loss of a fixed batch (both images, 4 x 4 boxes) falls over 10 steps */
static void t_loss_falls(void) {
    rb_distill_params p;
    char dir[4096];
    if (!setup(&p, dir, sizeof dir))
        return;
    rb_distill d;
    REQUIRE(rb_distill_open(&d, &p) == RB_OK, "%s", rb_last_error());
    CHECK(d.n_files == 2, "%d images in the folder", d.n_files);
    /* everything trains but the class and position embeddings */
    CHECK(d.n_train == d.n_par - 2, "%d of %d parameters train", d.n_train, d.n_par);
    rb_image imgs[2];
    if (!load_two(dir, imgs)) {
        CHECK(0, "%s", rb_last_error());
        rb_distill_close(&d);
        return;
    }
    double before = NAN, after = NAN, l = NAN;
    CHECK(rb_distill_loss(&d, imgs, 2, 4, 0, &before) == RB_OK, "%s", rb_last_error());
    for (int i = 0; i < 10; i++) {
        int grid = 0;
        CHECK(rb_distill_step(&d, &l, &grid) == RB_OK, "%s", rb_last_error());
        CHECK(grid >= 2 && grid <= 4 && isfinite(l), "step %d: grid %d loss %g", i, grid, l);
    }
    CHECK(rb_distill_loss(&d, imgs, 2, 4, 0, &after) == RB_OK, "%s", rb_last_error());
    fprintf(stderr, "  loss %.5f -> %.5f after 10 steps\n", before, after);
    CHECK(before > 0.05 && after < 0.8 * before, "loss %.5f -> %.5f", before, after);
    rb_image_free(&imgs[0]);
    rb_image_free(&imgs[1]);
    rb_distill_close(&d);
}

/* index of the largest |g| */
static int64_t argmax_abs(const rb_tensor *g) {
    const float *x = g->data;
    int64_t best = 0;
    for (int64_t i = 1; i < rb_numel(g); i++)
        if (fabsf(x[i]) > fabsf(x[best]))
            best = i;
    return best;
}

/* (b) analytic gradients of the student against central differences of the loss (computed in
 * double from the pooled features), 3 x 3 boxes on the 8 x 8 grid (fractional roi_align boxes) */
static void t_gradcheck_student(void) {
    rb_distill_params p;
    char dir[4096];
    if (!setup(&p, dir, sizeof dir))
        return;
    p.data = NULL;
    rb_distill d;
    REQUIRE(rb_distill_open(&d, &p) == RB_OK, "%s", rb_last_error());
    rb_image imgs[2];
    if (!load_two(dir, imgs)) {
        CHECK(0, "%s", rb_last_error());
        rb_distill_close(&d);
        return;
    }
    double l0;
    rb_adam_zero_grad(&d.opt);
    CHECK(rb_distill_loss(&d, imgs, 2, 3, 1, &l0) == RB_OK, "%s", rb_last_error());
    static const char *const names[] = {
        "visual.conv1.weight",
        "visual.ln_pre.weight",
        "visual.transformer.resblocks.0.attn.in_proj_weight", /* q/k of a block with attention */
        "visual.transformer.resblocks.1.mlp.c_fc.weight",
        "visual.transformer.resblocks.2.attn.in_proj_bias", /* the last block: only v matters */
        "visual.transformer.resblocks.2.attn.out_proj.weight",
        "visual.ln_post.bias",
        "visual.proj",
    };
    double worst = 0;
    int checked = 0;
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        rb_distill_param *par = NULL;
        for (int i = 0; i < d.n_par; i++)
            if (!strcmp(d.par[i].name, names[k]))
                par = &d.par[i];
        if (!par || !par->trains) {
            CHECK(0, "%s: not a trained parameter", names[k]);
            continue;
        }
                /* the largest gradient and one other element (for the packed in_proj: in the k rows) */
        int64_t picks[2] = {argmax_abs(&par->g), rb_numel(&par->t) / 3 + 1};
        if (strstr(names[k], "in_proj_bias")) /* last block: q and k rows have no effect (gradient 0) */
            picks[1] = 0;
        for (int j = 0; j < 2; j++) {
            float *x = (float *)par->t.data + picks[j];
            double ana = ((float *)par->g.data)[picks[j]];
            float x0 = *x, h = 1e-2f * fmaxf(1.0f, fabsf(x0));
            double lp, lm;
            *x = x0 + h;
            rb_status s1 = rb_distill_loss(&d, imgs, 2, 3, 0, &lp);
            *x = x0 - h;
            rb_status s2 = rb_distill_loss(&d, imgs, 2, 3, 0, &lm);
            double step = (double)(x0 + h) - (double)(x0 - h);
            *x = x0;
            CHECK(s1 == RB_OK && s2 == RB_OK, "%s", rb_last_error());
            double num = (lp - lm) / step;
            /* error relative to the element's gradient, with a floor for elements whose gradient is
             * ~0 (f32 forward noise ~1e-7 / 2e-2 step ~ 5e-6) */
            double err = fabs(num - ana) / fmax(fabs(ana), 1e-3);
            worst = fmax(worst, err);
            checked++;
            CHECK(err < 2e-2, "%s[%lld]: analytic %.6g numeric %.6g (rel %.3g)", names[k], (long long)picks[j], ana,
                  num, err);
        }
    }
    fprintf(stderr, "  %d elements, worst relative error %.3g (loss %.5f)\n", checked, worst, l0);
    /* frozen: the class embedding has no gradient buffer and is not in the optimizer */
    for (int i = 0; i < d.n_par; i++)
        if (!strcmp(d.par[i].name, "visual.class_embedding"))
            CHECK(!d.par[i].trains && !d.par[i].t.grad, "class embedding trains");
    rb_image_free(&imgs[0]);
    rb_image_free(&imgs[1]);
    rb_distill_close(&d);
}

/* --train-blocks 1: blocks 0 and 1 and the embedding group get no gradient */
static void t_train_last_block(void) {
    rb_distill_params p;
    char dir[4096];
    if (!setup(&p, dir, sizeof dir))
        return;
    p.data = NULL;
    p.train_blocks = 1;
    rb_distill d;
    REQUIRE(rb_distill_open(&d, &p) == RB_OK, "%s", rb_last_error());
    for (int i = 0; i < d.n_par; i++) {
        const char *n = d.par[i].name;
        int want = strstr(n, "resblocks.2.") || strstr(n, "ln_post") || !strcmp(n, "visual.proj");
        CHECK(d.par[i].trains == want, "%s trains = %d", n, d.par[i].trains);
    }
    rb_distill_close(&d);
}

/* (c) the written checkpoint loads as a local encoder and gives the student's dense features */
static void t_output_loads(void) {
    rb_distill_params p;
    char dir[4096];
    if (!setup(&p, dir, sizeof dir))
        return;
    char tmpl[] = "/tmp/relbooth-distill-XXXXXX", out[4200];
    REQUIRE(mkdtemp(tmpl), "mkdtemp failed");
    snprintf(out, sizeof out, "%s/student.safetensors", tmpl);
    p.steps = 3;
    p.output = out;
    double last = NAN;
    CHECK(rb_distill_run(&p, &last) == RB_OK, "%s", rb_last_error());
    CHECK(isfinite(last), "last loss %g", last);

    /* the same 3 steps in memory (same seed: same draws) */
    rb_distill d;
    REQUIRE(rb_distill_open(&d, &p) == RB_OK, "%s", rb_last_error());
    for (int i = 0; i < 3; i++)
        CHECK(rb_distill_step(&d, NULL, NULL) == RB_OK, "%s", rb_last_error());

    rb_local_encoder e;
    rb_status s = rb_local_encoder_load(&e, out, NULL); /* open_clip_config.json found next to it */
    CHECK(s == RB_OK, "%s", rb_last_error());
    rb_arena ar;
    if (s == RB_OK && rb_arena_init(&ar, (size_t)64 << 20, "test") == RB_OK) {
        rb_ctx c;
        rb_ctx_init(&c, &ar);
        rb_tensor *px = rb_ctx_tensor(&c, RB_F32, 4, (int64_t[]){1, 3, STUDENT_SIZE, STUDENT_SIZE});
        REQUIRE(px, "arena");
        float *x = px->data;
        for (int64_t i = 0; i < rb_numel(px); i++)
            x[i] = (float)sin(0.001 * (double)i * 7.0);
        rb_tensor *a = rb_local_dense(&c, &e, px, NULL);
        rb_tensor *b = rb_local_dense(&c, &d.student, px, NULL);
        rb_tensor *t = rb_local_dense(&c, &d.teacher, px, NULL);
        CHECK(a && b && t && rb_numel(a) == 64 * 32, "dense: %s", rb_last_error());
        if (a && b && t) {
            double diff = 0, moved = 0;
            for (int64_t i = 0; i < rb_numel(a); i++) {
                diff = fmax(diff, fabs(((float *)a->data)[i] - ((float *)b->data)[i]));
                moved = fmax(moved, fabs(((float *)a->data)[i] - ((float *)t->data)[i]));
            }
            CHECK(diff == 0, "loaded vs in-memory student: max diff %g", diff);
            CHECK(moved > 1e-4, "the student did not move from the teacher (max diff %g)", moved);
        }
        rb_arena_free(&ar);
    }
    if (s == RB_OK)
        rb_local_encoder_free(&e);
    rb_distill_close(&d);
    char cfg[4300];
    snprintf(cfg, sizeof cfg, "%s/open_clip_config.json", tmpl);
    unlink(out);
    unlink(cfg);
    rmdir(tmpl);
}

static void t_bad_input(void) {
    rb_distill_params p;
    char dir[4096];
    if (!setup(&p, dir, sizeof dir))
        return;
    rb_distill d;
    p.image_size = 100; /* not a multiple of 14 */
    CHECK(rb_distill_open(&d, &p) != RB_OK && strstr(rb_last_error(), "multiple"), "%s", rb_last_error());
    p.image_size = STUDENT_SIZE;
    p.grid_max = 9; /* more boxes than patches */
    CHECK(rb_distill_open(&d, &p) != RB_OK, "grid 9 on an 8 x 8 grid accepted");
    p.grid_max = 4;
    p.data = "/nonexistent-relbooth-dir";
    CHECK(rb_distill_open(&d, &p) != RB_OK && strstr(rb_last_error(), "nonexistent"), "%s", rb_last_error());
}

int main(void) {
    RUN(t_loss_falls);
    RUN(t_gradcheck_student);
    RUN(t_train_last_block);
    RUN(t_output_loads);
    RUN(t_bad_input);
    return t_done();
}
