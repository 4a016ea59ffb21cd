/* RelationBench scores (pipelines/metrics.h) and CLIPModel (models/clip_model.h) against
 * golden/clip_metrics (transformers CLIPModel + CLIPProcessor run through the public reproduction's
 * metric functions) and golden/dino. Tolerances: 10x each tensor's fp32-vs-fp64 difference of case.md
 * (as the other model tests); token ids exact. */
#include "harness.h"
#include "pipelines/metrics.h"

#include "io/safetensors.h"

static void compare(const char *what, const float *got, const rb_tensor *want, float atol) {
    REQUIRE(got && want, "%s: missing", what);
    double md;
    int ok = t_allclose(got, want->data, (size_t)rb_numel(want), atol, 0, &md);
    CHECK(ok, "%s: max |diff| %g > %g", what, md, atol);
    fprintf(stderr, "  %-36s max |diff| %.3g (atol %.3g)\n", what, md, atol);
}

static int open_io(rb_safetensors *st, const char *rel) {
    const char *p = t_golden_path(rel);
    if (!p)
        return 0;
    rb_status s = rb_st_open(st, p);
    CHECK(s == RB_OK, "%s: %s", p, rb_last_error());
    return s == RB_OK;
}

/* CLIPModel from the golden inputs: features, logits, cosines, both score conventions */
static void t_clip_model_golden(void) {
    rb_safetensors io, vio;
    if (!open_io(&io, "clip_metrics/io.safetensors"))
        return;
    if (!open_io(&vio, "clip_vision/io.safetensors")) {
        rb_st_close(&io);
        return;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", t_golden_path("clip_metrics"));
    rb_clip_model m;
    rb_status s = rb_clip_model_load(&m, dir);
    REQUIRE(s == RB_OK, "load: %s", rb_last_error());
    CHECK(m.text.cfg.eos_token_id == 2 && m.text.cfg.vocab == 49408 && m.text.cfg.max_positions == 77 &&
              m.text.cfg.hidden == 12 && m.vision.cfg.image_size == 224 && m.vision.cfg.patch_size == 14,
          "config: eos %d vocab %d positions %d hidden %d image %d patch %d", m.text.cfg.eos_token_id,
          m.text.cfg.vocab, m.text.cfg.max_positions, m.text.cfg.hidden, m.vision.cfg.image_size,
          m.vision.cfg.patch_size);
    CHECK(fabsf(m.logit_scale - *(const float *)rb_st_get(&io, "logit_scale")->data) == 0, "logit_scale %g",
          m.logit_scale);
    rb_arena arena;
    rb_arena_init(&arena, 64 << 20, "metrics test");
    rb_ctx c;
    rb_ctx_init(&c, &arena);
    rb_tensor ids = *rb_st_get(&io, "text_input_ids"), mask = *rb_st_get(&io, "text_attention_mask");
    /* pixels: the 3 generated images (rows of clip_vision's pixel_values), then the 2 references */
    const rb_tensor *rows = rb_st_get(&io, "gen_pixel_values_rows_in_clip_vision_io");
    const rb_tensor *gpx = rb_st_get(&vio, "pixel_values"), *rpx = rb_st_get(&io, "ref_pixel_values");
    rb_tensor *px = rb_ctx_tensor(&c, RB_F32, 4, (int64_t[]){5, 3, 224, 224});
    size_t img = 3 * 224 * 224;
    for (int i = 0; i < 3; i++)
        memcpy((float *)px->data + i * img, (const float *)gpx->data + (int64_t)rb_tensor_get(rows, i) * img,
               img * sizeof(float));
    memcpy((float *)px->data + 3 * img, rpx->data, 2 * img * sizeof(float));

    rb_tensor *tf = rb_clip_model_text_features(&c, &m, &ids, NULL);
    rb_tensor *tfm = rb_clip_model_text_features(&c, &m, &ids, &mask);
    rb_tensor *imf = rb_clip_model_image_features(&c, &m, px);
    rb_tensor *tn = rb_l2_normalize(&c, tf, 0), *in = rb_l2_normalize(&c, imf, 0);
    rb_tensor gen_f, ref_f;
    REQUIRE(imf && rb_view_slice(&gen_f, imf, 0, 0, 3) == RB_OK && rb_view_slice(&ref_f, imf, 0, 3, 5) == RB_OK,
            "%s", rb_last_error());
    rb_tensor *logits = rb_clip_model_logits_per_image(&c, &m, &gen_f, tf);
    REQUIRE(c.status == RB_OK && logits, "forward: %s", rb_last_error());
    compare("text_features", tf->data, rb_st_get(&io, "text_features"), 7.4e-6f);
    compare("text_features_with_attention_mask", tfm->data, rb_st_get(&io, "text_features_with_attention_mask"), 7.4e-6f);
    compare("text_features_normalized", tn->data, rb_st_get(&io, "text_features_normalized"), 3.0e-6f);
    compare("image_features", imf->data, rb_st_get(&io, "image_features"), 4.3e-6f);
    compare("image_features_normalized", in->data, rb_st_get(&io, "image_features_normalized"), 1.5e-6f);
    compare("logits_per_image", logits->data, rb_st_get(&io, "logits_per_image"), 2.7e-4f);

    /* cosines from the normalised features, and the score conventions of the same pairs */
    const float *T = tn->data, *I = in->data;
    float cit[12], cir[6], x100[12], w25[12];
    for (int i = 0; i < 3; i++) {
        for (int t = 0; t < 4; t++) {
            double cs = rb_metrics_cosine(I + i * 8, T + t * 8, 8);
            cit[i * 4 + t] = (float)cs;
            x100[i * 4 + t] = (float)rb_score_apply(RB_SCORE_X100, cs);
            w25[i * 4 + t] = (float)rb_score_apply(RB_SCORE_W25, cs);
        }
        for (int r = 0; r < 2; r++)
            cir[i * 2 + r] = (float)rb_metrics_cosine(I + i * 8, I + (3 + r) * 8, 8);
    }
    compare("cos_image_text", cit, rb_st_get(&io, "cos_image_text"), 2.8e-6f);
    compare("rep.cos_image_text", cit, rb_st_get(&io, "rep.cos_image_text"), 2.1e-6f);
    compare("cos_image_ref", cir, rb_st_get(&io, "cos_image_ref"), 1.2e-6f);
    compare("rep.cos_image_ref", cir, rb_st_get(&io, "rep.cos_image_ref"), 1.2e-6f);
    compare("clip_score_x100", x100, rb_st_get(&io, "clip_score_x100"), 2.9e-4f);
    compare("clipscore_w2.5", w25, rb_st_get(&io, "clipscore_w2.5"), 7.1e-6f);

    /* a mask that hides the pooled EOS token (or left padding) is refused, not silently ignored */
    int64_t bad_mask[4 * 14];
    for (int i = 0; i < 4 * 14; i++)
        bad_mask[i] = rb_tensor_get(&mask, i) != 0;
    bad_mask[11] = 0; /* row 0: EOS at 11 */
    rb_tensor bm = rb_tensor_wrap(bad_mask, RB_I64, 2, (int64_t[]){4, 14});
    CHECK(!rb_clip_model_text_features(&c, &m, &ids, &bm) && c.status == RB_ERR_UNSUPPORTED, "EOS masked: %d",
          c.status);
    rb_ctx_clear(&c);
    bad_mask[11] = 1, bad_mask[0] = 0;
    CHECK(!rb_clip_model_text_features(&c, &m, &ids, &bm) && c.status == RB_ERR_UNSUPPORTED, "left pad: %d", c.status);
    rb_arena_free(&arena);
    rb_clip_model_free(&m);
    rb_st_close(&io);
    rb_st_close(&vio);
}

static rb_status load_png(rb_image *img, const char *rel) {
    const char *p = t_golden_path(rel);
    return p ? rb_image_load(img, p, 0) : RB_ERR_IO;
}

/* End to end: texts through the tokenizer, PNGs through the processor (references resized to 512
 * as the reproduction does), scores as rb_metrics_score gives them. */
static void t_scores_end_to_end(void) {
    rb_safetensors io;
    if (!open_io(&io, "clip_metrics/io.safetensors"))
        return;
    char clip_dir[4096], tok_dir[4096];
    snprintf(clip_dir, sizeof clip_dir, "%s", t_golden_path("clip_metrics"));
    snprintf(tok_dir, sizeof tok_dir, "%s", t_golden_path("clip_tokenizer/tokenizer"));
    rb_metrics_config cfg;
    rb_metrics_config_init(&cfg);
    cfg.clip_dir = clip_dir;
    cfg.tokenizer_dir = tok_dir;
    rb_metrics m;
    rb_status s = rb_metrics_open(&m, &cfg);
    if (s != RB_OK)
        rb_st_close(&io);
    REQUIRE(s == RB_OK, "open: %s", rb_last_error());
    CHECK(rb_metrics_clip_dim(&m) == 8 && rb_metrics_dino_dim(&m) == 0, "dims %d %d", rb_metrics_clip_dim(&m),
          rb_metrics_dino_dim(&m));
    static const char *const texts[4] = {"A cat is hugging a dog on the beach.", "hugging",
                                         "A plushie bear is shaking hands with a toy robot.", "shaking hands"};
    int64_t ids[4 * 77], mask[4 * 77];
    int L = 0;
    s = rb_metrics_tokenize(&m, texts, 4, ids, mask, 77, &L);
    CHECK(s == RB_OK && L == 14, "tokenize: %d, L %d", s, L);
    const rb_tensor *want_ids = rb_st_get(&io, "text_input_ids"), *want_mask = rb_st_get(&io, "text_attention_mask");
    int bad = 0;
    for (int i = 0; i < 4 && L == 14; i++)
        for (int j = 0; j < 14; j++)
            bad += ids[i * 77 + j] != (int64_t)rb_tensor_get(want_ids, i * 14 + j) ||
                   mask[i * 77 + j] != (int64_t)rb_tensor_get(want_mask, i * 14 + j);
    CHECK(bad == 0, "%d token ids / mask entries differ from CLIPProcessor(padding=True)", bad);

    static const char *const gens[3] = {"clip_vision/images/img0_300x200_rgb.png",
                                        "clip_vision/images/img1_180x240_rgba.png",
                                        "clip_vision/images/img2_224x224_rgb.png"};
    static const char *const refs[2] = {"clip_metrics/images/ref0_256x192_rgb.png",
                                        "clip_metrics/images/ref1_160x200_rgb.png"};
    float ref_clip[2 * 8];
    for (int r = 0; r < 2; r++) {
        rb_image img;
        s = load_png(&img, refs[r]);
        REQUIRE(s == RB_OK, "%s: %s", refs[r], rb_last_error());
        s = rb_metrics_image_features(&m, &img, 1, ref_clip + r * 8, NULL);
        rb_image_free(&img);
        REQUIRE(s == RB_OK, "ref features: %s", rb_last_error());
    }
    float tf[4 * 8];
    s = rb_metrics_text_features(&m, texts, 4, tf);
    REQUIRE(s == RB_OK, "text features: %s", rb_last_error());
    compare("text_features_normalized (e2e)", tf, rb_st_get(&io, "text_features_normalized"), 3.0e-6f);
    float cit[12], cir[6], batched[12];
    for (int i = 0; i < 3; i++) {
        rb_image img;
        s = load_png(&img, gens[i]);
        REQUIRE(s == RB_OK, "%s: %s", gens[i], rb_last_error());
        float f[8];
        rb_metrics_scores sc[2];
        s = rb_metrics_image_features(&m, &img, 0, f, NULL);
        /* prompt 0 with its predicate, prompt 1 with its predicate, each pair scored as a call */
        for (int p = 0; p < 2 && s == RB_OK; p++)
            s = rb_metrics_score(&m, &img, texts[2 * p], texts[2 * p + 1], ref_clip, NULL, 2, &sc[p]);
        rb_image_free(&img);
        REQUIRE(s == RB_OK, "score: %s", rb_last_error());
        for (int p = 0; p < 2; p++) {
            cit[i * 4 + 2 * p] = (float)sc[p].clip_t;
            cit[i * 4 + 2 * p + 1] = (float)sc[p].clip_r;
            CHECK(isnan(sc[p].dino_mean) && sc[p].n_refs == 2, "no DINO: dino %g, refs %d", sc[p].dino_mean,
                  sc[p].n_refs);
            CHECK(fabs(sc[p].clip_i_mean - 0.5 * (sc[p].clip_i[0] + sc[p].clip_i[1])) < 1e-12, "CLIP-I mean");
        }
        for (int t = 0; t < 4; t++)
            batched[i * 4 + t] = (float)rb_metrics_cosine(f, tf + t * 8, 8);
        cir[i * 2] = (float)sc[0].clip_i[0];
        cir[i * 2 + 1] = (float)sc[0].clip_i[1];
    }
    compare("rep.cos_image_text (CLIP-T/-R e2e)", cit, rb_st_get(&io, "rep.cos_image_text"), 2.1e-6f);
    compare("cos_image_text (batched e2e)", batched, rb_st_get(&io, "cos_image_text"), 2.8e-6f);
    compare("rep.cos_image_ref (CLIP-I e2e)", cir, rb_st_get(&io, "rep.cos_image_ref"), 1.2e-6f);
    rb_metrics_close(&m);
    rb_st_close(&io);
}

/* DINO score: CLS cosine (v1 ViT and DINOv2) against golden/dino, and the mean-token variant against
 * a double-precision mean of the golden last_hidden_state */
static void t_dino(void) {
    rb_safetensors io;
    if (!open_io(&io, "dino/io.safetensors"))
        return;
    char clip_dir[4096], tok_dir[4096], dino_dir[4096];
    snprintf(clip_dir, sizeof clip_dir, "%s", t_golden_path("clip_metrics"));
    snprintf(tok_dir, sizeof tok_dir, "%s", t_golden_path("clip_tokenizer/tokenizer"));
    static const char *const imgs[2] = {"clip_vision/images/img0_300x200_rgb.png",
                                        "clip_vision/images/img1_180x240_rgba.png"};
    static const char *const kinds[3] = {"vit", "dinov2", "vit"};
    for (int k = 0; k < 3; k++) {
        snprintf(dino_dir, sizeof dino_dir, "%s", t_golden_path(k == 1 ? "dino/dinov2" : "dino/vit"));
        rb_metrics_config cfg;
        rb_metrics_config_init(&cfg);
        cfg.clip_dir = clip_dir, cfg.tokenizer_dir = tok_dir, cfg.dino_dir = dino_dir;
        cfg.dino_pool = k == 2 ? RB_DINO_POOL_MEAN : RB_DINO_POOL_CLS;
        rb_metrics m;
        rb_status s = rb_metrics_open(&m, &cfg);
        REQUIRE(s == RB_OK, "open %s: %s", dino_dir, rb_last_error());
        REQUIRE(rb_metrics_dino_dim(&m) == 32, "dino dim %d", rb_metrics_dino_dim(&m));
        float f[2][32], clip[8];
        for (int i = 0; i < 2 && s == RB_OK; i++) {
            rb_image img;
            s = load_png(&img, imgs[i]);
            if (s == RB_OK)
                s = rb_metrics_image_features(&m, &img, 0, clip, f[i]);
            rb_image_free(&img);
        }
        rb_metrics_close(&m);
        REQUIRE(s == RB_OK, "features: %s", rb_last_error());
        double cs = rb_metrics_cosine(f[0], f[1], 32);
        char name[64];
        if (k < 2) {
            snprintf(name, sizeof name, "%s.cosine_similarity_0_1", kinds[k]);
            float got = (float)cs;
            /* 10x fp32-vs-fp64 (1.37e-8 resp. 9.15e-8) */
            compare(name, &got, rb_st_get(&io, name), k == 0 ? 1.4e-7f : 9.2e-7f);
            /* and the embedding itself: normalised golden CLS rows */
            snprintf(name, sizeof name, "%s", k == 0 ? "vit.cls" : "dinov2.pooler_output");
            const float *w = rb_st_get(&io, name)->data;
            float want[64];
            for (int i = 0; i < 2; i++) {
                double n = 0;
                for (int d = 0; d < 32; d++)
                    n += (double)w[i * 32 + d] * w[i * 32 + d];
                for (int d = 0; d < 32; d++)
                    want[i * 32 + d] = (float)(w[i * 32 + d] / sqrt(n));
            }
            double md;
            int ok = t_allclose(&f[0][0], want, 64, 3e-6f, 0, &md);
            CHECK(ok, "%s normalised: max |diff| %g", name, md);
        } else {
            /* mean over the 197 tokens of vit.last_hidden_state, in double */
            const rb_tensor *lh = rb_st_get(&io, "vit.last_hidden_state");
            double mean[2][32] = {{0}};
            for (int i = 0; i < 2; i++)
                for (int t = 0; t < 197; t++)
                    for (int d = 0; d < 32; d++)
                        mean[i][d] += rb_tensor_get(lh, ((int64_t)i * 197 + t) * 32 + d) / 197.0;
            double ab = 0, aa = 0, bb = 0;
            for (int d = 0; d < 32; d++)
                ab += mean[0][d] * mean[1][d], aa += mean[0][d] * mean[0][d], bb += mean[1][d] * mean[1][d];
            double want = ab / sqrt(aa * bb);
            CHECK(fabs(cs - want) < 1e-5, "mean-pooled DINO cosine %.8f vs %.8f", cs, want);
            fprintf(stderr, "  %-36s %.7f vs %.7f\n", "vit mean-token cosine", cs, want);
            /* and it is a different number from the CLS score (the conventions must not be mixed) */
            CHECK(fabs(cs - (double)*(const float *)rb_st_get(&io, "vit.cosine_similarity_0_1")->data) > 1e-3,
                  "mean == CLS");
        }
    }
    rb_st_close(&io);
}

static void t_scales(void) {
    CHECK(rb_score_apply(RB_SCORE_COSINE, -0.25) == -0.25, "cosine");
    CHECK(fabs(rb_score_apply(RB_SCORE_X100, 0.306) - 30.6) < 1e-12, "x100");
    CHECK(rb_score_apply(RB_SCORE_X100, -0.1) == 0.0, "x100 clamps");
    CHECK(fabs(rb_score_apply(RB_SCORE_W25, 0.4) - 1.0) < 1e-12 && rb_score_apply(RB_SCORE_W25, -0.4) == 0.0, "w2.5");
    CHECK(isnan(rb_score_apply(RB_SCORE_X100, NAN)), "NAN stays NAN");
    rb_score_scale sc = RB_SCORE_COSINE;
    CHECK(rb_score_scale_parse("x100", &sc) == RB_OK && sc == RB_SCORE_X100, "parse x100");
    CHECK(rb_score_scale_parse("clipscore-w2.5", &sc) == RB_OK && sc == RB_SCORE_W25, "parse w2.5");
    CHECK(rb_score_scale_parse("cosine", &sc) == RB_OK && sc == RB_SCORE_COSINE, "parse cosine");
    CHECK(rb_score_scale_parse("percent", &sc) == RB_ERR_INVALID, "bad name");
    for (int i = 0; i < 3; i++) {
        rb_score_scale s2;
        CHECK(rb_score_scale_parse(rb_score_scale_name((rb_score_scale)i), &s2) == RB_OK && s2 == (rb_score_scale)i,
              "round trip %d", i);
    }
    float a[3] = {1, 2, 2}, b[3] = {2, 0, 0};
    CHECK(fabs(rb_metrics_cosine(a, b, 3) - 1.0 / 3.0) < 1e-12, "cosine %g", rb_metrics_cosine(a, b, 3));
}

int main(void) {
    RUN(t_scales);
    RUN(t_clip_model_golden);
    RUN(t_scores_end_to_end);
    RUN(t_dino);
    return t_done();
}
