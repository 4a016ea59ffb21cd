/* AutoencoderKL, as diffusers' (models/autoencoders/autoencoder_kl.py, vae.py):
 *   encode: moments = quant_conv(conv_out(silu(norm_out(mid(down_blocks(conv_in(x)))))))
 *           mean, logvar = chunk(moments, 2, dim=1); logvar = clamp(logvar, -30, 20)
 *           std = exp(0.5 logvar); sample = mean + std * noise
 *   decode: conv_out(silu(norm_out(up_blocks(mid(conv_in(post_quant_conv(z)))))))
 *   down block: resnets, then (not last) pad (0,1,0,1) + 3x3 conv stride 2
 *   up block: layers_per_block + 1 resnets, then (not last) nearest x2 + 3x3 conv
 *   mid: resnet, single-head self-attention over H*W tokens (GroupNorm, residual), resnet
 * Every GroupNorm has eps 1e-6; every 3x3 conv has padding 1. */
#include "vae.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "core/mem.h"
#include "io/json.h"

#define VAE_EPS 1e-6f
#define TILE_OVERLAP 0.25 /* diffusers' tile_overlap_factor */

/* ---------------------------------------------------------------------------------------------
 * Config */

static void config_defaults(rb_vae_config *c, int b0, int b1, int b2, int b3, int sample, float scaling) {
    memset(c, 0, sizeof *c);
    c->in_channels = c->out_channels = 3;
    c->latent_channels = 4;
    c->n_blocks = 4;
    c->block_out_channels[0] = b0;
    c->block_out_channels[1] = b1;
    c->block_out_channels[2] = b2;
    c->block_out_channels[3] = b3;
    c->layers_per_block = 2;
    c->norm_num_groups = 32;
    c->sample_size = sample;
    c->scaling_factor = scaling;
    c->mid_block_add_attention = c->use_quant_conv = c->use_post_quant_conv = c->force_upcast = 1;
}

void rb_vae_config_sdxl(rb_vae_config *c) { config_defaults(c, 128, 256, 512, 512, 1024, 0.13025f); }
void rb_vae_config_sd15(rb_vae_config *c) { config_defaults(c, 128, 256, 512, 512, 512, 0.18215f); }

static int json_flag(json_t *j, const char *key, int dflt) {
    json_t *v = json_object_get(j, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static rb_status check_types(json_t *j, const char *key, const char *want, int n, const char *path) {
    json_t *a = json_object_get(j, key);
    if (!a)
        return RB_OK;
    if (!json_is_array(a) || (int)json_array_size(a) != n)
        return rb_error(RB_ERR_FORMAT, "%s: '%s' must list %d block types", path, key, n);
    for (int i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(a, (size_t)i));
        if (!s || strcmp(s, want))
            return rb_error(RB_ERR_UNSUPPORTED, "%s: %s[%d] = '%s' (only %s is supported)", path, key, i,
                            s ? s : "?", want);
    }
    return RB_OK;
}

rb_status rb_vae_config_load(rb_vae_config *c, const char *path) {
    json_t *j;
    RB_TRY(rb_json_load_object(path, &j));
    rb_vae_config_sdxl(c); /* fields a config may omit keep diffusers' defaults below */
    c->norm_num_groups = 32;
    static const struct {
        const char *key;
        size_t off;
        int required;
    } ints[] = {
        {"in_channels", offsetof(rb_vae_config, in_channels), 0},
        {"out_channels", offsetof(rb_vae_config, out_channels), 0},
        {"latent_channels", offsetof(rb_vae_config, latent_channels), 1},
        {"layers_per_block", offsetof(rb_vae_config, layers_per_block), 1},
        {"norm_num_groups", offsetof(rb_vae_config, norm_num_groups), 0},
    };
    rb_status s = RB_OK;
    for (size_t i = 0; i < sizeof ints / sizeof *ints && s == RB_OK; i++) {
        json_t *v = json_object_get(j, ints[i].key);
        int *dst = (int *)((char *)c + ints[i].off);
        if (json_is_integer(v) && json_integer_value(v) > 0 && json_integer_value(v) < (1 << 16))
            *dst = (int)json_integer_value(v);
        else if (v || ints[i].required)
            s = rb_error(RB_ERR_FORMAT, "%s: missing or invalid '%s'", path, ints[i].key);
    }
    json_t *boc = json_object_get(j, "block_out_channels");
    if (s == RB_OK && (!json_is_array(boc) || json_array_size(boc) < 1 || json_array_size(boc) > RB_VAE_MAX_BLOCKS))
        s = rb_error(RB_ERR_FORMAT, "%s: 'block_out_channels' must be an array of 1..%d sizes", path,
                     RB_VAE_MAX_BLOCKS);
    if (s == RB_OK) {
        c->n_blocks = (int)json_array_size(boc);
        for (int i = 0; i < c->n_blocks && s == RB_OK; i++) {
            json_t *v = json_array_get(boc, (size_t)i);
            if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) >= (1 << 16) ||
                json_integer_value(v) % c->norm_num_groups)
                s = rb_error(RB_ERR_FORMAT, "%s: block_out_channels[%d] must be a positive multiple of %d", path, i,
                             c->norm_num_groups);
            else
                c->block_out_channels[i] = (int)json_integer_value(v);
        }
    }
    /* sample_size: an int, or [h, w] (diffusers uses the first entry for tiling) */
    json_t *ss = json_object_get(j, "sample_size");
    if (json_is_array(ss))
        ss = json_array_get(ss, 0);
    if (json_is_integer(ss) && json_integer_value(ss) > 0 && json_integer_value(ss) < (1 << 20))
        c->sample_size = (int)json_integer_value(ss);
    else if (ss && s == RB_OK)
        s = rb_error(RB_ERR_FORMAT, "%s: invalid 'sample_size'", path);
    json_t *sf = json_object_get(j, "scaling_factor");
    c->scaling_factor = json_is_number(sf) ? (float)json_number_value(sf) : 0.18215f;
    json_t *sh = json_object_get(j, "shift_factor");
    c->shift_factor = json_is_number(sh) ? (float)json_number_value(sh) : 0.0f;
    c->mid_block_add_attention = json_flag(j, "mid_block_add_attention", 1);
    c->use_quant_conv = json_flag(j, "use_quant_conv", 1);
    c->use_post_quant_conv = json_flag(j, "use_post_quant_conv", 1);
    c->force_upcast = json_flag(j, "force_upcast", 1);
    const char *act = json_string_value(json_object_get(j, "act_fn"));
    if (s == RB_OK && act && strcmp(act, "silu"))
        s = rb_error(RB_ERR_UNSUPPORTED, "%s: act_fn '%s' is not supported (silu only)", path, act);
    if (s == RB_OK)
        s = check_types(j, "down_block_types", "DownEncoderBlock2D", c->n_blocks, path);
    if (s == RB_OK)
        s = check_types(j, "up_block_types", "UpDecoderBlock2D", c->n_blocks, path);
    json_decref(j);
    return s;
}

/* ---------------------------------------------------------------------------------------------
 * Key table. A parameter's name is prefix + block rule + leaf rule + ".weight"/".bias", each rule
 * spelled per layout: column 0 diffusers, 1 SGM/LDM, 2 diffusers before 0.14 (NULL = as column 0).
 * Block rules are templates: {i} block index, {j} resnet index, {j+1}, and {n-1-i} (SGM numbers
 * decoder levels from the highest resolution, diffusers from the lowest). */

typedef struct key_rule {
    const char *name[3];
} key_rule;

enum { B_TOP, B_ENC_RES, B_ENC_DOWN, B_ENC_MID_RES, B_ENC_MID_ATTN, B_DEC_RES, B_DEC_UP, B_DEC_MID_RES, B_DEC_MID_ATTN };

static const key_rule block_rules[] = {
    [B_TOP] = {{"", "", NULL}},
    [B_ENC_RES] = {{"encoder.down_blocks.{i}.resnets.{j}.", "encoder.down.{i}.block.{j}.", NULL}},
    [B_ENC_DOWN] = {{"encoder.down_blocks.{i}.downsamplers.0.", "encoder.down.{i}.downsample.", NULL}},
    [B_ENC_MID_RES] = {{"encoder.mid_block.resnets.{j}.", "encoder.mid.block_{j+1}.", NULL}},
    [B_ENC_MID_ATTN] = {{"encoder.mid_block.attentions.0.", "encoder.mid.attn_1.", NULL}},
    [B_DEC_RES] = {{"decoder.up_blocks.{i}.resnets.{j}.", "decoder.up.{n-1-i}.block.{j}.", NULL}},
    [B_DEC_UP] = {{"decoder.up_blocks.{i}.upsamplers.0.", "decoder.up.{n-1-i}.upsample.", NULL}},
    [B_DEC_MID_RES] = {{"decoder.mid_block.resnets.{j}.", "decoder.mid.block_{j+1}.", NULL}},
    [B_DEC_MID_ATTN] = {{"decoder.mid_block.attentions.0.", "decoder.mid.attn_1.", NULL}},
};

enum { R_NORM1, R_CONV1, R_NORM2, R_CONV2, R_SHORTCUT };
static const key_rule resnet_leaves[] = {
    [R_NORM1] = {{"norm1", "norm1", NULL}},
    [R_CONV1] = {{"conv1", "conv1", NULL}},
    [R_NORM2] = {{"norm2", "norm2", NULL}},
    [R_CONV2] = {{"conv2", "conv2", NULL}},
    [R_SHORTCUT] = {{"conv_shortcut", "nin_shortcut", NULL}},
};

enum { A_NORM, A_Q, A_K, A_V, A_OUT };
static const key_rule attn_leaves[] = {
    [A_NORM] = {{"group_norm", "norm", NULL}},
    [A_Q] = {{"to_q", "q", "query"}},
    [A_K] = {{"to_k", "k", "key"}},
    [A_V] = {{"to_v", "v", "value"}},
    [A_OUT] = {{"to_out.0", "proj_out", "proj_attn"}},
};

enum { T_ENC_CONV_IN, T_ENC_NORM_OUT, T_ENC_CONV_OUT, T_QUANT, T_POST_QUANT, T_DEC_CONV_IN, T_DEC_NORM_OUT,
       T_DEC_CONV_OUT, T_SAMPLE_CONV };
static const key_rule top_leaves[] = {
    [T_ENC_CONV_IN] = {{"encoder.conv_in", "encoder.conv_in", NULL}},
    [T_ENC_NORM_OUT] = {{"encoder.conv_norm_out", "encoder.norm_out", NULL}},
    [T_ENC_CONV_OUT] = {{"encoder.conv_out", "encoder.conv_out", NULL}},
    [T_QUANT] = {{"quant_conv", "quant_conv", NULL}},
    [T_POST_QUANT] = {{"post_quant_conv", "post_quant_conv", NULL}},
    [T_DEC_CONV_IN] = {{"decoder.conv_in", "decoder.conv_in", NULL}},
    [T_DEC_NORM_OUT] = {{"decoder.conv_norm_out", "decoder.norm_out", NULL}},
    [T_DEC_CONV_OUT] = {{"decoder.conv_out", "decoder.conv_out", NULL}},
    [T_SAMPLE_CONV] = {{"conv", "conv", NULL}}, /* the conv of a down/upsampler */
};

static const char *rule_name(const key_rule *r, rb_vae_layout layout) {
    return r->name[layout] ? r->name[layout] : r->name[0];
}

/* prefix + expanded block rule + leaf + "." + suffix into buf; returns buf. */
static const char *key_name(char *buf, size_t n, const char *prefix, rb_vae_layout layout, int block, int i, int j,
                            int n_blocks, const key_rule *leaf, const char *suffix) {
    size_t o = (size_t)snprintf(buf, n, "%s", prefix);
    for (const char *t = rule_name(&block_rules[block], layout); *t && o < n; t++) {
        static const char *const tok[] = {"{i}", "{j}", "{j+1}", "{n-1-i}"};
        int k = 0;
        while (k < 4 && strncmp(t, tok[k], strlen(tok[k])))
            k++;
        if (k == 4) {
            buf[o++] = *t;
            continue;
        }
        int v = k == 0 ? i : k == 1 ? j : k == 2 ? j + 1 : n_blocks - 1 - i;
        o += (size_t)snprintf(buf + o, n - o, "%d", v);
        t += strlen(tok[k]) - 1;
    }
    if (o < n)
        snprintf(buf + o, n - o, "%s.%s", rule_name(leaf, layout), suffix);
    return buf;
}

typedef struct loader {
    rb_vae *m;
    char name[512];
} loader;

static rb_tensor *param(loader *L, int block, int i, int j, const key_rule *leaf, const char *suffix, int f32,
                        int ndim, const int64_t *shape) {
    rb_vae *m = L->m;
    key_name(L->name, sizeof L->name, m->prefix, m->layout, block, i, j, m->cfg.n_blocks, leaf, suffix);
    return rb_weights_get(&m->w, f32, ndim, shape, "%s", L->name);
}

static void load_conv(loader *L, rb_tensor **w, rb_tensor **b, int block, int i, int j, const key_rule *leaf,
                      int64_t out, int64_t in, int64_t k) {
    *w = param(L, block, i, j, leaf, "weight", 0, 4, (int64_t[]){out, in, k, k});
    *b = param(L, block, i, j, leaf, "bias", 1, 1, (int64_t[]){out});
}

static void load_norm(loader *L, rb_tensor **w, rb_tensor **b, int block, int i, int j, const key_rule *leaf,
                      int64_t ch) {
    *w = param(L, block, i, j, leaf, "weight", 1, 1, (int64_t[]){ch});
    *b = param(L, block, i, j, leaf, "bias", 1, 1, (int64_t[]){ch});
}

static void load_resnet(loader *L, rb_vae_resnet *r, int block, int i, int j, int64_t in, int64_t out) {
    load_norm(L, &r->norm1_w, &r->norm1_b, block, i, j, &resnet_leaves[R_NORM1], in);
    load_conv(L, &r->conv1_w, &r->conv1_b, block, i, j, &resnet_leaves[R_CONV1], out, in, 3);
    load_norm(L, &r->norm2_w, &r->norm2_b, block, i, j, &resnet_leaves[R_NORM2], out);
    load_conv(L, &r->conv2_w, &r->conv2_b, block, i, j, &resnet_leaves[R_CONV2], out, out, 3);
    if (in != out)
        load_conv(L, &r->short_w, &r->short_b, block, i, j, &resnet_leaves[R_SHORTCUT], out, in, 1);
}

/* Attention projections: diffusers Linear [C, C]; SGM 1x1 Conv2d [C, C, 1, 1], used as a [C, C] view. */
static void load_attn(loader *L, rb_vae_attn *a, int block, int64_t C) {
    load_norm(L, &a->norm_w, &a->norm_b, block, 0, 0, &attn_leaves[A_NORM], C);
    rb_tensor **w[4] = {&a->q_w, &a->k_w, &a->v_w, &a->o_w}, **b[4] = {&a->q_b, &a->k_b, &a->v_b, &a->o_b};
    int sgm = L->m->layout == RB_VAE_LAYOUT_SGM;
    for (int k = 0; k < 4; k++) {
        const key_rule *leaf = &attn_leaves[A_Q + k];
        rb_tensor *t = param(L, block, 0, 0, leaf, "weight", 0, sgm ? 4 : 2, (int64_t[]){C, C, 1, 1});
        *b[k] = param(L, block, 0, 0, leaf, "bias", 1, 1, (int64_t[]){C});
        if (t && sgm) {
            rb_status s = rb_view_reshape(&a->views[k], t, 2, (int64_t[]){C, C});
            if (s != RB_OK && L->m->w.status == RB_OK)
                L->m->w.status = s;
            t = s == RB_OK ? &a->views[k] : NULL;
        }
        *w[k] = t;
    }
}

/* Which layout and prefix the file uses: the first combination whose decoder mid-block conv exists,
 * spelled by the table itself. */
static rb_status detect_layout(rb_vae *m) {
    static const char *const prefixes[] = {"", "first_stage_model.", "vae."};
    static const rb_vae_layout layouts[] = {RB_VAE_LAYOUT_DIFFUSERS, RB_VAE_LAYOUT_SGM};
    char name[512];
    for (int p = 0; p < 3; p++)
        for (int l = 0; l < 2; l++) {
            key_name(name, sizeof name, prefixes[p], layouts[l], B_DEC_MID_RES, 0, 0, m->cfg.n_blocks,
                     &resnet_leaves[R_CONV1], "weight");
            if (!rb_weights_has(&m->w, name))
                continue;
            m->prefix = prefixes[p];
            m->layout = layouts[l];
            if (m->layout == RB_VAE_LAYOUT_DIFFUSERS) { /* pre-0.14 attention names? */
                key_name(name, sizeof name, m->prefix, RB_VAE_LAYOUT_DIFFUSERS_LEGACY, B_DEC_MID_ATTN, 0, 0,
                         m->cfg.n_blocks, &attn_leaves[A_Q], "weight");
                if (rb_weights_has(&m->w, name))
                    m->layout = RB_VAE_LAYOUT_DIFFUSERS_LEGACY;
            }
            return RB_OK;
        }
    return rb_error(RB_ERR_FORMAT, "%s: not an AutoencoderKL checkpoint (no decoder mid-block in the diffusers or "
                    "SGM layout)", m->w.st.path);
}

static rb_status load_weights(rb_vae *m) {
    const rb_vae_config *c = &m->cfg;
    loader L = {.m = m};
    int n = c->n_blocks, lpb = c->layers_per_block;
    const int *boc = c->block_out_channels;
    int64_t lat = c->latent_channels, top = boc[n - 1];
    m->res_store = rb_calloc((size_t)n * (size_t)(2 * lpb + 1) * sizeof *m->res_store, "VAE resnets");
    if (!m->res_store)
        return RB_ERR_OOM;
    rb_vae_resnet *next = m->res_store;
    /* encoder */
    load_conv(&L, &m->enc_conv_in_w, &m->enc_conv_in_b, B_TOP, 0, 0, &top_leaves[T_ENC_CONV_IN], boc[0],
              c->in_channels, 3);
    for (int i = 0; i < n; i++) {
        int64_t in = i ? boc[i - 1] : boc[0], out = boc[i];
        m->enc[i].res = next;
        for (int j = 0; j < lpb; j++)
            load_resnet(&L, next++, B_ENC_RES, i, j, j ? out : in, out);
        if (i < n - 1)
            load_conv(&L, &m->enc[i].sample_w, &m->enc[i].sample_b, B_ENC_DOWN, i, 0, &top_leaves[T_SAMPLE_CONV],
                      out, out, 3);
    }
    for (int j = 0; j < 2; j++)
        load_resnet(&L, &m->enc_mid.res[j], B_ENC_MID_RES, 0, j, top, top);
    if (c->mid_block_add_attention)
        load_attn(&L, &m->enc_mid.attn, B_ENC_MID_ATTN, top);
    load_norm(&L, &m->enc_norm_out_w, &m->enc_norm_out_b, B_TOP, 0, 0, &top_leaves[T_ENC_NORM_OUT], top);
    load_conv(&L, &m->enc_conv_out_w, &m->enc_conv_out_b, B_TOP, 0, 0, &top_leaves[T_ENC_CONV_OUT], 2 * lat, top, 3);
    if (c->use_quant_conv)
        load_conv(&L, &m->quant_w, &m->quant_b, B_TOP, 0, 0, &top_leaves[T_QUANT], 2 * lat, 2 * lat, 1);
    /* decoder */
    if (c->use_post_quant_conv)
        load_conv(&L, &m->post_quant_w, &m->post_quant_b, B_TOP, 0, 0, &top_leaves[T_POST_QUANT], lat, lat, 1);
    load_conv(&L, &m->dec_conv_in_w, &m->dec_conv_in_b, B_TOP, 0, 0, &top_leaves[T_DEC_CONV_IN], top, lat, 3);
    for (int j = 0; j < 2; j++)
        load_resnet(&L, &m->dec_mid.res[j], B_DEC_MID_RES, 0, j, top, top);
    if (c->mid_block_add_attention)
        load_attn(&L, &m->dec_mid.attn, B_DEC_MID_ATTN, top);
    int64_t prev = top;
    for (int i = 0; i < n; i++) {
        int64_t out = boc[n - 1 - i];
        m->dec[i].res = next;
        for (int j = 0; j <= lpb; j++)
            load_resnet(&L, next++, B_DEC_RES, i, j, j ? out : prev, out);
        if (i < n - 1)
            load_conv(&L, &m->dec[i].sample_w, &m->dec[i].sample_b, B_DEC_UP, i, 0, &top_leaves[T_SAMPLE_CONV], out,
                      out, 3);
        prev = out;
    }
    load_norm(&L, &m->dec_norm_out_w, &m->dec_norm_out_b, B_TOP, 0, 0, &top_leaves[T_DEC_NORM_OUT], boc[0]);
    load_conv(&L, &m->dec_conv_out_w, &m->dec_conv_out_b, B_TOP, 0, 0, &top_leaves[T_DEC_CONV_OUT],
              c->out_channels, boc[0], 3);
    return m->w.status;
}

rb_status rb_vae_load(rb_vae *m, const char *path, const rb_vae_config *cfg) {
    memset(m, 0, sizeof *m);
    char file[4096], conf[4096];
    struct stat st;
    if (stat(path, &st) != 0)
        return rb_error(RB_ERR_IO, "%s: no such VAE folder or file", path);
    int is_dir = S_ISDIR(st.st_mode);
    if (is_dir) {
        snprintf(file, sizeof file, "%s/diffusion_pytorch_model.safetensors", path);
        snprintf(conf, sizeof conf, "%s/config.json", path);
    } else {
        snprintf(file, sizeof file, "%s", path);
        const char *slash = strrchr(path, '/');
        snprintf(conf, sizeof conf, "%.*sconfig.json", slash ? (int)(slash - path + 1) : 0, path);
    }
    if (cfg)
        m->cfg = *cfg;
    else
        RB_TRY(rb_vae_config_load(&m->cfg, conf));
    if (m->cfg.n_blocks < 1 || m->cfg.n_blocks > RB_VAE_MAX_BLOCKS || m->cfg.layers_per_block < 1 ||
        m->cfg.layers_per_block > 16 || m->cfg.norm_num_groups < 1 || m->cfg.latent_channels < 1)
        return rb_error(RB_ERR_INVALID, "VAE config: invalid sizes (%d blocks, %d layers per block)",
                        m->cfg.n_blocks, m->cfg.layers_per_block);
    RB_TRY(rb_weights_open(&m->w, file));
    rb_status s = detect_layout(m);
    if (s == RB_OK)
        s = load_weights(m);
    if (s != RB_OK)
        rb_vae_free(m);
    return s;
}

void rb_vae_free(rb_vae *m) {
    rb_free(m->res_store);
    rb_weights_close(&m->w);
    memset(m, 0, sizeof *m);
}

int rb_vae_unused(const rb_vae *m, int max_print) {
    size_t np = strlen(m->prefix ? m->prefix : "");
    int n = 0;
    for (int i = 0; i < m->w.st.n; i++) {
        const char *name = m->w.st.entries[i].name;
        if (m->w.used[i] || strncmp(name, m->prefix, np))
            continue;
        if (n++ < max_print)
            fprintf(stderr, "relbooth: %s: unused VAE tensor %s\n", m->w.st.path, name);
    }
    return n;
}

/* ---------------------------------------------------------------------------------------------
 * Forward */

typedef struct run {
    rb_ctx *c;
    const rb_vae *m;
    int reuse;          /* release temporaries (no tape, no trace) */
    rb_vae_trace *trace;
    const char *side;   /* "encoder" / "decoder" */
} run;

/* rb_ctx_keep when temporaries may be released (no tape, no trace). */
static rb_tensor *keep(const run *r, size_t mark, rb_tensor *y) { return r->reuse ? rb_ctx_keep(r->c, mark, y) : y; }

static void trace(const run *r, const char *fmt, int i, rb_tensor *t) {
    rb_vae_trace *tr = r->trace;
    if (!tr || !t || tr->n >= RB_VAE_TRACE_MAX)
        return;
    char name[40];
    snprintf(name, sizeof name, fmt, i);
    snprintf(tr->names[tr->n], sizeof tr->names[0], "%s%s", r->side, name);
    tr->t[tr->n++] = t;
}

/* Stride 1: conv with "same" padding (3x3 -> 1, 1x1 -> 0). Stride 2 (Downsample2D): no padding,
 * the input is already padded on the right and bottom. */
static rb_tensor *conv(rb_ctx *c, rb_tensor *x, rb_tensor *w, rb_tensor *b, int stride) {
    if (!w)
        return rb_ctx_fail(c, c->status != RB_OK ? c->status : RB_ERR_INTERNAL);
    int pad = stride == 1 ? (int)(w->shape[2] / 2) : 0;
    return rb_conv2d(c, x, w, b, stride, stride, pad, pad);
}

static rb_tensor *norm_silu(const run *r, rb_tensor *x, rb_tensor *w, rb_tensor *b) {
    return rb_silu(r->c, rb_group_norm(r->c, x, r->m->cfg.norm_num_groups, w, b, VAE_EPS));
}

/* ResnetBlock2D (temb None, dropout 0, output_scale_factor 1): x [N, Cin, H, W] -> [N, Cout, H, W]
 *   h = conv2(silu(norm2(conv1(silu(norm1(x)))))); out = shortcut(x) + h */
static rb_tensor *resnet(const run *r, const rb_vae_resnet *p, rb_tensor *x) {
    rb_ctx *c = r->c;
    size_t m0 = rb_arena_mark(c->arena);
    rb_tensor *h = keep(r, m0, conv(c, norm_silu(r, x, p->norm1_w, p->norm1_b), p->conv1_w, p->conv1_b, 1));
    h = keep(r, m0, conv(c, norm_silu(r, h, p->norm2_w, p->norm2_b), p->conv2_w, p->conv2_b, 1));
    rb_tensor *s = p->short_w ? conv(c, x, p->short_w, p->short_b, 1) : x;
    return rb_add(c, s, h);
}

/* Attention(heads=1, dim_head=C, norm_num_groups, residual_connection, bias): x [N, C, H, W]
 *   t = norm(x).view(N, C, HW).transpose(1, 2)          [N, HW, C]
 *   o = to_out(softmax(q k^T / sqrt(C)) v), back to [N, C, H, W]; out = o + x */
static rb_tensor *attention(const run *r, const rb_vae_attn *a, rb_tensor *x) {
    rb_ctx *c = r->c;
    if (!x)
        return NULL;
    int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    size_t m0 = rb_arena_mark(c->arena);
    rb_tensor *t = rb_group_norm(c, x, r->m->cfg.norm_num_groups, a->norm_w, a->norm_b, VAE_EPS);
    t = rb_permute(c, rb_reshape(c, t, 3, (int64_t[]){N, C, H * W}), (const int[]){0, 2, 1});
    t = keep(r, m0, t);
    rb_tensor *q = rb_linear(c, t, a->q_w, a->q_b);
    rb_tensor *k = rb_linear(c, t, a->k_w, a->k_b);
    rb_tensor *v = rb_linear(c, t, a->v_w, a->v_b);
    rb_tensor *o = keep(r, m0, rb_attention(c, q, k, v, 1, NULL, 0.0f));
    o = keep(r, m0, rb_linear(c, o, a->o_w, a->o_b));
    o = rb_reshape(c, rb_permute(c, o, (const int[]){0, 2, 1}), 4, (int64_t[]){N, C, H, W});
    return rb_add(c, o, x);
}

/* UNetMidBlock2D: resnet, attention, resnet. x_mark: where x starts in the arena. */
static rb_tensor *mid_block(const run *r, const rb_vae_mid *p, rb_tensor *x, size_t x_mark) {
    x = keep(r, x_mark, resnet(r, &p->res[0], x));
    if (r->m->cfg.mid_block_add_attention)
        x = keep(r, x_mark, attention(r, &p->attn, x));
    return keep(r, x_mark, resnet(r, &p->res[1], x));
}

/* x [N, C, H, W] -> [N, C, H+1, W+1]: F.pad(x, (0, 1, 0, 1)) as two concats with zeros (recordable). */
static rb_tensor *pad_right_bottom(rb_ctx *c, rb_tensor *x) {
    if (!x || c->status != RB_OK)
        return NULL;
    int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    rb_tensor *zc = rb_arena_zeros(c->arena, RB_F32, 4, (int64_t[]){N, C, H, 1});
    rb_tensor *zr = rb_arena_zeros(c->arena, RB_F32, 4, (int64_t[]){N, C, 1, W + 1});
    if (!zc || !zr)
        return rb_ctx_fail(c, RB_ERR_OOM);
    rb_tensor *y = rb_concat(c, (rb_tensor *const[]){x, zc}, 2, 3);
    return rb_concat(c, (rb_tensor *const[]){y, zr}, 2, 2);
}

/* Encoder + quant_conv: x [N, in, H, W] -> moments [N, 2*latent, H/f, W/f]. */
static rb_tensor *encode_moments(const run *r0, rb_tensor *x) {
    run rr = *r0, *r = &rr;
    rb_ctx *c = r->c;
    const rb_vae *m = r->m;
    size_t xm = rb_arena_mark(c->arena);
    r->side = "encoder.";
    x = keep(r, xm, conv(c, x, m->enc_conv_in_w, m->enc_conv_in_b, 1));
    trace(r, "conv_in", 0, x);
    for (int i = 0; i < m->cfg.n_blocks; i++) {
        const rb_vae_block *b = &m->enc[i];
        for (int j = 0; j < m->cfg.layers_per_block; j++)
            x = keep(r, xm, resnet(r, &b->res[j], x));
        if (b->sample_w)
            x = keep(r, xm, conv(c, pad_right_bottom(c, x), b->sample_w, b->sample_b, 2));
        trace(r, "down_blocks.%d", i, x);
    }
    x = mid_block(r, &m->enc_mid, x, xm);
    trace(r, "mid_block", 0, x);
    x = keep(r, xm, conv(c, norm_silu(r, x, m->enc_norm_out_w, m->enc_norm_out_b), m->enc_conv_out_w,
                         m->enc_conv_out_b, 1));
    trace(r, "conv_out", 0, x);
    if (m->quant_w) {
        r->side = "";
        x = keep(r, xm, conv(c, x, m->quant_w, m->quant_b, 1));
        trace(r, "quant_conv", 0, x);
    }
    return x;
}

/* post_quant_conv + decoder: z [N, latent, h, w] -> [N, out, h*f, w*f]. */
static rb_tensor *decode_image(const run *r0, rb_tensor *z) {
    run rr = *r0, *r = &rr;
    rb_ctx *c = r->c;
    const rb_vae *m = r->m;
    size_t xm = rb_arena_mark(c->arena);
    if (m->post_quant_w) {
        r->side = "";
        z = keep(r, xm, conv(c, z, m->post_quant_w, m->post_quant_b, 1));
        trace(r, "post_quant_conv", 0, z);
    }
    r->side = "decoder.";
    rb_tensor *x = keep(r, xm, conv(c, z, m->dec_conv_in_w, m->dec_conv_in_b, 1));
    trace(r, "conv_in", 0, x);
    x = mid_block(r, &m->dec_mid, x, xm);
    trace(r, "mid_block", 0, x);
    for (int i = 0; i < m->cfg.n_blocks; i++) {
        const rb_vae_block *b = &m->dec[i];
        for (int j = 0; j <= m->cfg.layers_per_block; j++)
            x = keep(r, xm, resnet(r, &b->res[j], x));
        if (b->sample_w)
            x = keep(r, xm, conv(c, rb_upsample_nearest2x(c, x), b->sample_w, b->sample_b, 1));
        trace(r, "up_blocks.%d", i, x);
    }
    x = keep(r, xm, conv(c, norm_silu(r, x, m->dec_norm_out_w, m->dec_norm_out_b), m->dec_conv_out_w,
                         m->dec_conv_out_b, 1));
    trace(r, "conv_out", 0, x);
    return x;
}

/* ---------------------------------------------------------------------------------------------
 * Tiling, as diffusers' tiled_encode / tiled_decode: tiles of `tile` input pixels every
 * tile * (1 - 0.25); each output tile is blended in place with the (already blended) tile above and
 * to its left over `blend` rows/columns with linear weights, then cropped to `limit` and concatenated. */

typedef rb_tensor *(*tile_fn)(const run *r, rb_tensor *x);

/* b[.., y, :] = a[.., Ha - e + y, :] (1 - y/e) + b[.., y, :] (y/e) for y < e = min(Ha, Hb, extent);
 * vertical (dim 2) or horizontal (dim 3). a and b agree on the other dims. */
static void blend(const rb_tensor *a, rb_tensor *b, int dim, int64_t extent) {
    int64_t e = extent;
    if (a->shape[dim] < e)
        e = a->shape[dim];
    if (b->shape[dim] < e)
        e = b->shape[dim];
    int64_t NC = b->shape[0] * b->shape[1], Ha = a->shape[2], Wa = a->shape[3], Hb = b->shape[2], Wb = b->shape[3];
    const float *pa = a->data;
    float *pb = b->data;
    for (int64_t y = 0; y < e; y++) {
        float wa = (float)(1.0 - (double)y / (double)e), wb = (float)((double)y / (double)e);
        for (int64_t n = 0; n < NC; n++) {
            if (dim == 2) { /* row y of b with row Ha - e + y of a */
                const float *ra = pa + (n * Ha + Ha - e + y) * Wa;
                float *rb = pb + (n * Hb + y) * Wb;
                for (int64_t x = 0; x < Wb; x++)
                    rb[x] = ra[x] * wa + rb[x] * wb;
            } else { /* column y of b with column Wa - e + y of a */
                for (int64_t h = 0; h < Hb; h++)
                    pb[(n * Hb + h) * Wb + y] = pa[(n * Ha + h) * Wa + Wa - e + y] * wa + pb[(n * Hb + h) * Wb + y] * wb;
            }
        }
    }
}

static rb_tensor *tiled(const run *r, rb_tensor *x, tile_fn fn, int64_t tile, int64_t out_tile, int64_t scale_num,
                        int64_t scale_den) {
    rb_ctx *c = r->c;
    int64_t step = (int64_t)((double)tile * (1.0 - TILE_OVERLAP));
    int64_t ext = (int64_t)((double)out_tile * TILE_OVERLAP), limit = out_tile - ext;
    int64_t H = x->shape[2], W = x->shape[3];
    int64_t rows = (H + step - 1) / step, cols = (W + step - 1) / step;
    rb_tensor **tiles = rb_arena_alloc(c->arena, (size_t)(rows * cols) * sizeof *tiles);
    if (!tiles)
        return rb_ctx_fail(c, RB_ERR_OOM);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            size_t mk = rb_arena_mark(c->arena);
            rb_tensor v1, v2;
            int64_t i0 = i * step, j0 = j * step;
            if (rb_view_slice(&v1, x, 2, i0, i0 + tile < H ? i0 + tile : H) != RB_OK ||
                rb_view_slice(&v2, &v1, 3, j0, j0 + tile < W ? j0 + tile : W) != RB_OK)
                return rb_ctx_fail(c, RB_ERR_INVALID);
            tiles[i * cols + j] = keep(r, mk, fn(r, rb_contiguous(c, &v2)));
            if (c->status != RB_OK)
                return NULL;
        }
    /* output size: each tile contributes min(limit, its size) */
    int64_t Ho = 0, Wo = 0;
    for (int64_t i = 0; i < rows; i++)
        Ho += tiles[i * cols]->shape[2] < limit ? tiles[i * cols]->shape[2] : limit;
    for (int64_t j = 0; j < cols; j++)
        Wo += tiles[j]->shape[3] < limit ? tiles[j]->shape[3] : limit;
    if (Ho != H * scale_num / scale_den || Wo != W * scale_num / scale_den)
        return rb_ctx_error(c, RB_ERR_INTERNAL, "VAE tiling: assembled %lldx%lld", (long long)Ho, (long long)Wo);
    int64_t NC = tiles[0]->shape[0] * tiles[0]->shape[1];
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, 4, (int64_t[]){tiles[0]->shape[0], tiles[0]->shape[1], Ho, Wo});
    if (!out)
        return NULL;
    float *po = out->data;
    int64_t oy = 0;
    for (int64_t i = 0; i < rows; i++) {
        int64_t ox = 0, th = 0;
        for (int64_t j = 0; j < cols; j++) {
            rb_tensor *t = tiles[i * cols + j];
            if (i > 0)
                blend(tiles[(i - 1) * cols + j], t, 2, ext);
            if (j > 0)
                blend(tiles[i * cols + j - 1], t, 3, ext);
            int64_t h = t->shape[2] < limit ? t->shape[2] : limit, w = t->shape[3] < limit ? t->shape[3] : limit;
            const float *pt = t->data;
            for (int64_t n = 0; n < NC; n++)
                for (int64_t y = 0; y < h; y++)
                    memcpy(po + (n * Ho + oy + y) * Wo + ox, pt + (n * t->shape[2] + y) * t->shape[3],
                           (size_t)w * sizeof(float));
            ox += w;
            th = h;
        }
        oy += th;
    }
    return out;
}

/* ---------------------------------------------------------------------------------------------
 * Public entry points */

static rb_status check_input(rb_ctx *c, const rb_tensor *x, int64_t ch, int mult, const char *what) {
    if (!x || x->ndim != 4 || x->dtype != RB_F32 || x->shape[1] != ch || x->shape[0] < 1 || x->shape[2] < 1 ||
        x->shape[3] < 1 || x->shape[2] % mult || x->shape[3] % mult) {
        char s[96];
        rb_ctx_error(c, RB_ERR_INVALID, "VAE %s: expected f32 [N, %lld, H, W] with H, W multiples of %d, got %s",
                     what, (long long)ch, mult, x ? rb_shape_str(x, s, sizeof s) : "NULL");
        return c->status;
    }
    return RB_OK;
}

static run make_run(rb_ctx *c, const rb_vae *m, rb_vae_trace *trace) {
    if (trace)
        trace->n = 0;
    return (run){.c = c, .m = m, .reuse = !c->tape && !trace, .trace = trace, .side = ""};
}

static rb_status check_tiling(rb_ctx *c) {
    if (c->tape) {
        rb_ctx_error(c, RB_ERR_UNSUPPORTED, "VAE: tiled encode/decode is inference only (it blends in place)");
        return c->status;
    }
    return RB_OK;
}

rb_status rb_vae_encode(rb_ctx *c, const rb_vae *m, rb_tensor *image, rb_tensor *noise, int tiled_on,
                        rb_vae_trace *tr, rb_vae_posterior *out) {
    memset(out, 0, sizeof *out);
    if (c->status != RB_OK)
        return c->status;
    int f = 1 << (m->cfg.n_blocks - 1);
    RB_TRY(check_input(c, image, m->cfg.in_channels, f, "encode: image"));
    int64_t N = image->shape[0], L = m->cfg.latent_channels, h = image->shape[2] / f, w = image->shape[3] / f;
    if (noise && (noise->ndim != 4 || noise->dtype != RB_F32 || noise->shape[0] != N || noise->shape[1] != L ||
                  noise->shape[2] != h || noise->shape[3] != w)) {
        rb_ctx_error(c, RB_ERR_INVALID, "VAE encode: noise must be f32 [%lld, %lld, %lld, %lld]", (long long)N,
                     (long long)L, (long long)h, (long long)w);
        return c->status;
    }
    run r = make_run(c, m, tr);
    rb_dtype saved = c->matmul_dtype;
    if (m->cfg.force_upcast)
        c->matmul_dtype = RB_F32;
    rb_tensor *moments;
    int64_t T = m->cfg.sample_size;
    if (tiled_on && (image->shape[2] > T || image->shape[3] > T)) {
        r.trace = NULL; /* tiles are not traced; their temporaries are released */
        r.reuse = 1;
        moments = check_tiling(c) == RB_OK ? tiled(&r, image, encode_moments, T, T / f, 1, f) : NULL;
    } else {
        moments = encode_moments(&r, image);
    }
    c->matmul_dtype = saved;
    /* DiagonalGaussianDistribution(moments) */
    out->mean = rb_slice(c, moments, 1, 0, L);
    rb_tensor *raw = rb_slice(c, moments, 1, L, 2 * L);
    out->logvar = raw ? rb_ctx_tensor(c, RB_F32, 4, raw->shape) : NULL;
    out->std = raw ? rb_ctx_tensor(c, RB_F32, 4, raw->shape) : NULL;
    if (!out->std)
        return c->status;
    const float *pr = raw->data;
    float *lv = out->logvar->data, *sd = out->std->data;
    for (int64_t i = 0, n = rb_numel(raw); i < n; i++) {
        float v = pr[i] < -30.0f ? -30.0f : pr[i] > 20.0f ? 20.0f : pr[i];
        lv[i] = v;
        sd[i] = expf(0.5f * v);
    }
    if (noise)
        out->sample = rb_add(c, out->mean, rb_mul(c, out->std, noise));
    return c->status;
}

rb_tensor *rb_vae_decode(rb_ctx *c, const rb_vae *m, rb_tensor *z, int tiled_on, rb_vae_trace *tr) {
    if (c->status != RB_OK)
        return NULL;
    if (check_input(c, z, m->cfg.latent_channels, 1, "decode: latent") != RB_OK)
        return NULL;
    run r = make_run(c, m, tr);
    rb_dtype saved = c->matmul_dtype;
    if (m->cfg.force_upcast)
        c->matmul_dtype = RB_F32;
    int f = 1 << (m->cfg.n_blocks - 1);
    int64_t Tl = m->cfg.sample_size / f;
    rb_tensor *y;
    if (tiled_on && (z->shape[2] > Tl || z->shape[3] > Tl)) {
        r.trace = NULL;
        r.reuse = 1;
        y = check_tiling(c) == RB_OK ? tiled(&r, z, decode_image, Tl, m->cfg.sample_size, f, 1) : NULL;
    } else {
        y = decode_image(&r, z);
    }
    c->matmul_dtype = saved;
    return y;
}
