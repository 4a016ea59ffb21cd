/* CLIP text encoders against golden/clip_text_l and clip_text_g: every hidden state, pooled output
 * and projected embeds, in float32, from the transformers folder and from the SGM single-file
 * layout (rewritten at test time). */
#include "harness.h"
#include "models/clip_text.h"
#include "sgm_text.h"

static void compare(const char *what, const rb_tensor *got, const rb_tensor *want, float atol) {
    REQUIRE(got && want, "%s: missing", what);
    REQUIRE(rb_numel(got) == rb_numel(want), "%s: %lld vs %lld elements", what, (long long)rb_numel(got),
            (long long)rb_numel(want));
    double md;
    int ok = t_allclose(got->data, want->data, (size_t)rb_numel(want), atol, 0, &md);
    CHECK(ok, "%s: max |diff| %g > %g", what, md, atol);
}

/* Runs the model on the golden input ids and compares every output with io.safetensors. */
static void check_outputs(const rb_clip_text *m, const char *io_path, int with_projection) {
    rb_safetensors io;
    REQUIRE(rb_st_open(&io, io_path) == RB_OK, "%s", rb_last_error());
    rb_arena arena;
    rb_arena_init(&arena, 64 << 20, "clip text test");
    rb_ctx c;
    rb_ctx_init(&c, &arena);
    rb_tensor ids = *rb_st_get(&io, "input_ids");
    rb_clip_text_out out;
    rb_status s = rb_clip_text_forward(&c, m, &ids, 1, &out);
    CHECK(s == RB_OK, "forward: %s", rb_last_error());
    if (s == RB_OK) {
        /* the reference's fp32-vs-fp64 differences are ~2e-6 on O(1-6) values */
        compare("last_hidden_state", out.last_hidden, rb_st_get(&io, "last_hidden_state"), 2e-5f);
        compare("penultimate_hidden_state", out.penultimate, rb_st_get(&io, "penultimate_hidden_state"), 2e-5f);
        compare(with_projection ? "pooled_output_pre_projection" : "pooler_output", out.pooled,
                rb_st_get(&io, with_projection ? "pooled_output_pre_projection" : "pooler_output"), 2e-5f);
        for (int i = 0; i <= m->cfg.layers; i++) {
            char key[64];
            snprintf(key, sizeof key, "hidden_states.%d", i);
            compare(key, out.hidden[i], rb_st_get(&io, key), 2e-5f);
        }
        if (with_projection)
            compare("text_embeds", out.text_embeds, rb_st_get(&io, "text_embeds"), 2e-5f);
    }
    rb_arena_free(&arena);
    rb_st_close(&io);
}

static void run_case(const char *name, int with_projection) {
    char dir[8192], io_path[8400];
    const char *g = t_golden_path(name);
    if (!g)
        return;
    snprintf(dir, sizeof dir, "%s", g);
    snprintf(io_path, sizeof io_path, "%s/io.safetensors", dir);
    static rb_clip_text m;
    REQUIRE(rb_clip_text_load(&m, dir) == RB_OK, "load: %s", rb_last_error());
    CHECK(rb_weights_unused(&m.w, 5) == 0, "every weight is used");
    CHECK((m.projection != NULL) == with_projection, "projection presence");
    check_outputs(&m, io_path, with_projection);
    rb_clip_text_free(&m);
}

/* The golden transformers-layout encoder rewritten into the SGM single-file layout (sgm_text.h),
 * loaded with its golden config (override) and with the config from the shapes alone. */
static void sgm_case(const char *name, int bigg) {
    char dir[8192], path[8400];
    const char *g = t_golden_path(name);
    if (!g)
        return;
    snprintf(dir, sizeof dir, "%s", g);
    rb_safetensors src;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    REQUIRE(rb_st_open(&src, path) == RB_OK, "%s", rb_last_error());
    static sgm_list l;
    if (bigg)
        CHECK(sgm_add_clip_g(&l, &src) == 3, "rewrite to OpenCLIP names");
    else
        sgm_add_clip_l(&l, &src);
    char file[4096];
    snprintf(file, sizeof file, "%s/sgm_%s.safetensors", t_tmpdir(), name);
    rb_status s = sgm_write(&l, file);
    sgm_free(&l);
    rb_st_close(&src);
    REQUIRE(s == RB_OK, "write: %s", rb_last_error());
    rb_clip_text_layout layout = bigg ? RB_CLIP_TEXT_SGM_G : RB_CLIP_TEXT_SGM_L;

    /* config override: the golden config.json -> exactly the golden outputs */
    rb_clip_text_config want;
    snprintf(path, sizeof path, "%s/config.json", dir);
    REQUIRE(rb_clip_text_config_load(&want, path) == RB_OK, "%s", rb_last_error());
    static rb_clip_text m;
    REQUIRE(rb_clip_text_load_file(&m, file, layout, &want) == RB_OK, "load: %s", rb_last_error());
    CHECK(rb_weights_unused(&m.w, 5) == 0, "every tensor of the file is used");
    CHECK((m.projection != NULL) == bigg && m.projection_t == bigg, "projection presence and orientation");
    if (bigg) { /* q/k/v are row views into the mapped in_proj_weight, not copies */
        const rb_tensor *packed = rb_st_get(&m.w.st, "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight");
        int64_t D = want.hidden;
        CHECK(packed && m.layers[1].q_w->data == packed->data &&
                  m.layers[1].v_w->data == (float *)packed->data + 2 * D * D,
              "q/k/v weights view the packed tensor");
    }
    snprintf(path, sizeof path, "%s/io.safetensors", dir);
    check_outputs(&m, path, bigg);
    rb_clip_text_free(&m);

    /* shapes only: every size but the head count is determined; heads = hidden / 64, at least 1 */
    REQUIRE(rb_clip_text_load_file(&m, file, layout, NULL) == RB_OK, "load from shapes: %s", rb_last_error());
    const rb_clip_text_config *c = &m.cfg;
    CHECK(c->hidden == want.hidden && c->layers == want.layers && c->intermediate == want.intermediate &&
              c->vocab == want.vocab && c->max_positions == want.max_positions && c->act == want.act &&
              c->eos_token_id == want.eos_token_id && c->layer_norm_eps == want.layer_norm_eps,
          "detected sizes: hidden %d layers %d mlp %d vocab %d positions %d act %d eos %d", c->hidden, c->layers,
          c->intermediate, c->vocab, c->max_positions, (int)c->act, c->eos_token_id);
    CHECK(c->heads == 1, "heads %d (hidden %d < 64)", c->heads, c->hidden);
    CHECK(!bigg || c->projection_dim == want.projection_dim, "projection dim %d", c->projection_dim);
    rb_clip_text_free(&m);

    /* the other embedder's layout is not in this file: the error names the key looked for */
    CHECK(rb_clip_text_load_file(&m, file, bigg ? RB_CLIP_TEXT_SGM_L : RB_CLIP_TEXT_SGM_G, NULL) == RB_ERR_FORMAT &&
              strstr(rb_last_error(), bigg ? "conditioner.embedders.0.transformer." : "conditioner.embedders.1.model."),
          "wrong layout: %s", rb_last_error());
}

static void t_sgm_clip_l(void) { sgm_case("clip_text_l", 0); }
static void t_sgm_clip_g(void) { sgm_case("clip_text_g", 1); }

static void t_clip_text_l(void) { run_case("clip_text_l", 0); }
static void t_clip_text_g(void) { run_case("clip_text_g", 1); }

static void t_clip_text_errors(void) {
    static rb_clip_text m;
    CHECK(rb_clip_text_load(&m, "/nonexistent") != RB_OK && strstr(rb_last_error(), "/nonexistent/config.json"),
          "missing folder named: %s", rb_last_error());
}

int main(void) {
    RUN(t_clip_text_l);
    RUN(t_clip_text_g);
    RUN(t_sgm_clip_l);
    RUN(t_sgm_clip_g);
    RUN(t_clip_text_errors);
    return t_done();
}
