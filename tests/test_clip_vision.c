/* CLIP vision tower against golden/clip_vision (transformers CLIPVisionModelWithProjection) and
 * golden/local_tokens (a real open_clip checkpoint): every output in float32, within 10x the
 * reference's own fp32-vs-fp64 difference of each tensor (case.md tables). */
#include "harness.h"
#include "models/clip_vision.h"

#include <unistd.h>

#include "golden_models.h"

/* the transformers golden outputs of `m` on `pixels` (NULL: io's pixel_values) */
static void check_hf_outputs(const rb_clip_vision *m, const rb_safetensors *io, rb_tensor *pixels) {
    rb_arena arena;
    rb_arena_init(&arena, 64 << 20, "clip vision test");
    rb_ctx c;
    rb_ctx_init(&c, &arena);
    rb_tensor px = pixels ? *pixels : *rb_st_get(io, "pixel_values");
    rb_clip_vision_out out;
    rb_status s = rb_clip_vision_forward(&c, m, &px, 1, &out);
    CHECK(s == RB_OK, "forward: %s", rb_last_error());
    if (s == RB_OK) {
        /* atol = 10 x fp32-vs-fp64 of case.md */
        t_compare("last_hidden_state", out.last_hidden, rb_st_get(io, "last_hidden_state"), 5.6e-5f);
        t_compare("penultimate_hidden_state", out.penultimate, rb_st_get(io, "penultimate_hidden_state"), 4.8e-5f);
        t_compare("hidden_states.0", out.hidden[0], rb_st_get(io, "hidden_states.0"), 3.3e-5f);
        t_compare("hidden_states.3 (= last)", out.hidden[3], rb_st_get(io, "last_hidden_state"), 5.6e-5f);
        t_compare("hidden_states.2 (= penult.)", out.hidden[2], rb_st_get(io, "penultimate_hidden_state"), 4.8e-5f);
        t_compare("pooler_output", out.pooled, rb_st_get(io, "pooler_output"), 1.5e-5f);
        t_compare("image_embeds", out.image_embeds, rb_st_get(io, "image_embeds"), 1.6e-5f);
    }
    rb_arena_free(&arena);
}

static void t_clip_vision_hf(void) {
    const char *g = t_golden_path("clip_vision");
    if (!g)
        return;
    char dir[4096], io_path[4200];
    snprintf(dir, sizeof dir, "%s", g);
    snprintf(io_path, sizeof io_path, "%s/io.safetensors", dir);
    static rb_clip_vision m;
    REQUIRE(rb_clip_vision_load(&m, dir) == RB_OK, "load: %s", rb_last_error());
    CHECK(rb_weights_unused(&m.w, 5) == 0, "every weight is used");
    CHECK(m.cfg.act == RB_ACT_GELU && m.cfg.heads == 4 && m.cfg.projection_dim == 16, "config");
    rb_safetensors io;
    if (rb_st_open(&io, io_path) == RB_OK) {
        check_hf_outputs(&m, &io, NULL);
        rb_st_close(&io);
    } else {
        CHECK(0, "%s", rb_last_error());
    }
    rb_clip_vision_free(&m);
}

/* The golden HF weights rewritten in the open_clip layout (packed in_proj, transposed proj,
 * `visual.` prefix, plus a text-tower key that must be ignored) must give the same outputs. */
static void t_clip_vision_open_clip_layout(void) {
    const char *g = t_golden_path("clip_vision");
    if (!g)
        return;
    char dir[4096], path[4200], st_path[4200], cfg_path[4200];
    snprintf(dir, sizeof dir, "%s", g);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    rb_safetensors hf;
    REQUIRE(rb_st_open(&hf, path) == RB_OK, "%s", rb_last_error());
    enum { NL = 3, D = 32 };
    const char *names[64];
    const rb_tensor *ts[64];
    char name_buf[64][160];
    rb_tensor own[64];
    float *packed[2 * NL] = {0};
    int n = 0;
#define PUT(oc_name, t)                                                   \
    do {                                                                  \
        snprintf(name_buf[n], sizeof name_buf[n], "%s", oc_name);         \
        names[n] = name_buf[n];                                           \
        ts[n] = (t);                                                      \
        n++;                                                              \
    } while (0)
    static const char *const globals[][2] = {
        {"visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"},
        {"visual.class_embedding", "vision_model.embeddings.class_embedding"},
        {"visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"},
        {"visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"},
        {"visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"},
        {"visual.ln_post.weight", "vision_model.post_layernorm.weight"},
        {"visual.ln_post.bias", "vision_model.post_layernorm.bias"},
        {"logit_scale", "vision_model.pre_layrnorm.bias"}, /* a non-visual key: must stay unused */
    };
    for (size_t i = 0; i < sizeof globals / sizeof *globals; i++)
        PUT(globals[i][0], rb_st_get(&hf, globals[i][1]));
    /* proj: [E, D] linear weight -> open_clip's [D, E] (written contiguous) */
    REQUIRE(rb_view_permute(&own[n], rb_st_get(&hf, "visual_projection.weight"), (int[]){1, 0}) == RB_OK, "permute");
    PUT("visual.proj", &own[n]);
    static const char *const per_layer[][2] = {
        {"ln_1.weight", "layer_norm1.weight"},         {"ln_1.bias", "layer_norm1.bias"},
        {"attn.out_proj.weight", "self_attn.out_proj.weight"}, {"attn.out_proj.bias", "self_attn.out_proj.bias"},
        {"ln_2.weight", "layer_norm2.weight"},         {"ln_2.bias", "layer_norm2.bias"},
        {"mlp.c_fc.weight", "mlp.fc1.weight"},         {"mlp.c_fc.bias", "mlp.fc1.bias"},
        {"mlp.c_proj.weight", "mlp.fc2.weight"},       {"mlp.c_proj.bias", "mlp.fc2.bias"},
    };
    for (int l = 0; l < NL; l++) {
        char a[128], b[128];
        for (size_t k = 0; k < sizeof per_layer / sizeof *per_layer; k++) {
            snprintf(a, sizeof a, "visual.transformer.resblocks.%d.%s", l, per_layer[k][0]);
            snprintf(b, sizeof b, "vision_model.encoder.layers.%d.%s", l, per_layer[k][1]);
            PUT(a, rb_st_get(&hf, b));
        }
        /* in_proj_weight [3D, D] = rows of q | k | v, in_proj_bias [3D] likewise */
        for (int wb = 0; wb < 2; wb++) {
            float *buf = packed[2 * l + wb] = malloc(sizeof(float) * 3 * D * (wb ? 1 : D));
            for (int p = 0; p < 3; p++) {
                snprintf(b, sizeof b, "vision_model.encoder.layers.%d.self_attn.%c_proj.%s", l, "qkv"[p],
                         wb ? "bias" : "weight");
                const rb_tensor *src = rb_st_get(&hf, b);
                memcpy(buf + p * D * (wb ? 1 : D), src->data, sizeof(float) * (size_t)rb_numel(src));
            }
            own[n] = rb_tensor_wrap(buf, RB_F32, wb ? 1 : 2, (int64_t[]){3 * D, D});
            snprintf(a, sizeof a, "visual.transformer.resblocks.%d.attn.in_proj_%s", l, wb ? "bias" : "weight");
            PUT(a, &own[n]);
        }
    }
#undef PUT
    snprintf(st_path, sizeof st_path, "%s/open_clip_layout.safetensors", t_tmpdir());
    snprintf(cfg_path, sizeof cfg_path, "%s/open_clip_layout.json", t_tmpdir());
    rb_status s = rb_st_write(st_path, n, names, ts, 0, NULL, NULL);
    for (int i = 0; i < 2 * NL; i++)
        free(packed[i]);
    rb_st_close(&hf);
    REQUIRE(s == RB_OK, "write: %s", rb_last_error());
    FILE *f = fopen(cfg_path, "w");
    REQUIRE(f, "%s", cfg_path);
    fputs("{\"embed_dim\": 16, \"vision_cfg\": {\"image_size\": 224, \"layers\": 3, \"width\": 32, "
          "\"head_width\": 8, \"mlp_ratio\": 4.0, \"patch_size\": 14}, \"text_cfg\": {\"width\": 32}}\n",
          f);
    fclose(f);
    static rb_clip_vision m;
    REQUIRE(rb_clip_vision_load_open_clip(&m, cfg_path, st_path) == RB_OK, "load: %s", rb_last_error());
    CHECK(rb_weights_unused(&m.w, 5) == 1, "only logit_scale unused");
    CHECK(m.cfg.heads == 4 && m.cfg.intermediate == 128 && m.cfg.act == RB_ACT_GELU, "config from open_clip json");
    snprintf(path, sizeof path, "%s/io.safetensors", dir);
    rb_safetensors io;
    if (rb_st_open(&io, path) == RB_OK) {
        check_hf_outputs(&m, &io, NULL);
        rb_st_close(&io);
    } else {
        CHECK(0, "%s", rb_last_error());
    }
    rb_clip_vision_free(&m);
    unlink(st_path);
    unlink(cfg_path);
}

/* The real open_clip checkpoint of golden/local_tokens: every `visual.*` key used, and the dense
 * path of DreamRelation's local-token encoder (position grid 4x4 -> 16x16, blocks 0..L-2, the last
 * block without attention, ln_post on the patch tokens) assembled from the building blocks
 * reproduces dense_ln_post_output. Also HF CLIP hidden_states[-2] on that input = global_tokens. */
/* the dense path on one of the three files holding the same open_clip model */
static void dense_path(const char *cfg, const char *ckpt, const char *prefix, const rb_safetensors *io) {
    static rb_clip_vision m;
    REQUIRE(rb_clip_vision_load_open_clip(&m, cfg, ckpt) == RB_OK, "load %s: %s", ckpt, rb_last_error());
    int visual_unused = 0;
    size_t np = strlen(prefix);
    for (int i = 0; i < m.w.n; i++)
        visual_unused += !m.w.used[i] && !strncmp(m.w.names[i], prefix, np);
    CHECK(visual_unused == 0, "%s: %d %s* keys unused", ckpt, visual_unused, prefix);
    CHECK(m.cfg.image_size == 56 && m.cfg.heads == 4 && m.cfg.intermediate == 128 && m.cfg.projection_dim == 16,
          "config");
    rb_arena arena;
    rb_arena_init(&arena, 64 << 20, "open_clip test");
    rb_ctx c;
    rb_ctx_init(&c, &arena);
    /* position grid: [1 + 16, D] -> class entry + bicubic 4x4 -> 16x16 */
    int64_t D = m.cfg.hidden, n = 4, G = 16;
    rb_tensor grid, cls_pe;
    rb_view_slice(&grid, m.pos_emb, 0, 1, 1 + n * n);
    rb_view_slice(&cls_pe, m.pos_emb, 0, 0, 1);
    rb_tensor *planes = rb_permute(&c, rb_reshape(&c, &grid, 4, (int64_t[]){1, n, n, D}), (int[]){0, 3, 1, 2});
    rb_tensor *up = rb_permute(&c, rb_interpolate_bicubic(&c, planes, G, G), (int[]){0, 2, 3, 1});
    rb_tensor *pos = rb_concat(&c, (rb_tensor *[]){&cls_pe, rb_reshape(&c, up, 2, (int64_t[]){G * G, D})}, 2, 0);
    t_compare("interpolated_positional_emb.", pos, rb_st_get(io, "interpolated_positional_embedding"), 7.3e-7f);
    rb_tensor px = *rb_st_get(io, "pixel_values");
    rb_tensor *x = rb_clip_vision_embed(&c, &m, &px, pos);
    x = rb_layer_norm(&c, x, m.pre_ln_w, m.pre_ln_b, m.cfg.layer_norm_eps);
    for (int i = 0; i < m.cfg.layers - 1; i++)
        x = rb_clip_vision_layer(&c, &m, i, x);
    /* forward_without_attn: x + out_proj(V), V = value third of in_proj(ln_1(x)); then the MLP */
    const rb_clip_layer *L = &m.layers[m.cfg.layers - 1];
    float eps = m.cfg.layer_norm_eps;
    rb_tensor *v = rb_linear(&c, rb_layer_norm(&c, x, L->ln1_w, L->ln1_b, eps), L->v_w, L->v_b);
    x = rb_add(&c, x, rb_linear(&c, v, L->o_w, L->o_b));
    rb_tensor *h = rb_gelu(&c, rb_linear(&c, rb_layer_norm(&c, x, L->ln2_w, L->ln2_b, eps), L->fc1_w, L->fc1_b), 0);
    x = rb_add(&c, x, rb_linear(&c, h, L->fc2_w, L->fc2_b));
    x = rb_layer_norm(&c, rb_slice(&c, x, 1, 1, 1 + G * G), m.post_ln_w, m.post_ln_b, eps);
    CHECK(x, "dense path: %s", rb_last_error());
    if (x)
        t_compare("dense_ln_post_output", x, rb_st_get(io, "dense_ln_post_output"), 3.6e-5f);
    rb_arena_free(&arena);
    rb_clip_vision_free(&m);
}

/* The real open_clip checkpoint of golden/local_tokens, as safetensors, as torch.save(state_dict) and
 * as the DDP training checkpoint: every vision key used, and the dense path of DreamRelation's
 * local-token encoder (position grid 4x4 -> 16x16, blocks 0..L-2, the last block without attention,
 * ln_post on the patch tokens) assembled from the building blocks reproduces dense_ln_post_output.
 * Also HF CLIP hidden_states[-2] on that input = global_tokens. */
static void t_open_clip_checkpoint(void) {
    const char *g = t_golden_path("local_tokens");
    if (!g)
        return;
    char dir[4096], cfg[4200], ckpt[4200], io_path[4200];
    snprintf(dir, sizeof dir, "%s", g);
    snprintf(cfg, sizeof cfg, "%s/open_clip_config.json", dir);
    snprintf(io_path, sizeof io_path, "%s/io.safetensors", dir);
    rb_safetensors io;
    REQUIRE(rb_st_open(&io, io_path) == RB_OK, "%s", rb_last_error());
    static const char *const files[][2] = {{"open_clip.safetensors", "visual."},
                                           {"open_clip_state_dict.pt", "visual."},
                                           {"open_clip_epoch_6_module.pt", "state_dict.module.visual."}};
    for (int i = 0; i < 3; i++) {
        snprintf(ckpt, sizeof ckpt, "%s/%s", dir, files[i][0]);
        dense_path(cfg, ckpt, files[i][1], &io);
    }

    /* global tokens: the HF model (image_encoder -> ../clip_vision) on the same pixels */
    static rb_clip_vision m;
    snprintf(cfg, sizeof cfg, "%s/image_encoder", dir);
    t_resolve(cfg, dir, sizeof dir);
    if (rb_clip_vision_load(&m, dir) == RB_OK) {
        rb_arena arena;
        rb_arena_init(&arena, 64 << 20, "open_clip test");
        rb_ctx c;
        rb_ctx_init(&c, &arena);
        rb_tensor px = *rb_st_get(&io, "pixel_values");
        rb_clip_vision_out out;
        CHECK(rb_clip_vision_forward(&c, &m, &px, 0, &out) == RB_OK, "forward: %s", rb_last_error());
        t_compare("global_tokens", out.penultimate, rb_st_get(&io, "global_tokens"), 3.9e-5f);
        rb_arena_free(&arena);
        rb_clip_vision_free(&m);
    } else {
        CHECK(0, "load %s: %s", dir, rb_last_error());
    }
    rb_st_close(&io);
}

/* End to end from the PNGs (RGB, RGBA, exact size) through the CLIPImageProcessor settings of
 * preprocessor_config.json: same outputs, same tolerances. */
static void t_clip_vision_from_pngs(void) {
    const char *g = t_golden_path("clip_vision");
    if (!g)
        return;
    char dir[4096], path[4200], img_dir[4200];
    snprintf(dir, sizeof dir, "%s", g);
    snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
    snprintf(img_dir, sizeof img_dir, "%s/images", dir);
    static const char *const names[] = {"img0_300x200_rgb.png", "img1_180x240_rgba.png", "img2_224x224_rgb.png"};
    int64_t shape[4];
    float *px = t_pixels_from_pngs(path, img_dir, names, 3, shape);
    if (!px)
        return;
    rb_tensor t = rb_tensor_wrap(px, RB_F32, 4, shape);
    static rb_clip_vision m;
    snprintf(path, sizeof path, "%s/io.safetensors", dir);
    rb_safetensors io;
    if (rb_clip_vision_load(&m, dir) == RB_OK && rb_st_open(&io, path) == RB_OK) {
        /* the processor's own golden bound (case.md: float32 re-normalisation within 4.8e-07) */
        t_compare("pixel_values", &t, rb_st_get(&io, "pixel_values"), 1e-6f);
        check_hf_outputs(&m, &io, &t);
        rb_st_close(&io);
        rb_clip_vision_free(&m);
    } else {
        CHECK(0, "%s", rb_last_error());
    }
    free(px);
}

static void t_clip_vision_errors(void) {
    static rb_clip_vision m;
    CHECK(rb_clip_vision_load(&m, "/nonexistent") != RB_OK && strstr(rb_last_error(), "/nonexistent/config.json"),
          "missing folder named: %s", rb_last_error());
    char cfg_path[512];
    snprintf(cfg_path, sizeof cfg_path, "%s/ls.json", t_tmpdir());
    FILE *f = fopen(cfg_path, "w");
    REQUIRE(f, "%s", cfg_path);
    fputs("{\"embed_dim\": 16, \"vision_cfg\": {\"image_size\": 224, \"layers\": 3, \"width\": 32, "
          "\"patch_size\": 14, \"head_width\": 8, \"ls_init_value\": 0.1}}\n",
          f);
    fclose(f);
    CHECK(rb_clip_vision_load_open_clip(&m, cfg_path, "/nonexistent.safetensors") == RB_ERR_UNSUPPORTED &&
              strstr(rb_last_error(), "ls_init_value"),
          "LayerScale open_clip towers are refused: %s", rb_last_error());
    unlink(cfg_path);
    /* wrong input size */
    const char *g = t_golden_path("clip_vision");
    if (!g)
        return;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", g);
    REQUIRE(rb_clip_vision_load(&m, dir) == RB_OK, "load: %s", rb_last_error());
    static float px[2 * 3 * 112 * 112];
    rb_tensor t = rb_tensor_wrap(px, RB_F32, 4, (int64_t[]){2, 3, 112, 112});
    rb_arena arena;
    rb_arena_init(&arena, 16 << 20, "clip vision test");
    rb_ctx c;
    rb_ctx_init(&c, &arena);
    rb_clip_vision_out out;
    CHECK(rb_clip_vision_forward(&c, &m, &t, 0, &out) == RB_ERR_INVALID && strstr(rb_last_error(), "224"),
          "wrong size refused: %s", rb_last_error());
    rb_arena_free(&arena);
    rb_clip_vision_free(&m);
}

int main(void) {
    RUN(t_clip_vision_hf);
    RUN(t_clip_vision_open_clip_layout);
    RUN(t_open_clip_checkpoint);
    RUN(t_clip_vision_from_pngs);
    RUN(t_clip_vision_errors);
    return t_done();
}
