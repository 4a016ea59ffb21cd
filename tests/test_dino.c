/* DINO backbones against golden/dino (transformers 4.36 ViTModel and Dinov2Model): embeddings,
 * resampled position grid, last hidden state, CLS embedding and the pair's cosine similarity, in
 * float32 within 10x the reference's fp32-vs-fp64 difference of each tensor (case.md table). */
#include "harness.h"
#include "models/dino.h"

#include <unistd.h>

#include "golden_models.h"

/* cosine of two rows in double (the metric's score, computed independently of the library) */
static float cosine(const float *a, const float *b, int64_t n) {
    double ab = 0, aa = 0, bb = 0;
    for (int64_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return (float)(ab / sqrt(aa * bb));
}

typedef struct {
    const char *name; /* "vit" or "dinov2" */
    rb_dino_kind kind;
    float tol_emb, tol_last, tol_cls, tol_pos, tol_cos;
} dino_case;

/* from_pngs: pixel_values from the images of case clip_vision through the case's
 * preprocessor_config.json (ViTImageProcessor / BitImageProcessor) instead of the golden tensor */
static void run_case(const dino_case *k, int from_pngs) {
    char rel[64];
    snprintf(rel, sizeof rel, "dino/%s", k->name);
    const char *g = t_golden_path(rel);
    if (!g)
        return;
    char dir[4096], io_path[4200];
    snprintf(dir, sizeof dir, "%s", g);
    snprintf(io_path, sizeof io_path, "%s/../io.safetensors", dir);
    static rb_dino m;
    REQUIRE(rb_dino_load(&m, dir) == RB_OK, "load: %s", rb_last_error());
    CHECK(m.cfg.kind == k->kind, "model_type");
    CHECK(rb_weights_unused(&m.w, 5) == 0, "every weight is used");
    rb_safetensors io;
    REQUIRE(rb_st_open(&io, io_path) == RB_OK, "%s", rb_last_error());
    rb_arena arena;
    rb_arena_init(&arena, 64 << 20, "dino test");
    rb_ctx c;
    rb_ctx_init(&c, &arena);
    char key[128];
#define IO(suffix) (snprintf(key, sizeof key, "%s.%s", k->name, suffix), rb_st_get(&io, key))
    rb_tensor px = *IO("pixel_values");
    float *buf = NULL;
    if (from_pngs) {
        char cfg_path[4200], img_dir[4200];
        static const char *const names[] = {"img0_300x200_rgb.png", "img1_180x240_rgba.png"};
        int64_t shape[4];
        snprintf(cfg_path, sizeof cfg_path, "%s/preprocessor_config.json", dir);
        const char *gi = t_golden_path("clip_vision/images");
        snprintf(img_dir, sizeof img_dir, "%s", gi ? gi : "");
        buf = t_pixels_from_pngs(cfg_path, img_dir, names, 2, shape);
        if (buf) {
            rb_tensor t = rb_tensor_wrap(buf, RB_F32, 4, shape);
            t_compare("pixel_values", &t, &px, 1e-6f);
            px = t;
        }
    }
    rb_dino_out out;
    rb_status s = rb_dino_forward(&c, &m, &px, &out);
    CHECK(s == RB_OK, "forward: %s", rb_last_error());
    if (s == RB_OK) {
        if (k->kind == RB_DINO_V2)
            t_compare("dinov2.interpolated_position_embeddings", out.pos, IO("interpolated_position_embeddings"),
                      k->tol_pos);
        else
            CHECK(out.pos == m.pos_emb, "ViT at its own size keeps the checkpoint's positions");
        t_compare("embeddings", out.embeddings, IO("embeddings"), k->tol_emb);
        t_compare("last_hidden_state", out.last_hidden, IO("last_hidden_state"), k->tol_last);
        t_compare("cls", out.cls, IO(k->kind == RB_DINO_V2 ? "pooler_output" : "cls"), k->tol_cls);
        int64_t D = m.cfg.hidden;
        float cs = cosine(out.cls->data, (float *)out.cls->data + D, D);
        float want = *(const float *)IO("cosine_similarity_0_1")->data;
        CHECK(fabsf(cs - want) <= k->tol_cos, "cosine similarity %.9g vs %.9g", cs, want);
        /* the library's cosine op gives the same score */
        rb_tensor a, b;
        rb_view_slice(&a, out.cls, 0, 0, 1);
        rb_view_slice(&b, out.cls, 0, 1, 2);
        rb_tensor *lib = rb_cosine_similarity(&c, &a, &b, 1e-8f);
        CHECK(lib && fabsf(*(float *)lib->data - want) <= k->tol_cos, "rb_cosine_similarity %.9g vs %.9g",
              lib ? *(float *)lib->data : -2.0f, want);
    }
#undef IO
    free(buf);
    rb_arena_free(&arena);
    rb_st_close(&io);
    rb_dino_free(&m);
}

/* atol = 10 x fp32-vs-fp64 of case.md */
static void t_dino_vit(void) {
    run_case(&(dino_case){"vit", RB_DINO_VIT, 5.3e-5f, 2.4e-5f, 8.8e-6f, 0, 1.4e-7f}, 0);
}
static void t_dino_vit_from_pngs(void) {
    run_case(&(dino_case){"vit", RB_DINO_VIT, 5.3e-5f, 2.4e-5f, 8.8e-6f, 0, 1.4e-7f}, 1);
}
static void t_dinov2(void) {
    run_case(&(dino_case){"dinov2", RB_DINO_V2, 5.2e-5f, 4.4e-5f, 8.1e-6f, 3.4e-5f, 9.2e-7f}, 0);
}
static void t_dinov2_from_pngs(void) {
    run_case(&(dino_case){"dinov2", RB_DINO_V2, 5.2e-5f, 4.4e-5f, 8.1e-6f, 3.4e-5f, 9.2e-7f}, 1);
}

/* The position grid at the checkpoint's own square size is returned as is; other grids follow the
 * +0.1 rule: for a grid of the checkpoint's side but a non-square input it is a resampling with
 * scale (n + 0.1) / n, which is close to (not equal to) the identity. */
static void t_dinov2_positions(void) {
    const char *g = t_golden_path("dino/dinov2");
    if (!g)
        return;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", g);
    static rb_dino m;
    REQUIRE(rb_dino_load(&m, dir) == RB_OK, "load: %s", rb_last_error());
    rb_arena arena;
    rb_arena_init(&arena, 16 << 20, "dino test");
    rb_ctx c;
    rb_ctx_init(&c, &arena);
    CHECK(rb_dino_position_embeddings(&c, &m, 518, 518) == m.pos_emb, "own size: checkpoint positions");
    rb_tensor *p = rb_dino_position_embeddings(&c, &m, 518, 527); /* 37 x 37 grid, H != W */
    REQUIRE(p && p != m.pos_emb && rb_numel(p) == rb_numel(m.pos_emb), "non-square: %s", rb_last_error());
    const float *a = p->data, *b = m.pos_emb->data;
    double md = 0, mx = 0;
    for (int64_t i = 0; i < rb_numel(p); i++) {
        md = fmax(md, fabs((double)a[i] - b[i]));
        mx = fmax(mx, fabs((double)b[i]));
    }
    CHECK(md > 0 && md < 0.5 * mx, "near-identity resampling: max diff %g of max %g", md, mx);
    CHECK(!memcmp(a, b, sizeof(float) * (size_t)m.cfg.hidden), "[CLS] position kept");
    rb_dino_out out;
    static float px[1 * 3 * 10 * 10];
    rb_tensor t = rb_tensor_wrap(px, RB_F32, 4, (int64_t[]){1, 3, 10, 10});
    CHECK(rb_dino_forward(&c, &m, &t, &out) == RB_ERR_INVALID && strstr(rb_last_error(), "patch"),
          "input smaller than a patch refused: %s", rb_last_error());
    rb_arena_free(&arena);
    rb_dino_free(&m);
}

static void t_dino_errors(void) {
    static rb_dino m;
    CHECK(rb_dino_load(&m, "/nonexistent") != RB_OK && strstr(rb_last_error(), "/nonexistent/config.json"),
          "missing folder named: %s", rb_last_error());
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", t_tmpdir());
    FILE *f = fopen(path, "w");
    REQUIRE(f, "%s", path);
    fputs("{\"model_type\": \"clip_vision_model\"}\n", f);
    fclose(f);
    CHECK(rb_dino_load(&m, t_tmpdir()) == RB_ERR_UNSUPPORTED && strstr(rb_last_error(), "clip_vision_model"),
          "other model types refused: %s", rb_last_error());
    unlink(path);
}

int main(void) {
    RUN(t_dino_vit);
    RUN(t_dinov2);
    RUN(t_dino_vit_from_pngs);
    RUN(t_dinov2_from_pngs);
    RUN(t_dinov2_positions);
    RUN(t_dino_errors);
    return t_done();
}
