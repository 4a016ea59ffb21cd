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
    rb_unet_in in = {&sample, &t, &ehs, m.cfg.text_time ? &te : NULL, m.cfg.text_time ? &ti : NULL, NULL, 1};
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

int main(void) {
    RUN(t_config);
    RUN(t_config_errors);
    RUN(t_processor_order);
    RUN(t_keymap_sgm);
    RUN(t_keymap_ldm);
    RUN(t_sdxl_diffusers);
    RUN(t_sdxl_sgm);
    RUN(t_sd15_diffusers);
    RUN(t_sd15_ldm);
    return t_done();
}
