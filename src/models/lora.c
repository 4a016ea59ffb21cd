/* LoRA files -> normalised pairs {component, diffusers module path, down, up, alpha, scale}, and the two
 * ways to apply them (merge into a weight, or a run-time linear layer on the tape). */
#include "models/lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/mem.h"
#include "core/strmap.h"

/* ------------------------------------------------------------------------------------------------
 * Module names
 * ------------------------------------------------------------------------------------------------ */

/* Tokens of diffusers / transformers / SGM module paths that contain '_'. kohya writes module paths with
 * every '.' replaced by '_'; we undo that by re-joining these tokens and turning the other '_' into '.'.
 * A token that is a prefix of another (to_k / to_k_ip) comes after it. */
static const char *const k_compound[] = {
    "to_k_ip", "to_v_ip", "time_emb_proj", "conv_norm_out", "final_layer_norm", "add_k_proj", "add_v_proj",
    "add_q_proj", "to_add_out", "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v",
    "to_out", "proj_in", "proj_out", "conv_shortcut", "conv_in", "conv_out", "time_embedding", "linear_1", "linear_2",
    "add_embedding", "input_blocks", "middle_block", "output_blocks", "in_layers", "out_layers", "emb_layers",
    "skip_connection", "time_embed", "label_emb", "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
    "layer_norm1", "layer_norm2", "text_projection", "token_embedding", "position_embedding",
};

/* "down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0" -> "down_blocks.1.attentions.0.
 * transformer_blocks.0.attn2.to_out.0" */
static rb_status undot(const char *s, char *out, size_t cap) {
    size_t k = 0;
    if (!*s)
        return rb_error(RB_ERR_FORMAT, "empty module name");
    while (*s) {
        size_t n = 0;
        for (size_t i = 0; i < sizeof k_compound / sizeof *k_compound; i++) {
            size_t len = strlen(k_compound[i]);
            if (!strncmp(s, k_compound[i], len) && (s[len] == '_' || !s[len])) {
                n = len;
                break;
            }
        }
        if (!n)
            n = strcspn(s, "_");
        if (!n)
            return rb_error(RB_ERR_FORMAT, "empty part in module name");
        if (k + n + 2 > cap)
            return rb_error(RB_ERR_FORMAT, "module name too long");
        if (k)
            out[k++] = '.';
        memcpy(out + k, s, n);
        k += n;
        s += n;
        if (*s == '_')
            s++;
    }
    out[k] = 0;
    return RB_OK;
}

/* SGM (ldm) UNet blocks -> diffusers blocks, for SD1.x and SDXL (layers_per_block 2: three input blocks
 * per level, the third being the downsampler; three output blocks per level, the last one carrying the
 * upsampler as sub-module 1 (no attention) or 2 (with attention)). The same rules as the golden's
 * unet_sdxl/sgm_unet_keymap.json, which tests/test_lora.c checks this table against.
 * kind: LEAF = the module itself, RESNET = a ResBlock (inner names renamed below), TREE = inner names equal. */
enum { LEAF, RESNET, TREE };
typedef struct { const char *sgm, *dif; int kind; } block_rule;

#define DOWN_LEVEL(i, a, b, d)                                                                                   \
    {"input_blocks." #a ".0", "down_blocks." #i ".resnets.0", RESNET},                                          \
    {"input_blocks." #a ".1", "down_blocks." #i ".attentions.0", TREE},                                         \
    {"input_blocks." #b ".0", "down_blocks." #i ".resnets.1", RESNET},                                          \
    {"input_blocks." #b ".1", "down_blocks." #i ".attentions.1", TREE},                                         \
    {"input_blocks." #d ".0.op", "down_blocks." #i ".downsamplers.0.conv", LEAF},
#define UP_LEVEL(i, a, b, c)                                                                                     \
    {"output_blocks." #c ".1.conv", "up_blocks." #i ".upsamplers.0.conv", LEAF},                                \
    {"output_blocks." #c ".2.conv", "up_blocks." #i ".upsamplers.0.conv", LEAF},                                \
    {"output_blocks." #a ".0", "up_blocks." #i ".resnets.0", RESNET},                                           \
    {"output_blocks." #a ".1", "up_blocks." #i ".attentions.0", TREE},                                          \
    {"output_blocks." #b ".0", "up_blocks." #i ".resnets.1", RESNET},                                           \
    {"output_blocks." #b ".1", "up_blocks." #i ".attentions.1", TREE},                                          \
    {"output_blocks." #c ".0", "up_blocks." #i ".resnets.2", RESNET},                                           \
    {"output_blocks." #c ".1", "up_blocks." #i ".attentions.2", TREE},

static const block_rule k_sgm_blocks[] = {
    {"input_blocks.0.0", "conv_in", LEAF},
    DOWN_LEVEL(0, 1, 2, 3) DOWN_LEVEL(1, 4, 5, 6) DOWN_LEVEL(2, 7, 8, 9) DOWN_LEVEL(3, 10, 11, 12)
    {"middle_block.0", "mid_block.resnets.0", RESNET},
    {"middle_block.1", "mid_block.attentions.0", TREE},
    {"middle_block.2", "mid_block.resnets.1", RESNET},
    UP_LEVEL(0, 0, 1, 2) UP_LEVEL(1, 3, 4, 5) UP_LEVEL(2, 6, 7, 8) UP_LEVEL(3, 9, 10, 11)
    {"time_embed.0", "time_embedding.linear_1", LEAF},
    {"time_embed.2", "time_embedding.linear_2", LEAF},
    {"label_emb.0.0", "add_embedding.linear_1", LEAF},
    {"label_emb.0.2", "add_embedding.linear_2", LEAF},
    {"out.0", "conv_norm_out", LEAF},
    {"out.2", "conv_out", LEAF},
};

/* ResBlock inner modules: SGM -> diffusers ResnetBlock2D. */
static const char *const k_sgm_resnet[][2] = {
    {"in_layers.0", "norm1"},  {"in_layers.2", "conv1"},  {"emb_layers.1", "time_emb_proj"},
    {"out_layers.0", "norm2"}, {"out_layers.3", "conv2"}, {"skip_connection", "conv_shortcut"},
};

rb_status rb_lora_sgm_unet_module(const char *sgm, char *out, size_t cap) {
    for (size_t i = 0; i < sizeof k_sgm_blocks / sizeof *k_sgm_blocks; i++) {
        const block_rule *r = &k_sgm_blocks[i];
        size_t len = strlen(r->sgm);
        if (strncmp(sgm, r->sgm, len) || (sgm[len] != '.' && sgm[len]))
            continue;
        const char *rest = sgm[len] ? sgm + len + 1 : "";
        const char *inner = rest;
        if (r->kind == LEAF && *rest)
            continue; /* e.g. output_blocks.2.1.proj_in is an attention, not the upsampler rule */
        if (r->kind == RESNET) {
            inner = NULL;
            for (size_t j = 0; j < sizeof k_sgm_resnet / sizeof *k_sgm_resnet; j++)
                if (!strcmp(rest, k_sgm_resnet[j][0]))
                    inner = k_sgm_resnet[j][1];
            if (!inner)
                return rb_error(RB_ERR_FORMAT, "SGM module %s: unknown ResBlock part '%s'", sgm, rest);
        }
        int n = snprintf(out, cap, "%s%s%s", r->dif, *inner ? "." : "", inner);
        if (n < 0 || (size_t)n >= cap)
            return rb_error(RB_ERR_FORMAT, "SGM module %s: name too long", sgm);
        return RB_OK;
    }
    return rb_error(RB_ERR_FORMAT, "SGM module %s: not in the SD1.x/SDXL UNet block table", sgm);
}

static int starts_with_token(const char *s, const char *tok) {
    size_t n = strlen(tok);
    return !strncmp(s, tok, n) && (s[n] == '.' || !s[n]);
}

/* is_sgm (may be NULL) tells which naming the stem used. */
static rb_status kohya_unet_module(const char *stem, char *out, size_t cap, int *is_sgm) {
    static const char *const sgm_top[] = {"input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb",
                                          "out"};
    static const char *const dif_top[] = {"down_blocks",    "up_blocks",     "mid_block", "conv_in",
                                          "conv_out",       "conv_norm_out", "time_embedding",
                                          "add_embedding",  "encoder_hid_proj"};
    char dotted[512];
    RB_TRY(undot(stem, dotted, sizeof dotted));
    for (size_t i = 0; i < sizeof sgm_top / sizeof *sgm_top; i++)
        if (starts_with_token(dotted, sgm_top[i])) {
            if (is_sgm)
                *is_sgm = 1;
            return rb_lora_sgm_unet_module(dotted, out, cap);
        }
    for (size_t i = 0; i < sizeof dif_top / sizeof *dif_top; i++)
        if (starts_with_token(dotted, dif_top[i])) {
            if (is_sgm)
                *is_sgm = 0;
            if (strlen(dotted) >= cap)
                return rb_error(RB_ERR_FORMAT, "module %s: name too long", dotted);
            strcpy(out, dotted);
            return RB_OK;
        }
    return rb_error(RB_ERR_FORMAT, "kohya module %s: not a UNet module", stem);
}

rb_status rb_lora_kohya_unet_module(const char *stem, char *out, size_t cap) {
    return kohya_unet_module(stem, out, cap, NULL);
}

/* ------------------------------------------------------------------------------------------------
 * Key classification
 * ------------------------------------------------------------------------------------------------ */

enum { ROLE_DOWN, ROLE_UP, ROLE_ALPHA };

typedef struct key_info {
    const char *component;
    char module[512];
    int role, fmt;
} key_info;

static int ends_with(const char *s, size_t n, const char *suf, size_t *stem_len) {
    size_t m = strlen(suf);
    if (n <= m || memcmp(s + n - m, suf, m))
        return 0;
    *stem_len = n - m;
    return 1;
}

/* kohya: lora_unet_<module>.{lora_down.weight, lora_up.weight, alpha}; lora_te[12]_ for the text encoders. */
static int classify_kohya(const char *name, key_info *k) {
    static const struct { const char *prefix, *component; } pre[] = {
        {"lora_unet_", "unet"}, {"lora_te1_", "text_encoder"}, {"lora_te2_", "text_encoder_2"},
        {"lora_te_", "text_encoder"}};
    static const struct { const char *suffix; int role; } suf[] = {
        {".lora_down.weight", ROLE_DOWN}, {".lora_up.weight", ROLE_UP}, {".alpha", ROLE_ALPHA}};
    size_t n = strlen(name), stem_len = 0;
    for (size_t i = 0; i < sizeof pre / sizeof *pre; i++) {
        size_t pl = strlen(pre[i].prefix);
        if (strncmp(name, pre[i].prefix, pl))
            continue;
        for (size_t j = 0; j < sizeof suf / sizeof *suf; j++) {
            if (!ends_with(name, n, suf[j].suffix, &stem_len) || stem_len <= pl || stem_len - pl >= 400)
                continue;
            char stem[400];
            memcpy(stem, name + pl, stem_len - pl);
            stem[stem_len - pl] = 0;
            if (strchr(stem, '.'))
                return 0;
            k->component = pre[i].component;
            k->role = suf[j].role;
            if (!strcmp(k->component, "unet")) {
                int sgm = 0;
                if (kohya_unet_module(stem, k->module, sizeof k->module, &sgm) != RB_OK)
                    return 0;
                k->fmt = sgm ? RB_LORA_FMT_KOHYA_SGM : RB_LORA_FMT_KOHYA;
            } else {
                if (undot(stem, k->module, sizeof k->module) != RB_OK || !starts_with_token(k->module, "text_model"))
                    return 0;
                k->fmt = RB_LORA_FMT_KOHYA;
            }
            return 1;
        }
        return 0;
    }
    return 0;
}

/* PEFT (`[base_model.model.][unet.]<module>.lora_A.weight`), diffusers (`unet.<module>.lora.down.weight`,
 * `.lora_linear_layer.down.weight`), the older attention-processor format (`unet.<attn>.processor.to_q_lora.
 * down.weight`) and `<module>.alpha`. */
static int classify_dotted(const char *name, key_info *k) {
    static const struct { const char *suffix; int role, fmt; } suf[] = {
        {".lora_A.weight", ROLE_DOWN, RB_LORA_FMT_PEFT},
        {".lora_B.weight", ROLE_UP, RB_LORA_FMT_PEFT},
        {".lora.down.weight", ROLE_DOWN, RB_LORA_FMT_DIFFUSERS},
        {".lora.up.weight", ROLE_UP, RB_LORA_FMT_DIFFUSERS},
        {".lora_linear_layer.down.weight", ROLE_DOWN, RB_LORA_FMT_DIFFUSERS},
        {".lora_linear_layer.up.weight", ROLE_UP, RB_LORA_FMT_DIFFUSERS},
        {".down.weight", ROLE_DOWN, RB_LORA_FMT_DIFFUSERS_PROC},
        {".up.weight", ROLE_UP, RB_LORA_FMT_DIFFUSERS_PROC},
        {".alpha", ROLE_ALPHA, 0},
    };
    if (!strncmp(name, "base_model.model.", 17))
        name += 17;
    k->component = "unet";
    if (!strncmp(name, "unet.", 5))
        name += 5;
    else if (!strncmp(name, "text_encoder_2.", 15))
        name += 15, k->component = "text_encoder_2";
    else if (!strncmp(name, "text_encoder.", 13))
        name += 13, k->component = "text_encoder";
    else if (starts_with_token(name, "text_model"))
        k->component = "text_encoder";
    size_t n = strlen(name), stem = 0;
    for (size_t j = 0; j < sizeof suf / sizeof *suf; j++) {
        if (!ends_with(name, n, suf[j].suffix, &stem) || stem >= sizeof k->module)
            continue;
        memcpy(k->module, name, stem);
        k->module[stem] = 0;
        k->role = suf[j].role;
        k->fmt = suf[j].fmt;
        if (k->fmt != RB_LORA_FMT_DIFFUSERS_PROC)
            return 1;
        /* <attn>[.processor].to_q_lora -> <attn>.to_q (UNet) / <attn>.q_proj (text encoder) */
        static const char *const proc[][3] = {{"to_q_lora", "to_q", "q_proj"}, {"to_k_lora", "to_k", "k_proj"},
                                              {"to_v_lora", "to_v", "v_proj"}, {"to_out_lora", "to_out.0", "out_proj"}};
        char *dot = strrchr(k->module, '.');
        if (!dot)
            return 0;
        for (size_t i = 0; i < 4; i++) {
            if (strcmp(dot + 1, proc[i][0]))
                continue;
            *dot = 0;
            size_t ml = strlen(k->module);
            if (ml > 10 && !strcmp(k->module + ml - 10, ".processor"))
                k->module[ml - 10] = 0;
            const char *leaf = proc[i][strcmp(k->component, "unet") ? 2 : 1];
            size_t at = strlen(k->module);
            if (at + strlen(leaf) + 2 > sizeof k->module)
                return 0;
            snprintf(k->module + at, sizeof k->module - at, ".%s", leaf);
            return 1;
        }
        return 0;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * The set
 * ------------------------------------------------------------------------------------------------ */

void rb_lora_init(rb_lora_set *s) { memset(s, 0, sizeof *s); }

void rb_lora_free(rb_lora_set *s) {
    for (int i = 0; i < s->n; i++)
        rb_free(s->pairs[i]);
    rb_free(s->pairs);
    for (int i = 0; i < s->n_unused; i++)
        rb_free(s->unused[i]);
    rb_free(s->unused);
    if (s->index) {
        rb_strmap_free(s->index);
        rb_free(s->index);
    }
    rb_free(s->path);
    memset(s, 0, sizeof *s);
}

static char *dup_str(const char *a, const char *what) {
    size_t n = strlen(a);
    char *p = rb_alloc(n + 1, what);
    if (p)
        memcpy(p, a, n + 1);
    return p;
}

static size_t round64(size_t n) { return (n + 63) & ~(size_t)63; }

/* One block: [pair][down header][up header][down data][up data][module]; data zeroed. */
static rb_lora_pair *new_pair(rb_lora_set *s, const char *component, const char *module, int dn, const int64_t *dshape,
                              int un, const int64_t *ushape) {
    char key[600];
    if ((size_t)snprintf(key, sizeof key, "%s:%s", component, module) >= sizeof key) {
        rb_error(RB_ERR_INVALID, "lora: module name too long: %s", module);
        return NULL;
    }
    if (!s->index) {
        s->index = rb_alloc(sizeof(rb_strmap), "lora index");
        if (!s->index || rb_strmap_init(s->index, 64) != RB_OK) {
            rb_free(s->index);
            s->index = NULL;
            return NULL;
        }
    }
    int32_t dup;
    if (rb_strmap_get(s->index, key, strlen(key), &dup)) {
        rb_error(RB_ERR_FORMAT, "lora: two adapters for %s", key);
        return NULL;
    }
    rb_tensor dh = rb_tensor_wrap(NULL, RB_F32, dn, dshape), uh = rb_tensor_wrap(NULL, RB_F32, un, ushape);
    size_t head = round64(sizeof(rb_lora_pair) + 2 * sizeof(rb_tensor)), dbytes = round64(rb_nbytes(&dh)),
           ubytes = round64(rb_nbytes(&uh)), total;
    if (!rb_add_size(head, dbytes, &total) || !rb_add_size(total, ubytes, &total) ||
        !rb_add_size(total, strlen(module) + 1, &total)) {
        rb_error(RB_ERR_INVALID, "lora %s: size overflow", module);
        return NULL;
    }
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 64;
        rb_lora_pair **p = rb_alloc((size_t)cap * sizeof *p, "lora pairs");
        if (!p)
            return NULL;
        if (s->n)
            memcpy(p, s->pairs, (size_t)s->n * sizeof *p);
        rb_free(s->pairs);
        s->pairs = p, s->cap = cap;
    }
    char *blk = rb_calloc(total, "lora pair");
    if (!blk)
        return NULL;
    rb_lora_pair *pr = (rb_lora_pair *)blk;
    rb_tensor *dt = (rb_tensor *)(blk + sizeof *pr), *ut = dt + 1;
    *dt = dh, *ut = uh;
    dt->data = blk + head;
    ut->data = blk + head + dbytes;
    char *mod = blk + head + dbytes + ubytes;
    strcpy(mod, module);
    pr->component = !strcmp(component, "text_encoder_2") ? "text_encoder_2"
                    : !strcmp(component, "text_encoder") ? "text_encoder"
                                                         : "unet";
    pr->module = mod;
    pr->down = dt, pr->up = ut;
    pr->rank = (int)dshape[0];
    pr->alpha = (float)dshape[0];
    pr->scale = 1.0f;
    if (rb_strmap_put(s->index, key, strlen(key), s->n) != RB_OK) {
        rb_free(blk);
        return NULL;
    }
    s->pairs[s->n++] = pr;
    return pr;
}

rb_lora_pair *rb_lora_add(rb_lora_set *s, const char *component, const char *module, int rank, int64_t in_features,
                          int64_t out_features, float alpha) {
    if (rank <= 0 || rank > 65536 || in_features <= 0 || out_features <= 0 || in_features > (1 << 30) ||
        out_features > (1 << 30) || !(alpha == alpha)) {
        rb_error(RB_ERR_INVALID, "lora_add %s: rank %d, in %lld, out %lld, alpha %g", module, rank,
                 (long long)in_features, (long long)out_features, alpha);
        return NULL;
    }
    int64_t ds[2] = {rank, in_features}, us[2] = {out_features, rank};
    rb_lora_pair *p = new_pair(s, component ? component : "unet", module, 2, ds, 2, us);
    if (p)
        p->alpha = alpha;
    return p;
}

const rb_lora_pair *rb_lora_find_in(const rb_lora_set *s, const char *component, const char *module_path) {
    char key[600];
    int32_t i;
    if (!s || !s->index || (size_t)snprintf(key, sizeof key, "%s:%s", component, module_path) >= sizeof key)
        return NULL;
    return rb_strmap_get(s->index, key, strlen(key), &i) ? s->pairs[i] : NULL;
}

const rb_lora_pair *rb_lora_find(const rb_lora_set *s, const char *module_path) {
    return rb_lora_find_in(s, "unet", module_path);
}

void rb_lora_set_scale(rb_lora_set *s, float scale) {
    for (int i = 0; i < s->n; i++)
        s->pairs[i]->scale = scale;
}

/* ------------------------------------------------------------------------------------------------
 * Loading
 * ------------------------------------------------------------------------------------------------ */

typedef struct group {
    const char *component;
    char *module;
    int ent[3]; /* entry index per role, -1 if absent */
    int fmt;
} group;

/* lora_alpha of `component` from diffusers' `lora_adapter_metadata` (JSON such as {"unet.lora_alpha": 8,
 * "unet.r": 4} for pipelines, or {"lora_alpha": 8, ...} for a single model), or 0 when absent. Only the scalar
 * is read; per-module alpha_pattern entries are not supported (docs/lora.md). */
static float metadata_alpha(const rb_safetensors *f, const char *component) {
    const char *m = rb_st_meta(f, "lora_adapter_metadata");
    json_t *root = m ? json_loads(m, 0, NULL) : NULL;
    if (!root)
        return 0;
    char key[64];
    snprintf(key, sizeof key, "%s.lora_alpha", component);
    json_t *v = json_object_get(root, key);
    if (!v)
        v = json_object_get(root, "lora_alpha");
    double a = json_is_number(v) ? json_number_value(v) : 0;
    json_decref(root);
    return isfinite(a) && a > 0 ? (float)a : 0;
}

static rb_status add_unused(rb_lora_set *s, const char *name) {
    if (s->n_unused % 64 == 0) {
        char **u = rb_alloc((size_t)(s->n_unused + 64) * sizeof *u, "lora unused keys");
        if (!u)
            return RB_ERR_OOM;
        if (s->n_unused)
            memcpy(u, s->unused, (size_t)s->n_unused * sizeof *u);
        rb_free(s->unused);
        s->unused = u;
    }
    if (!(s->unused[s->n_unused] = dup_str(name, "lora unused key")))
        return RB_ERR_OOM;
    s->n_unused++;
    return RB_OK;
}

static rb_status check_pair_shapes(const char *path, const char *dname, const rb_tensor *d, const rb_tensor *u) {
    char a[64], b[64];
    int ok = (d->ndim == 2 || d->ndim == 4) && u->ndim == d->ndim && rb_dtypes[d->dtype].is_float &&
             rb_dtypes[u->dtype].is_float && d->shape[0] > 0 && d->shape[0] <= 65536 && u->shape[1] == d->shape[0];
    for (int i = 0; ok && i < d->ndim; i++)
        ok = d->shape[i] > 0 && u->shape[i] > 0;
    if (ok && u->ndim == 4)
        ok = u->shape[2] == 1 && u->shape[3] == 1;
    if (!ok)
        return rb_error(RB_ERR_FORMAT, "%s: %s: down %s %s and up %s %s do not form a LoRA pair", path, dname,
                        rb_dtype_name(d->dtype), rb_shape_str(d, a, sizeof a), rb_dtype_name(u->dtype),
                        rb_shape_str(u, b, sizeof b));
    return RB_OK;
}

static rb_status read_alpha(const char *path, const char *name, const rb_tensor *t, float *alpha) {
    if (rb_numel(t) != 1 || t->dtype == RB_BOOL)
        return rb_error(RB_ERR_FORMAT, "%s: %s: alpha must be one number", path, name);
    double v = rb_tensor_get(t, 0);
    if (!isfinite(v))
        return rb_error(RB_ERR_FORMAT, "%s: %s: alpha %g", path, name, v);
    *alpha = (float)v;
    return RB_OK;
}

static rb_status load_groups(rb_lora_set *s, const rb_safetensors *f, const rb_lora_options *o, group *g,
                             int *n_groups, unsigned char *used) {
    rb_strmap map;
    RB_TRY(rb_strmap_init(&map, (uint32_t)f->n + 1));
    rb_status st = RB_OK;
    key_info k;
    int ng = 0;
    for (int i = 0; i < f->n && st == RB_OK; i++) {
        const char *name = f->entries[i].name;
        if (!classify_kohya(name, &k) && !classify_dotted(name, &k))
            continue; /* reported as unused */
        char key[600];
        snprintf(key, sizeof key, "%s:%s", k.component, k.module);
        int32_t gi;
        if (!rb_strmap_get(&map, key, strlen(key), &gi)) {
            gi = ng++;
            g[gi].component = k.component;
            g[gi].ent[0] = g[gi].ent[1] = g[gi].ent[2] = -1;
            g[gi].fmt = 0;
            if (!(g[gi].module = dup_str(k.module, "lora module")) ||
                (st = rb_strmap_put(&map, key, strlen(key), gi)) != RB_OK) {
                st = RB_ERR_OOM;
                break;
            }
        }
        if (g[gi].ent[k.role] >= 0) {
            fprintf(stderr, "relbooth: %s: %s and %s name the same LoRA tensor of %s; keeping the first\n", s->path,
                    f->entries[g[gi].ent[k.role]].name, name, key);
            continue;
        }
        g[gi].ent[k.role] = i;
        g[gi].fmt |= k.fmt;
    }
    rb_strmap_free(&map);
    *n_groups = ng;
    if (st != RB_OK)
        return st;

    static const char *const comps[3] = {"unet", "text_encoder", "text_encoder_2"};
    float meta_alpha[3];
    for (int i = 0; i < 3; i++)
        meta_alpha[i] = o->default_alpha > 0 ? o->default_alpha : metadata_alpha(f, comps[i]);
    for (int gi = 0; gi < ng; gi++) {
        group *gr = &g[gi];
        if (gr->ent[ROLE_DOWN] < 0 || gr->ent[ROLE_UP] < 0)
            continue; /* incomplete: its keys stay unused */
        const rb_st_entry *de = &f->entries[gr->ent[ROLE_DOWN]], *ue = &f->entries[gr->ent[ROLE_UP]];
        RB_TRY(check_pair_shapes(s->path, de->name, &de->t, &ue->t));
        rb_lora_pair *p = new_pair(s, gr->component, gr->module, de->t.ndim, de->t.shape, ue->t.ndim, ue->t.shape);
        if (!p)
            return rb_error_prefix(RB_ERR_OOM, "%s", s->path);
        RB_TRY(rb_tensor_copy(p->down, &de->t));
        RB_TRY(rb_tensor_copy(p->up, &ue->t));
        /* alpha: a stored .alpha (kohya; diffusers after kohya conversion) wins; kohya without one means
         * alpha = rank (both sd-scripts and diffusers); PEFT/diffusers take the adapter's lora_alpha when
         * known, else rank (diffusers builds LoraConfig(lora_alpha=r) when network_alphas is None). */
        p->alpha = (float)p->rank;
        if (gr->ent[ROLE_ALPHA] >= 0) {
            const rb_st_entry *ae = &f->entries[gr->ent[ROLE_ALPHA]];
            RB_TRY(read_alpha(s->path, ae->name, &ae->t, &p->alpha));
            used[gr->ent[ROLE_ALPHA]] = 1;
        } else if (!(gr->fmt & (RB_LORA_FMT_KOHYA | RB_LORA_FMT_KOHYA_SGM))) {
            int ci = !strcmp(p->component, "text_encoder") ? 1 : !strcmp(p->component, "text_encoder_2") ? 2 : 0;
            if (meta_alpha[ci] > 0)
                p->alpha = meta_alpha[ci];
        }
        p->scale = o->scale;
        used[gr->ent[ROLE_DOWN]] = used[gr->ent[ROLE_UP]] = 1;
        s->formats |= gr->fmt;
    }
    return RB_OK;
}

rb_status rb_lora_load_st(rb_lora_set *s, const rb_safetensors *f, const rb_lora_options *opt) {
    rb_lora_options o = opt ? *opt : rb_lora_defaults();
    rb_lora_init(s);
    if (!(s->path = dup_str(f->path ? f->path : "(memory)", "lora path")))
        return RB_ERR_OOM;
    group *g = rb_calloc((size_t)(f->n + 1) * sizeof *g, "lora groups");
    unsigned char *used = rb_calloc((size_t)f->n + 1, "lora used flags");
    int ng = 0;
    rb_status st = g && used ? load_groups(s, f, &o, g, &ng, used) : RB_ERR_OOM;
    for (int i = 0; i < f->n && st == RB_OK; i++)
        if (!used[i])
            st = add_unused(s, f->entries[i].name);
    for (int i = 0; i < ng; i++)
        rb_free(g[i].module);
    rb_free(g);
    rb_free(used);
    if (st != RB_OK) {
        rb_lora_free(s);
        return st;
    }
    if (o.log_unused && s->n_unused) {
        fprintf(stderr, "relbooth: %s: %d LoRA pairs, %d keys not used:\n", f->path ? f->path : "(memory)", s->n,
                s->n_unused);
        for (int i = 0; i < s->n_unused && i < 20; i++)
            fprintf(stderr, "  unused: %s\n", s->unused[i]);
        if (s->n_unused > 20)
            fprintf(stderr, "  ... and %d more\n", s->n_unused - 20);
    }
    return RB_OK;
}

rb_status rb_lora_load(rb_lora_set *s, const char *path, const rb_lora_options *opt) {
    rb_safetensors f;
    rb_lora_init(s);
    RB_TRY(rb_st_open(&f, path));
    rb_status st = rb_lora_load_st(s, &f, opt);
    rb_st_close(&f);
    return st;
}

rb_status rb_lora_save(const rb_lora_set *s, const char *path) {
    int n = 0, cap = 3 * s->n + 1;
    const char **names = rb_calloc((size_t)cap * sizeof *names, "lora save names");
    const rb_tensor **ts = rb_calloc((size_t)cap * sizeof *ts, "lora save tensors");
    rb_tensor *alphas = rb_calloc((size_t)(s->n + 1) * sizeof *alphas, "lora save alphas");
    float *avals = rb_calloc((size_t)(s->n + 1) * sizeof *avals, "lora save alpha values");
    rb_status st = names && ts && alphas && avals ? RB_OK : RB_ERR_OOM;
    for (int i = 0; i < s->n && st == RB_OK; i++) {
        const rb_lora_pair *p = s->pairs[i];
        static const char *const suf[3] = {"lora.down.weight", "lora.up.weight", "alpha"};
        int parts = p->alpha != (float)p->rank ? 3 : 2;
        avals[i] = p->alpha;
        alphas[i] = rb_tensor_wrap(&avals[i], RB_F32, 0, NULL);
        for (int j = 0; j < parts && st == RB_OK; j++) {
            size_t len = strlen(p->component) + strlen(p->module) + strlen(suf[j]) + 3;
            char *nm = rb_alloc(len, "lora save name");
            if (!nm) {
                st = RB_ERR_OOM;
                break;
            }
            snprintf(nm, len, "%s.%s.%s", p->component, p->module, suf[j]);
            names[n] = nm;
            ts[n++] = j == 0 ? p->down : j == 1 ? p->up : &alphas[i];
        }
    }
    if (st == RB_OK)
        st = rb_st_write(path, n, names, ts, 0, NULL, NULL);
    for (int i = 0; names && i < n; i++)
        rb_free((void *)names[i]);
    rb_free(names);
    rb_free(ts);
    rb_free(alphas);
    rb_free(avals);
    return st;
}

/* ------------------------------------------------------------------------------------------------
 * Applying
 * ------------------------------------------------------------------------------------------------ */

rb_status rb_lora_merge(rb_tensor *out, const rb_tensor *W, const rb_lora_pair *pairs, int n_pairs) {
    char a[64], b[64];
    if (!out || !W || (n_pairs && !pairs) || out->dtype != RB_F32 || !rb_is_contiguous(out) ||
        !rb_same_shape(out, W) || (W->ndim != 2 && W->ndim != 4) || !rb_dtypes[W->dtype].is_float)
        return rb_error(RB_ERR_INVALID, "lora_merge: out %s %s, weight %s %s (want f32 contiguous out of the weight's shape)",
                        out ? rb_dtype_name(out->dtype) : "NULL", out ? rb_shape_str(out, a, sizeof a) : "",
                        W ? rb_dtype_name(W->dtype) : "NULL", W ? rb_shape_str(W, b, sizeof b) : "");
    int64_t rows = W->shape[0], cols = rb_numel(W) / (rows ? rows : 1);
    for (int i = 0; i < n_pairs; i++) {
        const rb_lora_pair *p = &pairs[i];
        int64_t r = p->rank;
        if (!p->down || !p->up || p->down->dtype != RB_F32 || p->up->dtype != RB_F32 || !rb_is_contiguous(p->down) ||
            !rb_is_contiguous(p->up) || p->down->shape[0] != r || p->up->shape[0] != rows || p->up->shape[1] != r ||
            rb_numel(p->down) != r * cols || rb_numel(p->up) != rows * r)
            return rb_error(RB_ERR_INVALID, "lora_merge %s: down %s / up %s do not fit weight %s", p->module,
                            p->down ? rb_shape_str(p->down, a, sizeof a) : "NULL",
                            p->up ? rb_shape_str(p->up, b, sizeof b) : "NULL", rb_shape_str(W, b, sizeof b));
    }
    if (out->data != W->data)
        RB_TRY(rb_tensor_copy(out, W));
    else if (W->dtype != RB_F32 || !rb_is_contiguous(W))
        return rb_error(RB_ERR_INVALID, "lora_merge: in-place merge needs an f32 contiguous weight");
    float *w = out->data;
    for (int i = 0; i < n_pairs; i++) {
        const rb_lora_pair *p = &pairs[i];
        const float *up = p->up->data, *down = p->down->data;
        const int64_t r = p->rank;
        const float m = rb_lora_multiplier(p);
        /* W[o, j] += m * (sum_k up[o, k] down[k, j]): the product first, then scaled, as PEFT's merge does */
#pragma omp parallel for schedule(static)
        for (int64_t o = 0; o < rows; o++) {
            float *wr = w + o * cols;
            const float *ur = up + o * r;
            for (int64_t j = 0; j < cols; j++) {
                float acc = 0;
                for (int64_t k = 0; k < r; k++)
                    acc += ur[k] * down[k * cols + j];
                wr[j] += m * acc;
            }
        }
    }
    return RB_OK;
}

rb_tensor *rb_lora_linear(rb_ctx *c, rb_tensor *x, rb_tensor *W, rb_tensor *b, const rb_lora_pair *pairs, int n_pairs) {
    if (c->status != RB_OK || !x || !W)
        return rb_ctx_fail(c, c->status != RB_OK ? c->status : RB_ERR_INVALID);
    if (n_pairs < 0 || (n_pairs && !pairs))
        return rb_ctx_error(c, RB_ERR_INVALID, "lora_linear: %d pairs, pairs %p", n_pairs, (const void *)pairs);
    int64_t in = x->ndim ? x->shape[x->ndim - 1] : 0;
    for (int i = 0; i < n_pairs; i++) {
        const rb_lora_pair *p = &pairs[i];
        if (!p->down || !p->up || p->down->ndim != 2 || p->up->ndim != 2 || p->down->shape[1] != in ||
            W->ndim != 2 || p->up->shape[0] != W->shape[0] || p->up->shape[1] != p->down->shape[0] || p->rank <= 0)
            return rb_ctx_error(c, RB_ERR_INVALID, "lora_linear %s: LoRA of rank %d does not fit x [..., %lld] and weight [%lld, ...]",
                                p->module ? p->module : "?", p->rank, (long long)in, (long long)W->shape[0]);
    }
    rb_tensor *y = rb_linear(c, x, W, b);
    for (int i = 0; i < n_pairs && y; i++) {
        /* the multiplier is applied to the rank-r hidden (fewer elements than the output) */
        rb_tensor *h = rb_scale(c, rb_linear(c, x, pairs[i].down, NULL), rb_lora_multiplier(&pairs[i]));
        y = rb_add(c, y, rb_linear(c, h, pairs[i].up, NULL));
    }
    return y;
}
