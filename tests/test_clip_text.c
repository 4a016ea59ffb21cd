/* CLIP text encoders against golden/clip_text_l and clip_text_g: every hidden state, pooled output
 * and projected embeds, in float32. */
#include "harness.h"
#include "models/clip_text.h"

static void compare(const char *what, const rb_tensor *got, const rb_tensor *want, float atol) {
    REQUIRE(got && want, "%s: missing", what);
    REQUIRE(rb_numel(got) == rb_numel(want), "%s: %lld vs %lld elements", what, (long long)rb_numel(got),
            (long long)rb_numel(want));
    double md;
    int ok = t_allclose(got->data, want->data, (size_t)rb_numel(want), atol, 0, &md);
    CHECK(ok, "%s: max |diff| %g > %g", what, md, atol);
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
    rb_safetensors io;
    REQUIRE(rb_st_open(&io, io_path) == RB_OK, "%s", rb_last_error());
    rb_arena arena;
    rb_arena_init(&arena, 64 << 20, "clip text test");
    rb_ctx c;
    rb_ctx_init(&c, &arena);
    rb_tensor ids = *rb_st_get(&io, "input_ids");
    rb_clip_text_out out;
    rb_status s = rb_clip_text_forward(&c, &m, &ids, 1, &out);
    CHECK(s == RB_OK, "forward: %s", rb_last_error());
    if (s == RB_OK) {
        /* the reference's fp32-vs-fp64 differences are ~2e-6 on O(1-6) values */
        compare("last_hidden_state", out.last_hidden, rb_st_get(&io, "last_hidden_state"), 2e-5f);
        compare("penultimate_hidden_state", out.penultimate, rb_st_get(&io, "penultimate_hidden_state"), 2e-5f);
        compare(with_projection ? "pooled_output_pre_projection" : "pooler_output", out.pooled,
                rb_st_get(&io, with_projection ? "pooled_output_pre_projection" : "pooler_output"), 2e-5f);
        for (int i = 0; i <= m.cfg.layers; i++) {
            char key[64];
            snprintf(key, sizeof key, "hidden_states.%d", i);
            compare(key, out.hidden[i], rb_st_get(&io, key), 2e-5f);
        }
        if (with_projection)
            compare("text_embeds", out.text_embeds, rb_st_get(&io, "text_embeds"), 2e-5f);
    }
    rb_arena_free(&arena);
    rb_st_close(&io);
    rb_clip_text_free(&m);
}

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
    RUN(t_clip_text_errors);
    return t_done();
}
