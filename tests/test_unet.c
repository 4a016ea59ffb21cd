/* UNet2DConditionModel against golden/unet_sdxl and golden/unet_sd15: out_sample and every
 * intermediate.* activation, for the diffusers files and the SGM/LDM single files; the key tables
 * against the reference converters' keymaps; the processor order against ms_adapter's index map;
 * pluggable processors; config and input errors. */
#include <jansson.h>

#include "harness.h"
#include "models/unet.h"

/* ---- helpers ---- */

static int load_cfg(rb_unet_config *cfg, const char *case_name) {
    char p[4200];
    const char *g = t_golden_path(case_name);
    if (!g)
        return 0;
    snprintf(p, sizeof p, "%s/config.json", g);
    rb_status s = rb_unet_config_load(cfg, p);
    CHECK(s == RB_OK, "config: %s", rb_last_error());
    return s == RB_OK;
}

typedef struct {
    char names[1024][128];
    int n;
} name_list;

static void collect_name(void *user, const rb_unet_param *p) {
    name_list *l = user;
    if (l->n < 1024)
        snprintf(l->names[l->n], sizeof l->names[0], "%s", p->name);
    l->n++;
}

/* ---- config ---- */

static void t_config(void) {
    rb_unet_config x, s;
    if (!load_cfg(&x, "unet_sdxl") || !load_cfg(&s, "unet_sd15"))
        return;
    CHECK(x.n_blocks == 3 && x.block_out[2] == 32 && x.layers_per_block == 2, "sdxl blocks");
    CHECK(x.heads[0] == 1 && x.heads[1] == 2 && x.heads[2] == 4, "sdxl heads from attention_head_dim list");
    CHECK(x.transformer_layers[0] == 1 && x.transformer_layers[2] == 2, "sdxl transformer layers");
    CHECK(!x.down_attn[0] && x.down_attn[1] && x.up_attn[0] && !x.up_attn[2], "sdxl block types");
    CHECK(x.text_time && x.addition_time_embed_dim == 8 && x.add_embed_in == 60, "sdxl text_time");
    CHECK(x.use_linear_projection && x.cross_attention_dim == 36 && x.time_embed_dim == 32, "sdxl misc");
    CHECK(s.n_blocks == 4 && s.heads[0] == 2 && s.heads[3] == 2, "sd15 int attention_head_dim = heads");
    CHECK(!s.use_linear_projection && !s.text_time && s.transformer_layers[3] == 1, "sd15 misc");
    CHECK(s.down_attn[0] && !s.down_attn[3] && !s.up_attn[0] && s.up_attn[3], "sd15 block types");
}

/* Unsupported variants fail with a message naming the key; a valid file still loads. */
static void t_config_errors(void) {
    const char *dir = t_tmpdir();
    char p[512];
    snprintf(p, sizeof p, "%s/unet_cfg.json", dir);
    static const struct {
        const char *json, *needle;
        rb_status status;
    } cases[] = {
        {"{\"block_out_channels\":[8],\"down_block_types\":[\"AttnDownBlock2D\"],\"up_block_types\":[\"UpBlock2D\"],"
         "\"cross_attention_dim\":8,\"norm_num_groups\":4}",
         "AttnDownBlock2D", RB_ERR_UNSUPPORTED},
        {"{\"block_out_channels\":[8],\"down_block_types\":[\"DownBlock2D\"],\"up_block_types\":[\"UpBlock2D\"],"
         "\"cross_attention_dim\":8,\"norm_num_groups\":4,\"resnet_time_scale_shift\":\"scale_shift\"}",
         "resnet_time_scale_shift", RB_ERR_UNSUPPORTED},
        {"{\"block_out_channels\":[8,16],\"down_block_types\":[\"DownBlock2D\"],\"up_block_types\":[\"UpBlock2D\"],"
         "\"cross_attention_dim\":8}",
         "block_types", RB_ERR_FORMAT},
        {"{\"block_out_channels\":[8],\"down_block_types\":[\"DownBlock2D\"],\"up_block_types\":[\"UpBlock2D\"],"
         "\"cross_attention_dim\":8,\"norm_num_groups\":3}",
         "groups", RB_ERR_FORMAT},
        {"[1, 2]", "not a JSON object", RB_ERR_FORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        FILE *f = fopen(p, "w");
        REQUIRE(f, "tmp file");
        fputs(cases[i].json, f);
        fclose(f);
        rb_unet_config cfg;
        rb_status s = rb_unet_config_load(&cfg, p);
        CHECK(s == cases[i].status && strstr(rb_last_error(), cases[i].needle) && strstr(rb_last_error(), p),
              "case %zu: status %d, message '%s'", i, s, rb_last_error());
    }
    rb_unet m;
    CHECK(rb_unet_load(&m, "/nonexistent/config.json", "/nonexistent/x.safetensors") != RB_OK &&
              strstr(rb_last_error(), "/nonexistent/config.json"),
          "missing config named: %s", rb_last_error());
}

/* ---- processor order (ms_adapter.bin indexes attention processors this way) ---- */

static void t_processor_order(void) {
    rb_unet_config cfg;
    if (!load_cfg(&cfg, "unet_sdxl"))
        return;
    static rb_unet m;
    REQUIRE(rb_unet_init(&m, &cfg) == RB_OK, "%s", rb_last_error());
    char p[4200];
    snprintf(p, sizeof p, "%s/ms_adapter_index_to_processor.json", t_golden_path("ms_diffusion"));
    json_error_t err;
    json_t *j = json_load_file(p, 0, &err);
    REQUIRE(j && json_is_object(j), "%s: %s", p, err.text);
    CHECK((int)json_object_size(j) == m.n_attn && m.n_attn == 34, "%d processors, map has %d", m.n_attn,
          (int)json_object_size(j));
    for (int i = 0; i < m.n_attn && i < (int)json_object_size(j); i++) {
        char key[16], want[160];
        snprintf(key, sizeof key, "%d", i);
        const char *v = json_string_value(json_object_get(j, key));
        REQUIRE(v, "index %d missing in map", i);
        snprintf(want, sizeof want, "%s.processor", m.attn[i]->name);
        CHECK(!strcmp(v, want), "index %d: %s vs %s", i, want, v);
        CHECK(m.attn[i]->index == i && m.attn[i]->cross == (i % 2), "index %d: cross flag / index", i);
        CHECK(m.attn[i]->context_dim == (i % 2 ? 36 : m.attn[i]->dim), "index %d: context dim", i);
    }
    json_decref(j);
    rb_unet_free(&m);
}


/* The real SDXL base config (values of its unet/config.json): 140 processors, attn2 at odd indices,
 * grouped as MS-Diffusion's ms_adapter.bin expects (down_blocks.1: 1-7, down_blocks.2: 9-47,
 * up_blocks.0: 49-107, up_blocks.1: 109-119, mid_block: 121-139). */
static void t_processor_order_sdxl_base(void) {
    rb_unet_config cfg = {.in_channels = 4, .out_channels = 4, .n_blocks = 3, .block_out = {320, 640, 1280},
                          .down_attn = {0, 1, 1}, .up_attn = {1, 1, 0}, .mid_attn = 1, .layers_per_block = 2,
                          .transformer_layers = {1, 2, 10}, .heads = {5, 10, 20}, .cross_attention_dim = 2048,
                          .use_linear_projection = 1, .norm_groups = 32, .norm_eps = 1e-5f, .flip_sin_to_cos = 1,
                          .text_time = 1, .addition_time_embed_dim = 256, .add_embed_in = 2816,
                          .time_embed_dim = 1280};
    static rb_unet m;
    REQUIRE(rb_unet_init(&m, &cfg) == RB_OK, "%s", rb_last_error());
    CHECK(m.n_attn == 140, "%d processors", m.n_attn);
    static const struct {
        int index;
        const char *name;
    } at[] = {
        {1, "down_blocks.1.attentions.0.transformer_blocks.0.attn2"},
        {7, "down_blocks.1.attentions.1.transformer_blocks.1.attn2"},
        {9, "down_blocks.2.attentions.0.transformer_blocks.0.attn2"},
        {47, "down_blocks.2.attentions.1.transformer_blocks.9.attn2"},
        {49, "up_blocks.0.attentions.0.transformer_blocks.0.attn2"},
        {107, "up_blocks.0.attentions.2.transformer_blocks.9.attn2"},
        {109, "up_blocks.1.attentions.0.transformer_blocks.0.attn2"},
        {119, "up_blocks.1.attentions.2.transformer_blocks.1.attn2"},
        {120, "mid_block.attentions.0.transformer_blocks.0.attn1"},
        {139, "mid_block.attentions.0.transformer_blocks.9.attn2"},
    };
    for (size_t i = 0; i < sizeof at / sizeof *at && m.n_attn == 140; i++)
        CHECK(!strcmp(m.attn[at[i].index]->name, at[i].name), "index %d: %s", at[i].index, m.attn[at[i].index]->name);
    int cross_dims_ok = 1;
    for (int i = 0; i < m.n_attn; i++)
        cross_dims_ok &= m.attn[i]->cross == (i % 2) && m.attn[i]->heads * 64 == m.attn[i]->dim;
    CHECK(cross_dims_ok, "attn2 at odd indices, head dim 64");
    rb_unet_free(&m);
}

/* ---- key tables vs the reference converters' keymaps ---- */

static void check_keymap(const char *case_name, const char *keymap) {
    rb_unet_config cfg;
    if (!load_cfg(&cfg, case_name))
        return;
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", t_golden_path(case_name), keymap);
    json_error_t err;
    json_t *j = json_load_file(p, 0, &err);
    REQUIRE(j && json_is_object(j), "%s: %s", p, err.text);
    /* every keymap entry: our table gives the same original name */
    const char *k;
    json_t *v;
    int bad = 0;
    json_object_foreach(j, k, v) {
        char got[256];
        rb_status s = rb_unet_map_key(&cfg, RB_UNET_SGM, k, got, sizeof got);
        const char *want = json_string_value(v);
        const char *pre = "model.diffusion_model.";
        int ok = s == RB_OK && want && !strncmp(want, pre, strlen(pre)) && !strcmp(got, want + strlen(pre));
        if (!ok && bad++ < 5)
            CHECK(ok, "%s -> %s, want %s", k, s == RB_OK ? got : rb_last_error(), want ? want : "?");
    }
    CHECK(bad == 0, "%d keymap entries differ", bad);
    /* our parameter list is exactly the keymap's key set */
    static rb_unet m;
    REQUIRE(rb_unet_init(&m, &cfg) == RB_OK, "%s", rb_last_error());
    static name_list names;
    names.n = 0;
    rb_unet_visit_params(&m, collect_name, &names);
    CHECK(names.n == (int)json_object_size(j), "%d parameters, keymap has %d", names.n, (int)json_object_size(j));
    for (int i = 0; i < names.n && i < 1024; i++)
        CHECK(json_object_get(j, names.names[i]), "parameter %s not in the keymap", names.names[i]);
    json_decref(j);
    rb_unet_free(&m);
    /* names outside the tables are refused */
    char out[256];
    CHECK(rb_unet_map_key(&cfg, RB_UNET_SGM, "down_blocks.9.resnets.0.norm1.weight", out, sizeof out) ==
              RB_ERR_INVALID,
          "block index out of range refused");
    CHECK(rb_unet_map_key(&cfg, RB_UNET_SGM, "mid_block.resnets.0.nrm1.weight", out, sizeof out) == RB_ERR_INVALID,
          "unknown resnet module refused");
}

static void t_keymap_sgm(void) { check_keymap("unet_sdxl", "sgm_unet_keymap.json"); }
static void t_keymap_ldm(void) { check_keymap("unet_sd15", "ldm_unet_keymap.json"); }


/* ---- config detection from tensor shapes ---- */

static void check_detect(const char *case_name, const char *file, rb_unet_layout want_layout) {
    rb_unet_config want, got;
    if (!load_cfg(&want, case_name))
        return;
    char p[4300];
    snprintf(p, sizeof p, "%s/%s", t_golden_path(case_name), file);
    static rb_weights w;
    REQUIRE(rb_weights_open(&w, p) == RB_OK, "%s", rb_last_error());
    rb_unet_layout layout;
    char prefix[32];
    REQUIRE(rb_unet_detect_layout(&w, &layout, prefix, sizeof prefix) == RB_OK, "%s", rb_last_error());
    CHECK(layout == want_layout && !strcmp(prefix, layout == RB_UNET_SGM ? "model.diffusion_model." : ""),
          "layout %d prefix '%s'", layout, prefix);
    REQUIRE(rb_unet_config_detect(&got, &w, layout, prefix) == RB_OK, "%s", rb_last_error());
    /* everything the shapes determine equals config.json */
    CHECK(got.n_blocks == want.n_blocks && got.layers_per_block == want.layers_per_block, "blocks, layers");
    for (int i = 0; i < want.n_blocks; i++) {
        CHECK(got.block_out[i] == want.block_out[i], "block_out[%d] %d", i, got.block_out[i]);
        CHECK(got.down_attn[i] == want.down_attn[i] && got.up_attn[i] == want.up_attn[i], "block %d types", i);
        CHECK(got.transformer_layers[i] == want.transformer_layers[i], "transformer_layers[%d] %d", i,
              got.transformer_layers[i]);
        /* heads are not in any shape: the SD convention */
        int conv = !want.use_linear_projection ? 8 : want.block_out[i] >= 64 ? want.block_out[i] / 64 : 1;
        CHECK(got.heads[i] == conv, "heads[%d] = %d, convention %d", i, got.heads[i], conv);
    }
    CHECK(got.in_channels == want.in_channels && got.out_channels == want.out_channels, "in/out");
    CHECK(got.cross_attention_dim == want.cross_attention_dim, "cross dim %d", got.cross_attention_dim);
    CHECK(got.use_linear_projection == want.use_linear_projection, "projection kind");
    CHECK(got.text_time == want.text_time && got.add_embed_in == want.add_embed_in, "text_time");
    CHECK(got.time_embed_dim == want.time_embed_dim && got.mid_attn, "time embed");
    CHECK(got.norm_groups == 32 && got.flip_sin_to_cos && got.freq_shift == 0, "conventions");
    rb_weights_close(&w);
    /* the tiny models break the conventions (4 groups), which loading without config.json reports */
    static rb_unet m;
    CHECK(rb_unet_load(&m, NULL, p) == RB_ERR_FORMAT && strstr(rb_last_error(), "32 groups"),
          "tiny model without config: %s", rb_last_error());
}

static void t_detect_sdxl(void) { check_detect("unet_sdxl", "sgm_unet.safetensors", RB_UNET_SGM); }
static void t_detect_sd15(void) { check_detect("unet_sd15", "ldm_unet.safetensors", RB_UNET_SGM); }
static void t_detect_sd15_diffusers(void) {
    check_detect("unet_sd15", "diffusion_pytorch_model.safetensors", RB_UNET_DIFFUSERS);
}

/* ---- forward against the goldens ---- */

typedef struct {
    const char *name;
    double fp64; /* case.md: fp32 vs fp64 max abs diff */
} golden_tol;

/* Tolerance = 10x the reference's own fp32-vs-fp64 difference (1e-6 floor where that is 0). */
static void compare(const char *what, const rb_tensor *got, const rb_safetensors *io, const golden_tol *tols) {
    char key[96];
    snprintf(key, sizeof key, "%s", what);
    const rb_tensor *want = rb_st_get(io, key);
    REQUIRE(want, "%s not in io.safetensors", key);
    REQUIRE(got, "%s: not computed", key);
    REQUIRE(rb_numel(got) == rb_numel(want) && got->ndim == want->ndim, "%s: shape", key);
    double tol = 0;
    for (int i = 0; tols[i].name; i++)
        if (!strcmp(tols[i].name, what))
            tol = 10 * tols[i].fp64 > 1e-6 ? 10 * tols[i].fp64 : 1e-6;
    REQUIRE(tol > 0, "%s: no tolerance listed", what);
    double md;
    int ok = t_allclose(got->data, want->data, (size_t)rb_numel(want), (float)tol, 0, &md);
    CHECK(ok, "%s: max |diff| %.3g > %.3g", what, md, tol);
    if (getenv("RELBOOTH_VERBOSE"))
        fprintf(stderr, "  %-32s max|diff| %.3g (tol %.3g)\n", what, md, tol);
}

static const golden_tol sdxl_tol[] = {
    {"out_sample", 2.14e-06},
    {"intermediate.conv_in", 7.53e-07},
    {"intermediate.time_proj", 0},
    {"intermediate.time_embedding", 1.1e-07},
    {"intermediate.add_time_proj", 0},
    {"intermediate.add_embedding", 1.52e-07},
    {"intermediate.down_blocks.0", 1.52e-06},
    {"intermediate.down_blocks.1", 5.41e-06},
    {"intermediate.down_blocks.2", 8.97e-06},
    {"intermediate.mid_block", 1.23e-05},
    {"intermediate.up_blocks.0", 1.17e-05},
    {"intermediate.up_blocks.1", 9.45e-06},
    {"intermediate.up_blocks.2", 4.97e-06},
    {"intermediate.conv_norm_out", 3.52e-06},
    {"intermediate.conv_out", 2.14e-06},
    {0, 0},
};

static const golden_tol sd15_tol[] = {
    {"out_sample", 1.8e-06},
    {"intermediate.conv_in", 7.19e-07},
    {"intermediate.time_proj", 0},
    {"intermediate.time_embedding", 1.3e-07},
    {"intermediate.down_blocks.0", 5.65e-06},
    {"intermediate.down_blocks.1", 5.98e-06},
    {"intermediate.down_blocks.2", 4.36e-06},
    {"intermediate.down_blocks.3", 4.89e-06},
    {"intermediate.mid_block", 5.46e-06},
    {"intermediate.up_blocks.0", 7.57e-06},
    {"intermediate.up_blocks.1", 9.16e-06},
    {"intermediate.up_blocks.2", 1e-05},
    {"intermediate.up_blocks.3", 1.69e-05},
    {"intermediate.conv_norm_out", 7.31e-06},
    {"intermediate.conv_out", 1.8e-06},
    {0, 0},
};

static rb_tensor io_tensor(const rb_safetensors *io, const char *name) {
    const rb_tensor *t = rb_st_get(io, name);
    rb_tensor z;
    memset(&z, 0, sizeof z);
    return t ? *t : z;
}

static void run_case(const char *case_name, const char *weights_file, const golden_tol *tols) {
    const char *g = t_golden_path(case_name);
    if (!g)
        return;
    char dir[4200], cfg[4300], w[4300], io_path[4300];
    snprintf(dir, sizeof dir, "%s", g);
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    snprintf(w, sizeof w, "%s/%s", dir, weights_file);
    snprintf(io_path, sizeof io_path, "%s/io.safetensors", dir);
    static rb_unet m;
    REQUIRE(rb_unet_load(&m, cfg, w) == RB_OK, "load: %s", rb_last_error());
    CHECK(m.layout == (strstr(weights_file, "diffusion_pytorch") ? RB_UNET_DIFFUSERS : RB_UNET_SGM), "layout");
    CHECK(rb_unet_unused(&m, 5) == 0, "every tensor of %s is used", weights_file);
    CHECK(rb_weights_unused(&m.w, 0) == 0, "no tensor outside the prefix either");
    rb_safetensors io;
    REQUIRE(rb_st_open(&io, io_path) == RB_OK, "%s", rb_last_error());
    rb_arena arena;
    REQUIRE(rb_arena_init(&arena, 64 << 20, "unet test") == RB_OK, "arena");
    rb_ctx c;
    rb_ctx_init(&c, &arena);
    rb_tensor sample = io_tensor(&io, "sample"), t = io_tensor(&io, "timestep"),
              ehs = io_tensor(&io, "encoder_hidden_states"), te = io_tensor(&io, "text_embeds"),
              ti = io_tensor(&io, "time_ids");
    rb_unet_in in = {&sample, &t, &ehs, m.cfg.text_time ? &te : NULL, m.cfg.text_time ? &ti : NULL, NULL, 1, 0};
    rb_unet_out out;
    rb_status s = rb_unet_forward(&c, &m, &in, &out);
    CHECK(s == RB_OK, "forward: %s", rb_last_error());
    if (s == RB_OK) {
        compare("out_sample", out.sample, &io, tols);
        compare("intermediate.conv_in", out.conv_in, &io, tols);
        compare("intermediate.time_proj", out.time_proj, &io, tols);
        compare("intermediate.time_embedding", out.time_embedding, &io, tols);
        if (m.cfg.text_time) {
            compare("intermediate.add_time_proj", out.add_time_proj, &io, tols);
            compare("intermediate.add_embedding", out.add_embedding, &io, tols);
        }
        char key[64];
        for (int i = 0; i < m.cfg.n_blocks; i++) {
            snprintf(key, sizeof key, "intermediate.down_blocks.%d", i);
            compare(key, out.down[i], &io, tols);
            snprintf(key, sizeof key, "intermediate.up_blocks.%d", i);
            compare(key, out.up[i], &io, tols);
        }
        compare("intermediate.mid_block", out.mid, &io, tols);
        compare("intermediate.conv_norm_out", out.conv_norm_out, &io, tols);
        compare("intermediate.conv_out", out.sample, &io, tols);
        if (getenv("RELBOOTH_VERBOSE"))
            fprintf(stderr, "  arena peak %zu bytes\n", arena.peak);
    }
    rb_arena_free(&arena);
    rb_st_close(&io);
    rb_unet_free(&m);
}

static void t_sdxl_diffusers(void) { run_case("unet_sdxl", "diffusion_pytorch_model.safetensors", sdxl_tol); }
static void t_sdxl_sgm(void) { run_case("unet_sdxl", "sgm_unet.safetensors", sdxl_tol); }
static void t_sd15_diffusers(void) { run_case("unet_sd15", "diffusion_pytorch_model.safetensors", sd15_tol); }
static void t_sd15_ldm(void) { run_case("unet_sd15", "ldm_unet.safetensors", sd15_tol); }


/* ---- processors, timesteps, inputs, memory (SDXL golden model) ---- */

typedef struct {
    rb_unet m;
    rb_safetensors io;
    rb_tensor sample, t, ehs, te, ti;
    rb_arena arena;
    rb_ctx c;
} fixture;

static fixture *open_sdxl(void) {
    static fixture f;
    const char *g = t_golden_path("unet_sdxl");
    if (!g)
        return NULL;
    char dir[2048], cfg[2100], w[2100], io[2100];
    snprintf(dir, sizeof dir, "%s", g);
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    snprintf(w, sizeof w, "%s/diffusion_pytorch_model.safetensors", dir);
    snprintf(io, sizeof io, "%s/io.safetensors", dir);
    if (rb_unet_load(&f.m, cfg, w) != RB_OK || rb_st_open(&f.io, io) != RB_OK) {
        CHECK(0, "%s", rb_last_error());
        return NULL;
    }
    f.sample = io_tensor(&f.io, "sample");
    f.t = io_tensor(&f.io, "timestep");
    f.ehs = io_tensor(&f.io, "encoder_hidden_states");
    f.te = io_tensor(&f.io, "text_embeds");
    f.ti = io_tensor(&f.io, "time_ids");
    if (rb_arena_init(&f.arena, 64 << 20, "unet test") != RB_OK) {
        CHECK(0, "arena");
        return NULL;
    }
    rb_ctx_init(&f.c, &f.arena);
    return &f;
}

static void close_fixture(fixture *f) {
    rb_arena_free(&f->arena);
    rb_st_close(&f->io);
    rb_unet_free(&f->m);
}

static rb_unet_in fixture_in(fixture *f) {
    rb_unet_in in = {&f->sample, &f->t, &f->ehs, &f->te, &f->ti, NULL, 0, 0};
    return in;
}

static int same(const rb_tensor *a, const rb_tensor *b) {
    return a && b && rb_numel(a) == rb_numel(b) && !memcmp(a->data, b->data, rb_nbytes(a));
}

typedef struct {
    int calls[64];
    int bad_context, bad_shape;
    const rb_tensor *ehs;
} recorder;

static rb_tensor *record_proc(rb_ctx *c, const rb_unet_attn *a, rb_tensor *h, rb_tensor *ctx, int64_t H, int64_t W,
                              void *user) {
    recorder *r = user;
    if (a->index >= 0 && a->index < 64)
        r->calls[a->index]++;
    if (a->cross ? ctx->data != r->ehs->data : ctx != h)
        r->bad_context++;
    if (h->ndim != 3 || h->shape[1] != H * W || h->shape[2] != a->dim || ctx->shape[2] != a->context_dim)
        r->bad_shape++;
    return rb_unet_attn_default(c, a, h, ctx, H, W, NULL);
}

static rb_tensor *zero_proc(rb_ctx *c, const rb_unet_attn *a, rb_tensor *h, rb_tensor *ctx, int64_t H, int64_t W,
                            void *user) {
    (*(int *)user)++;
    return rb_arena_zeros(c->arena, RB_F32, h->ndim, h->shape);
}

static rb_tensor *bad_proc(rb_ctx *c, const rb_unet_attn *a, rb_tensor *h, rb_tensor *ctx, int64_t H, int64_t W,
                           void *user) {
    return ctx; /* [B, L, ctx] instead of [B, N, C] */
}

static void t_processors(void) {
    fixture *f = open_sdxl();
    if (!f)
        return;
    rb_unet_in in = fixture_in(f);
    rb_unet_out ref, out;
    REQUIRE(rb_unet_forward(&f->c, &f->m, &in, &ref) == RB_OK, "%s", rb_last_error());
    size_t mk = rb_arena_mark(&f->arena);
    /* every module through a recording processor that calls the default: same bits, one call each */
    static recorder rec;
    rec.ehs = &f->ehs;
    rb_unet_proc procs[64];
    for (int i = 0; i < f->m.n_attn; i++)
        procs[i] = (rb_unet_proc){record_proc, &rec};
    in.procs = procs;
    REQUIRE(rb_unet_forward(&f->c, &f->m, &in, &out) == RB_OK, "%s", rb_last_error());
    CHECK(same(out.sample, ref.sample), "recording processor changes nothing");
    for (int i = 0; i < f->m.n_attn; i++)
        CHECK(rec.calls[i] == 1, "processor %d called %d times", i, rec.calls[i]);
    CHECK(!rec.bad_context && !rec.bad_shape, "context %d / shape %d mismatches", rec.bad_context, rec.bad_shape);
    /* replacing only attn2 (odd indices): every cross-attention is called and the output changes */
    rb_arena_reset(&f->arena, mk);
    int zero_calls = 0;
    for (int i = 0; i < f->m.n_attn; i++)
        procs[i] = (rb_unet_proc){i % 2 ? zero_proc : NULL, &zero_calls};
    REQUIRE(rb_unet_forward(&f->c, &f->m, &in, &out) == RB_OK, "%s", rb_last_error());
    CHECK(zero_calls == f->m.n_attn / 2, "%d attn2 calls", zero_calls);
    double d = 0;
    for (int64_t i = 0; i < rb_numel(out.sample); i++)
        d += fabs(((float *)out.sample->data)[i] - ((float *)ref.sample->data)[i]);
    CHECK(d / (double)rb_numel(out.sample) > 1e-3, "no cross-attention changes the output (mean |diff| %g)",
          d / (double)rb_numel(out.sample));
    /* a processor returning the wrong shape is an error naming the module */
    rb_arena_reset(&f->arena, mk);
    procs[5] = (rb_unet_proc){bad_proc, NULL};
    CHECK(rb_unet_forward(&f->c, &f->m, &in, &out) == RB_ERR_INVALID && strstr(rb_last_error(), f->m.attn[5]->name),
          "wrong shape refused: %s", rb_last_error());
    close_fixture(f);
}

/* Timestep as [], [B] or an integer gives the same result; a different t changes it. */
static void t_timesteps(void) {
    fixture *f = open_sdxl();
    if (!f)
        return;
    rb_unet_in in = fixture_in(f);
    rb_unet_out ref, out;
    REQUIRE(rb_unet_forward(&f->c, &f->m, &in, &ref) == RB_OK, "%s", rb_last_error());
    float tv[2] = {999, 999};
    int64_t ti64 = 999;
    rb_tensor vec = rb_tensor_wrap(tv, RB_F32, 1, (int64_t[]){2}), i64 = rb_tensor_wrap(&ti64, RB_I64, 0, NULL);
    in.timestep = &vec;
    REQUIRE(rb_unet_forward(&f->c, &f->m, &in, &out) == RB_OK, "%s", rb_last_error());
    CHECK(same(out.sample, ref.sample), "[B] timestep");
    in.timestep = &i64;
    REQUIRE(rb_unet_forward(&f->c, &f->m, &in, &out) == RB_OK, "%s", rb_last_error());
    CHECK(same(out.sample, ref.sample), "i64 timestep");
    /* row 1 at another t: row 0 unchanged, row 1 differs */
    tv[1] = 500;
    in.timestep = &vec;
    REQUIRE(rb_unet_forward(&f->c, &f->m, &in, &out) == RB_OK, "%s", rb_last_error());
    size_t half = rb_nbytes(out.sample) / 2;
    CHECK(!memcmp(out.sample->data, ref.sample->data, half), "row 0 unchanged");
    CHECK(memcmp((char *)out.sample->data + half, (char *)ref.sample->data + half, half), "row 1 changed");
    close_fixture(f);
}

static void t_input_errors(void) {
    fixture *f = open_sdxl();
    if (!f)
        return;
    rb_unet_in in = fixture_in(f);
    rb_unet_out out;
    rb_tensor bad;
    REQUIRE(rb_view_slice(&bad, &f->sample, 1, 0, 3) == RB_OK, "slice");
    in.sample = &bad; /* 3 channels */
    CHECK(rb_unet_forward(&f->c, &f->m, &in, &out) == RB_ERR_INVALID && strstr(rb_last_error(), "sample"),
          "channels: %s", rb_last_error());
    rb_ctx_clear(&f->c);
    REQUIRE(rb_view_slice(&bad, &f->sample, 2, 0, 10) == RB_OK, "slice");
    in.sample = &bad; /* height 10: not a multiple of 4 */
    CHECK(rb_unet_forward(&f->c, &f->m, &in, &out) == RB_ERR_UNSUPPORTED, "odd size: %s", rb_last_error());
    rb_ctx_clear(&f->c);
    in = fixture_in(f);
    in.text_embeds = NULL;
    CHECK(rb_unet_forward(&f->c, &f->m, &in, &out) == RB_ERR_INVALID && strstr(rb_last_error(), "text_embeds"),
          "missing text_embeds: %s", rb_last_error());
    rb_ctx_clear(&f->c);
    in = fixture_in(f);
    REQUIRE(rb_view_slice(&bad, &f->ehs, 2, 0, 20) == RB_OK, "slice");
    in.encoder_hidden_states = &bad;
    CHECK(rb_unet_forward(&f->c, &f->m, &in, &out) == RB_ERR_INVALID &&
              strstr(rb_last_error(), "encoder_hidden_states"),
          "context width: %s", rb_last_error());
    close_fixture(f);
}

/* Inference compacts the arena: lower peak than keeping every activation (as under a tape), same bits. */
static void t_arena_reuse(void) {
    fixture *f = open_sdxl();
    if (!f)
        return;
    rb_unet_in in = fixture_in(f);
    rb_unet_out a, b;
    REQUIRE(rb_unet_forward(&f->c, &f->m, &in, &a) == RB_OK, "%s", rb_last_error());
    size_t compact_peak = f->arena.peak;
    static rb_arena grads;
    static rb_tape tape;
    REQUIRE(rb_arena_init(&grads, 1 << 20, "grads") == RB_OK && rb_tape_init(&tape, 4096, &grads) == RB_OK, "tape");
    static rb_arena kept;
    REQUIRE(rb_arena_init(&kept, 64 << 20, "unet test, no compaction") == RB_OK, "arena");
    rb_ctx c2;
    rb_ctx_init(&c2, &kept);
    c2.tape = &tape; /* nothing requires grad: nothing is recorded, but activations are kept */
    REQUIRE(rb_unet_forward(&c2, &f->m, &in, &b) == RB_OK, "%s", rb_last_error());
    CHECK(same(a.sample, b.sample), "same result with and without compaction");
    CHECK(compact_peak * 2 < kept.peak, "peak %zu with compaction vs %zu without", compact_peak, kept.peak);
    if (getenv("RELBOOTH_VERBOSE"))
        fprintf(stderr, "  arena peak %zu compacted, %zu kept\n", compact_peak, kept.peak);
    rb_arena_free(&kept);
    rb_tape_free(&tape);
    rb_arena_free(&grads);
    close_fixture(f);
}

int main(void) {
    RUN(t_config);
    RUN(t_config_errors);
    RUN(t_processor_order);
    RUN(t_processor_order_sdxl_base);
    RUN(t_keymap_sgm);
    RUN(t_keymap_ldm);
    RUN(t_detect_sdxl);
    RUN(t_detect_sd15);
    RUN(t_detect_sd15_diffusers);
    RUN(t_sdxl_diffusers);
    RUN(t_sdxl_sgm);
    RUN(t_sd15_diffusers);
    RUN(t_sd15_ldm);
    RUN(t_processors);
    RUN(t_timesteps);
    RUN(t_input_errors);
    RUN(t_arena_reuse);
    return t_done();
}
