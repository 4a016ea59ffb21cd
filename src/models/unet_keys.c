/* UNet key tables: diffusers parameter names -> the original single-file layouts.
 *
 * SGM (SDXL, `sgm/modules/diffusionmodules/openaimodel.py`) and LDM (SD 1.x) name the UNet the same
 * way, as a flat list of TimestepEmbedSequential blocks:
 *   input_blocks.0.0                = conv_in
 *   input_blocks.{1 + i(L+1) + j}.0 = down_blocks.i.resnets.j      (L = layers_per_block)
 *   input_blocks.{1 + i(L+1) + j}.1 = down_blocks.i.attentions.j
 *   input_blocks.{(i+1)(L+1)}.0.op  = down_blocks.i.downsamplers.0.conv
 *   middle_block.{0, 2}             = mid_block.resnets.{0, 1};  middle_block.1 = mid_block.attentions.0
 *   output_blocks.{i(L+1) + j}.0    = up_blocks.i.resnets.j
 *   output_blocks.{i(L+1) + j}.1    = up_blocks.i.attentions.j
 *   output_blocks.{i(L+1) + L}.{1 if the block has no attentions, else 2}.conv = up_blocks.i.upsamplers.0.conv
 * The resnet and top-level modules are renamed by the tables below; everything inside a
 * Transformer2DModel keeps its diffusers name. This is the rule set of diffusers'
 * convert_diffusers_to_original_{stable_diffusion,sdxl}.py, written as data. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "unet.h"

typedef struct {
    const char *diffusers, *original;
} rename_rule;

static const rename_rule top_rules[] = {
    {"time_embedding.linear_1", "time_embed.0"},
    {"time_embedding.linear_2", "time_embed.2"},
    {"add_embedding.linear_1", "label_emb.0.0"},
    {"add_embedding.linear_2", "label_emb.0.2"},
    {"conv_in", "input_blocks.0.0"},
    {"conv_norm_out", "out.0"},
    {"conv_out", "out.2"},
};

static const rename_rule resnet_rules[] = {
    {"norm1", "in_layers.0"},    {"conv1", "in_layers.2"},  {"time_emb_proj", "emb_layers.1"},
    {"norm2", "out_layers.0"},   {"conv2", "out_layers.3"}, {"conv_shortcut", "skip_connection"},
};

/* `rest` = "<module>.<weight|bias>": renames <module> by the table. */
static int rename_module(const rename_rule *rules, size_t n, const char *rest, const char **module, const char **leaf) {
    const char *dot = strrchr(rest, '.');
    if (!dot || (strcmp(dot, ".weight") && strcmp(dot, ".bias")))
        return 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(rules[i].diffusers);
        if ((size_t)(dot - rest) == len && !strncmp(rest, rules[i].diffusers, len)) {
            *module = rules[i].original;
            *leaf = dot + 1;
            return 1;
        }
    }
    return 0;
}

/* sscanf of a prefix with up to two integers; *rest = what follows. */
static int prefix2(const char *s, const char *fmt, int *a, int *b, const char **rest) {
    int n = -1;
    int got = b ? sscanf(s, fmt, a, b, &n) : sscanf(s, fmt, a, &n);
    if (got != (b ? 2 : 1) || n < 0 || *a < 0 || (b && *b < 0))
        return 0;
    *rest = s + n;
    return 1;
}

#define EMIT(...) (snprintf(out, n, __VA_ARGS__) < (int)n ? RB_OK : rb_error(RB_ERR_INVALID, "UNet key too long"))

rb_status rb_unet_map_key(const rb_unet_config *cfg, rb_unet_layout layout, const char *name, char *out,
                          size_t n) {
    if (layout == RB_UNET_DIFFUSERS)
        return EMIT("%s", name);
    const int L = cfg->layers_per_block, nb = cfg->n_blocks;
    const size_t ntop = sizeof top_rules / sizeof *top_rules, nres = sizeof resnet_rules / sizeof *resnet_rules;
    const char *rest, *module, *leaf;
    int i, j;
    if (rename_module(top_rules, ntop, name, &module, &leaf))
        return EMIT("%s.%s", module, leaf);
    if (prefix2(name, "down_blocks.%d.resnets.%d.%n", &i, &j, &rest) && i < nb && j < L &&
        rename_module(resnet_rules, nres, rest, &module, &leaf))
        return EMIT("input_blocks.%d.0.%s.%s", 1 + i * (L + 1) + j, module, leaf);
    if (prefix2(name, "down_blocks.%d.attentions.%d.%n", &i, &j, &rest) && i < nb && j < L && *rest)
        return EMIT("input_blocks.%d.1.%s", 1 + i * (L + 1) + j, rest);
    if (prefix2(name, "down_blocks.%d.downsamplers.0.conv.%n", &i, NULL, &rest) && i < nb - 1 &&
        (!strcmp(rest, "weight") || !strcmp(rest, "bias")))
        return EMIT("input_blocks.%d.0.op.%s", (i + 1) * (L + 1), rest);
    if (prefix2(name, "mid_block.resnets.%d.%n", &j, NULL, &rest) && j < 2 &&
        rename_module(resnet_rules, nres, rest, &module, &leaf))
        return EMIT("middle_block.%d.%s.%s", 2 * j, module, leaf);
    if (!strncmp(name, "mid_block.attentions.0.", 23) && name[23])
        return EMIT("middle_block.1.%s", name + 23);
    if (prefix2(name, "up_blocks.%d.resnets.%d.%n", &i, &j, &rest) && i < nb && j <= L &&
        rename_module(resnet_rules, nres, rest, &module, &leaf))
        return EMIT("output_blocks.%d.0.%s.%s", i * (L + 1) + j, module, leaf);
    if (prefix2(name, "up_blocks.%d.attentions.%d.%n", &i, &j, &rest) && i < nb && j <= L && *rest)
        return EMIT("output_blocks.%d.1.%s", i * (L + 1) + j, rest);
    if (prefix2(name, "up_blocks.%d.upsamplers.0.conv.%n", &i, NULL, &rest) && i < nb - 1 &&
        (!strcmp(rest, "weight") || !strcmp(rest, "bias")))
        return EMIT("output_blocks.%d.%d.conv.%s", i * (L + 1) + L, cfg->up_attn[i] ? 2 : 1, rest);
    return rb_error(RB_ERR_INVALID, "'%s' is not a UNet parameter name", name);
}

/* ---- layout and config detection from the keys ---- */

rb_status rb_unet_detect_layout(const rb_weights *w, rb_unet_layout *layout, char *prefix, size_t n) {
    static const char *const prefixes[] = {"", "model.diffusion_model.", "unet.", "diffusion_model."};
    char key[96];
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
        for (int l = 0; l < 2; l++) {
            snprintf(key, sizeof key, "%s%s", prefixes[i], l ? "input_blocks.0.0.weight" : "conv_in.weight");
            if (rb_weights_has(w, key)) {
                *layout = l ? RB_UNET_SGM : RB_UNET_DIFFUSERS;
                snprintf(prefix, n, "%s", prefixes[i]);
                return RB_OK;
            }
        }
    }
    return rb_error(RB_ERR_FORMAT, "%s: no UNet found (neither conv_in.weight nor input_blocks.0.0.weight)",
                    w->st.path);
}

typedef struct {
    const rb_weights *w;
    const rb_unet_config *cfg;
    rb_unet_layout layout;
    const char *prefix;
} peeker;

/* The file's tensor for a diffusers name (shape only; not marked as used), or NULL. */
static const rb_tensor *peek(const peeker *p, const char *fmt, ...) RB_PRINTF(2, 3);
static const rb_tensor *peek(const peeker *p, const char *fmt, ...) {
    char name[192], key[256], full[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (rb_unet_map_key(p->cfg, p->layout, name, key, sizeof key) != RB_OK)
        return NULL;
    snprintf(full, sizeof full, "%s%s", p->prefix, key);
    return rb_st_get(&p->w->st, full);
}

static int depth_of(const peeker *p, const char *attn) {
    int k = 0;
    while (k < 64 && peek(p, "%s.transformer_blocks.%d.norm1.weight", attn, k))
        k++;
    return k;
}

rb_status rb_unet_config_detect(rb_unet_config *c, const rb_weights *w, rb_unet_layout layout, const char *prefix) {
    memset(c, 0, sizeof *c);
    peeker p = {w, c, layout, prefix};
    const char *path = w->st.path;
    c->n_blocks = RB_UNET_MAX_BLOCKS; /* provisional bounds for the name rules */
    char key[128];
    if (layout == RB_UNET_DIFFUSERS) { /* layers_per_block: resnets of the first down block */
        while (c->layers_per_block < RB_UNET_MAX_LAYERS &&
               peek(&p, "down_blocks.0.resnets.%d.conv1.weight", c->layers_per_block))
            c->layers_per_block++;
    } else { /* the first downsampler sits at input_blocks.{L+1} */
        for (int k = 2; k <= RB_UNET_MAX_LAYERS && !c->layers_per_block; k++) {
            snprintf(key, sizeof key, "%sinput_blocks.%d.0.op.weight", prefix, k);
            if (rb_weights_has(w, key))
                c->layers_per_block = k - 1;
        }
    }
    if (c->layers_per_block < 1)
        return rb_error(RB_ERR_FORMAT, "%s: cannot detect the UNet's layers_per_block from its keys", path);
    int n = 0;
    const rb_tensor *t;
    while (n < RB_UNET_MAX_BLOCKS && (t = peek(&p, "down_blocks.%d.resnets.0.conv1.weight", n)) && t->ndim == 4)
        c->block_out[n++] = (int)t->shape[0];
    const rb_tensor *cin = peek(&p, "conv_in.weight"), *cout = peek(&p, "conv_out.weight");
    const rb_tensor *temb = peek(&p, "time_embedding.linear_1.weight");
    const rb_tensor *ck = peek(&p, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight");
    const rb_tensor *pin = peek(&p, "mid_block.attentions.0.proj_in.weight");
    if (n < 1 || !cin || cin->ndim != 4 || !cout || cout->ndim != 4 || !temb || temb->ndim != 2 || !ck ||
        ck->ndim != 2 || !pin)
        return rb_error(RB_ERR_FORMAT, "%s: UNet keys incomplete: cannot detect its config", path);
    c->n_blocks = n;
    for (int i = 0; i < n; i++) {
        c->down_attn[i] = peek(&p, "down_blocks.%d.attentions.0.norm.weight", i) != NULL;
        c->up_attn[i] = peek(&p, "up_blocks.%d.attentions.0.norm.weight", i) != NULL;
    }
    for (int i = 0; i < n; i++) { /* depth from the down block, else from its mirror up block */
        char a[64];
        snprintf(a, sizeof a, c->down_attn[i] ? "down_blocks.%d.attentions.0" : "up_blocks.%d.attentions.0",
                 c->down_attn[i] ? i : n - 1 - i);
        c->transformer_layers[i] = c->down_attn[i] || c->up_attn[n - 1 - i] ? depth_of(&p, a) : 1;
    }
    int mid_depth = depth_of(&p, "mid_block.attentions.0");
    if (!c->down_attn[n - 1] && !c->up_attn[0])
        c->transformer_layers[n - 1] = mid_depth;
    c->mid_attn = 1;
    c->in_channels = (int)cin->shape[1];
    c->out_channels = (int)cout->shape[0];
    c->cross_attention_dim = (int)ck->shape[1];
    c->use_linear_projection = pin->ndim == 2;
    for (int i = 0; i < n; i++)
        c->heads[i] = !c->use_linear_projection ? 8 : c->block_out[i] >= 64 ? c->block_out[i] / 64 : 1;
    c->norm_groups = 32;
    c->norm_eps = 1e-5f;
    c->flip_sin_to_cos = 1;
    c->freq_shift = 0;
    c->time_embed_dim = (int)temb->shape[0];
    const rb_tensor *add = peek(&p, "add_embedding.linear_1.weight");
    if (add && add->ndim == 2) {
        c->text_time = 1;
        c->add_embed_in = (int)add->shape[1];
        c->addition_time_embed_dim = 256;
    }
    char blocks[160] = "", *b = blocks;
    for (int i = 0; i < n; i++)
        b += snprintf(b, (size_t)(blocks + sizeof blocks - b), "%s%c%d/%dx%d", i ? " " : "",
                      c->down_attn[i] ? 'A' : 'D', c->block_out[i], c->heads[i], c->transformer_layers[i]);
    fprintf(stderr,
            "relbooth: %s: no config.json, UNet detected from tensor shapes: %s layout, blocks [%s] "
            "(A/D = cross-attn/plain, channels/heads x depth), %d layers, mid depth %d, context %d, %s proj%s\n",
            path, layout == RB_UNET_SGM ? "SGM/LDM" : "diffusers", blocks, c->layers_per_block, mid_depth,
            c->cross_attention_dim, c->use_linear_projection ? "linear" : "conv", c->text_time ? ", text_time" : "");
    if (mid_depth != c->transformer_layers[n - 1])
        return rb_error(RB_ERR_UNSUPPORTED, "%s: mid block depth %d differs from the last block's %d", path,
                        mid_depth, c->transformer_layers[n - 1]);
    return RB_OK;
}
