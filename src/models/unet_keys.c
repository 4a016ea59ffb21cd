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
