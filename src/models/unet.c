/* UNet2DConditionModel: config, module structure, parameter list and loading (the forward pass is
 * in unet_blocks.c, the single-file key tables in unet_keys.c). The structure follows diffusers'
 * UNet2DConditionModel.__init__: channel counts per block, reversed lists for the up path, and the
 * attention processor order (down, up, mid). */
#include "unet.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/mem.h"
#include "io/json.h"

/* ---- config.json ---- */

/* An int or a list of n ints (diffusers accepts both for per-block settings). */
static int int_or_list(json_t *v, int n, int *out) {
    if (json_is_integer(v)) {
        for (int i = 0; i < n; i++)
            out[i] = (int)json_integer_value(v);
        return 1;
    }
    if (!json_is_array(v) || (int)json_array_size(v) != n)
        return 0;
    for (int i = 0; i < n; i++) {
        json_t *e = json_array_get(v, (size_t)i);
        if (!json_is_integer(e))
            return 0;
        out[i] = (int)json_integer_value(e);
    }
    return 1;
}

static int get_int(json_t *j, const char *key, int def) {
    json_t *v = json_object_get(j, key);
    return json_is_integer(v) ? (int)json_integer_value(v) : def;
}

static double get_num(json_t *j, const char *key, double def) {
    json_t *v = json_object_get(j, key);
    return json_is_number(v) ? json_number_value(v) : def;
}

/* The key must be absent, null, or equal to the given default (string / number / bool). */
static rb_status require_default(json_t *j, const char *path, const char *key, const char *str, double num,
                                 int is_bool) {
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v))
        return RB_OK;
    int ok = str ? json_is_string(v) && !strcmp(json_string_value(v), str)
                 : is_bool ? json_is_boolean(v) && json_is_true(v) == (num != 0)
                           : json_is_number(v) && json_number_value(v) == num;
    return ok ? RB_OK : rb_error(RB_ERR_UNSUPPORTED, "%s: '%s' has a value this UNet does not support", path, key);
}

static rb_status parse_config(rb_unet_config *c, json_t *j, const char *path) {
    memset(c, 0, sizeof *c);
    json_t *boc = json_object_get(j, "block_out_channels");
    json_t *down = json_object_get(j, "down_block_types"), *up = json_object_get(j, "up_block_types");
    int n = json_is_array(boc) ? (int)json_array_size(boc) : 0;
    if (n < 1 || n > RB_UNET_MAX_BLOCKS || !int_or_list(boc, n, c->block_out))
        return rb_error(RB_ERR_FORMAT, "%s: 'block_out_channels' must be a list of 1..%d ints", path,
                        RB_UNET_MAX_BLOCKS);
    c->n_blocks = n;
    if (!json_is_array(down) || !json_is_array(up) || (int)json_array_size(down) != n ||
        (int)json_array_size(up) != n)
        return rb_error(RB_ERR_FORMAT, "%s: 'down_block_types' / 'up_block_types' must list %d blocks", path, n);
    for (int i = 0; i < n; i++) {
        const char *d = json_string_value(json_array_get(down, (size_t)i));
        const char *u = json_string_value(json_array_get(up, (size_t)i));
        if (!d || (strcmp(d, "DownBlock2D") && strcmp(d, "CrossAttnDownBlock2D")))
            return rb_error(RB_ERR_UNSUPPORTED, "%s: down block type '%s' is not supported", path, d ? d : "?");
        if (!u || (strcmp(u, "UpBlock2D") && strcmp(u, "CrossAttnUpBlock2D")))
            return rb_error(RB_ERR_UNSUPPORTED, "%s: up block type '%s' is not supported", path, u ? u : "?");
        c->down_attn[i] = !strcmp(d, "CrossAttnDownBlock2D");
        c->up_attn[i] = !strcmp(u, "CrossAttnUpBlock2D");
    }
    const char *mid = json_string_value(json_object_get(j, "mid_block_type"));
    if (mid && strcmp(mid, "UNetMidBlock2DCrossAttn"))
        return rb_error(RB_ERR_UNSUPPORTED, "%s: mid_block_type '%s' is not supported", path, mid);
    c->mid_attn = 1;
    c->in_channels = get_int(j, "in_channels", 4);
    c->out_channels = get_int(j, "out_channels", 4);
    c->layers_per_block = get_int(j, "layers_per_block", 2);
    if (c->layers_per_block < 1 || c->layers_per_block + 1 > RB_UNET_MAX_LAYERS)
        return rb_error(RB_ERR_UNSUPPORTED, "%s: 'layers_per_block' must be an int in 1..%d", path,
                        RB_UNET_MAX_LAYERS - 1);
    json_t *tl = json_object_get(j, "transformer_layers_per_block");
    if (!tl)
        for (int i = 0; i < n; i++)
            c->transformer_layers[i] = 1;
    else if (!int_or_list(tl, n, c->transformer_layers))
        return rb_error(RB_ERR_UNSUPPORTED, "%s: 'transformer_layers_per_block' must be an int or %d ints", path, n);
    /* diffusers: num_attention_heads = num_attention_heads or attention_head_dim (the historical
     * misnomer: SD 1.x/SDXL configs put the number of heads into attention_head_dim) */
    json_t *heads = json_object_get(j, "num_attention_heads");
    if (!heads || json_is_null(heads))
        heads = json_object_get(j, "attention_head_dim");
    if (!heads || json_is_null(heads)) {
        for (int i = 0; i < n; i++)
            c->heads[i] = 8;
    } else if (!int_or_list(heads, n, c->heads)) {
        return rb_error(RB_ERR_UNSUPPORTED, "%s: 'attention_head_dim' must be an int or %d ints", path, n);
    }
    json_t *cad = json_object_get(j, "cross_attention_dim");
    if (!json_is_integer(cad))
        return rb_error(RB_ERR_UNSUPPORTED, "%s: 'cross_attention_dim' must be one int", path);
    c->cross_attention_dim = (int)json_integer_value(cad);
    c->use_linear_projection = json_is_true(json_object_get(j, "use_linear_projection"));
    c->norm_groups = get_int(j, "norm_num_groups", 32);
    c->norm_eps = (float)get_num(j, "norm_eps", 1e-5);
    json_t *flip = json_object_get(j, "flip_sin_to_cos");
    c->flip_sin_to_cos = flip ? json_is_true(flip) : 1;
    c->freq_shift = (float)get_num(j, "freq_shift", 0);
    const char *add = json_string_value(json_object_get(j, "addition_embed_type"));
    if (add && strcmp(add, "text_time"))
        return rb_error(RB_ERR_UNSUPPORTED, "%s: addition_embed_type '%s' is not supported", path, add);
    c->text_time = add != NULL;
    if (c->text_time) {
        c->addition_time_embed_dim = get_int(j, "addition_time_embed_dim", 0);
        c->add_embed_in = get_int(j, "projection_class_embeddings_input_dim", 0);
        if (c->addition_time_embed_dim < 1 || c->add_embed_in <= 6 * c->addition_time_embed_dim)
            return rb_error(RB_ERR_FORMAT,
                            "%s: text_time needs addition_time_embed_dim >= 1 and "
                            "projection_class_embeddings_input_dim > 6 * addition_time_embed_dim",
                            path);
    }
    /* variants whose math we do not implement must be at their defaults */
    static const struct {
        const char *key, *str;
        double num;
        int is_bool;
    } defaults[] = {
        {"act_fn", "silu", 0, 0},          {"time_embedding_type", "positional", 0, 0},
        {"resnet_time_scale_shift", "default", 0, 0},  {"attention_type", "default", 0, 0},
        {"class_embed_type", "", 0, 0},    {"encoder_hid_dim_type", "", 0, 0},
        {"time_embedding_act_fn", "", 0, 0}, {"timestep_post_act", "", 0, 0},
        {"time_cond_proj_dim", NULL, -1, 0}, {"time_embedding_dim", NULL, -1, 0},
        {"num_class_embeds", NULL, -1, 0}, {"conv_in_kernel", NULL, 3, 0},
        {"conv_out_kernel", NULL, 3, 0},   {"downsample_padding", NULL, 1, 0},
        {"mid_block_scale_factor", NULL, 1, 0}, {"resnet_out_scale_factor", NULL, 1, 0},
        {"only_cross_attention", NULL, 0, 1}, {"dual_cross_attention", NULL, 0, 1},
        {"center_input_sample", NULL, 0, 1}, {"resnet_skip_time_act", NULL, 0, 1},
        {"class_embeddings_concat", NULL, 0, 1}, {"reverse_transformer_layers_per_block", NULL, -1, 0},
        {"mid_block_only_cross_attention", NULL, 0, 1},
    };
    for (size_t i = 0; i < sizeof defaults / sizeof *defaults; i++)
        RB_TRY(require_default(j, path, defaults[i].key, defaults[i].str, defaults[i].num, defaults[i].is_bool));
    /* upcast_attention only changes fp16 runs (scores in f32): we always compute scores in f32 */
    c->time_embed_dim = 4 * c->block_out[0];
    return rb_unet_config_check(c, path);
}

rb_status rb_unet_config_check(const rb_unet_config *c, const char *path) {
    if (c->n_blocks < 1 || c->n_blocks > RB_UNET_MAX_BLOCKS || c->layers_per_block < 1 ||
        c->layers_per_block + 1 > RB_UNET_MAX_LAYERS)
        return rb_error(RB_ERR_UNSUPPORTED, "%s: %d blocks of %d layers are not supported", path, c->n_blocks,
                        c->layers_per_block);
    for (int i = 0; i < c->n_blocks; i++) {
        int ch = c->block_out[i];
        if (ch < 1 || c->norm_groups < 1 || ch % c->norm_groups || c->heads[i] < 1 || ch % c->heads[i] ||
            c->transformer_layers[i] < 1 || c->transformer_layers[i] > 64)
            return rb_error(RB_ERR_FORMAT, "%s: block %d: %d channels do not fit %d groups / %d heads / %d layers",
                            path, i, ch, c->norm_groups, c->heads[i], c->transformer_layers[i]);
    }
    if (c->in_channels < 1 || c->out_channels < 1 || c->cross_attention_dim < 1 || c->block_out[0] % 2 ||
        c->time_embed_dim != 4 * c->block_out[0])
        return rb_error(RB_ERR_FORMAT, "%s: invalid in/out/cross_attention channels", path);
    if (c->text_time && (c->addition_time_embed_dim < 1 || c->add_embed_in <= 6 * c->addition_time_embed_dim))
        return rb_error(RB_ERR_FORMAT,
                        "%s: text_time needs addition_time_embed_dim >= 1 and "
                        "projection_class_embeddings_input_dim > 6 * addition_time_embed_dim",
                        path);
    return RB_OK;
}

rb_status rb_unet_config_load(rb_unet_config *cfg, const char *path) {
    json_t *j;
    RB_TRY(rb_json_load_object(path, &j));
    rb_status s = parse_config(cfg, j, path);
    json_decref(j);
    return s;
}

/* ---- module structure ---- */

static rb_status init_transformer(rb_unet *m, rb_unet_transformer *t, const char *path, int ch, int heads,
                                  int depth) {
    t->channels = ch;
    t->heads = heads;
    t->depth = depth;
    t->blocks = rb_calloc((size_t)depth * sizeof *t->blocks, "UNet transformer blocks");
    if (!t->blocks)
        return RB_ERR_OOM;
    for (int k = 0; k < depth; k++) {
        for (int a = 0; a < 2; a++) {
            rb_unet_attn *at = a ? &t->blocks[k].attn2 : &t->blocks[k].attn1;
            at->cross = a;
            at->heads = heads;
            at->dim = ch;
            at->context_dim = a ? m->cfg.cross_attention_dim : ch;
            snprintf(at->name, sizeof at->name, "%s.transformer_blocks.%d.attn%d", path, k, a + 1);
        }
    }
    return RB_OK;
}

/* Appends a block's attention modules to the processor list (attn1 before attn2 per transformer block). */
static void list_attn(rb_unet *m, rb_unet_block *b) {
    for (int j = 0; b->has_attn && j < b->n_layers; j++)
        for (int k = 0; k < b->attns[j].depth; k++)
            for (int a = 0; a < 2; a++) {
                rb_unet_attn *at = a ? &b->attns[j].blocks[k].attn2 : &b->attns[j].blocks[k].attn1;
                if (m->attn)
                    m->attn[m->n_attn] = at;
                at->index = m->n_attn++;
            }
}

rb_status rb_unet_init(rb_unet *m, const rb_unet_config *cfg) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    const rb_unet_config *c = &m->cfg;
    const int n = c->n_blocks, L = c->layers_per_block;
    char path[64];
    rb_status s = RB_OK;
    for (int i = 0; i < n && s == RB_OK; i++) { /* down: resnets j take the previous block's width first */
        rb_unet_block *b = &m->down[i];
        int cin = i ? c->block_out[i - 1] : c->block_out[0], cout = c->block_out[i];
        b->n_layers = L;
        b->has_attn = c->down_attn[i];
        b->channels = cout;
        for (int j = 0; j < L && s == RB_OK; j++) {
            b->resnets[j].cin = j ? cout : cin;
            b->resnets[j].cout = cout;
            snprintf(path, sizeof path, "down_blocks.%d.attentions.%d", i, j);
            if (b->has_attn)
                s = init_transformer(m, &b->attns[j], path, cout, c->heads[i], c->transformer_layers[i]);
        }
    }
    rb_unet_block *mb = &m->mid; /* mid: resnet, transformer, resnet at the deepest width */
    int top = c->block_out[n - 1];
    mb->n_layers = 1;
    mb->has_attn = 1;
    mb->channels = top;
    mb->resnets[0].cin = mb->resnets[0].cout = mb->resnets[1].cin = mb->resnets[1].cout = top;
    if (s == RB_OK)
        s = init_transformer(m, &mb->attns[0], "mid_block.attentions.0", top, c->heads[n - 1],
                             c->transformer_layers[n - 1]);
    int prev = top;
    for (int i = 0; i < n && s == RB_OK; i++) { /* up: reversed widths; resnet j eats a skip connection */
        rb_unet_block *b = &m->up[i];
        int r = n - 1 - i, cout = c->block_out[r], cskip_last = c->block_out[r > 0 ? r - 1 : 0];
        b->n_layers = L + 1;
        b->has_attn = c->up_attn[i];
        b->channels = cout;
        for (int j = 0; j <= L && s == RB_OK; j++) {
            b->resnets[j].cin = (j ? cout : prev) + (j == L ? cskip_last : cout);
            b->resnets[j].cout = cout;
            snprintf(path, sizeof path, "up_blocks.%d.attentions.%d", i, j);
            if (b->has_attn)
                s = init_transformer(m, &b->attns[j], path, cout, c->heads[r], c->transformer_layers[r]);
        }
        prev = cout;
    }
    if (s != RB_OK) {
        rb_unet_free(m);
        return s;
    }
    /* processor order = diffusers' attn_processors: down_blocks, up_blocks, mid_block */
    for (int pass = 0; pass < 2; pass++) {
        m->n_attn = 0;
        for (int i = 0; i < n; i++)
            list_attn(m, &m->down[i]);
        for (int i = 0; i < n; i++)
            list_attn(m, &m->up[i]);
        list_attn(m, &m->mid);
        if (pass == 0 && !(m->attn = rb_calloc((size_t)m->n_attn * sizeof *m->attn + 1, "UNet attention list"))) {
            rb_unet_free(m);
            return RB_ERR_OOM;
        }
    }
    return RB_OK;
}

static void free_block(rb_unet_block *b) {
    for (int j = 0; j < RB_UNET_MAX_LAYERS; j++)
        rb_free(b->attns[j].blocks);
}

void rb_unet_free(rb_unet *m) {
    for (int i = 0; i < RB_UNET_MAX_BLOCKS; i++) {
        free_block(&m->down[i]);
        free_block(&m->up[i]);
    }
    free_block(&m->mid);
    rb_free(m->attn);
    rb_weights_close(&m->w);
    memset(m, 0, sizeof *m);
}

/* ---- run-time LoRA ---- */

static const char *const proj_names[4] = {"to_q", "to_k", "to_v", "to_out.0"};

rb_status rb_unet_attach_lora(rb_unet *m, const rb_lora_set *set) {
    int attached = 0;
    for (int i = 0; i < m->n_attn; i++) {
        rb_unet_attn *a = m->attn[i];
        for (int p = 0; p < 4; p++) {
            char path[160];
            snprintf(path, sizeof path, "%s.%s", a->name, proj_names[p]);
            const rb_lora_pair *pair = rb_lora_find_in(set, "unet", path);
            if (!pair)
                continue;
            if (a->n_lora[p] == RB_UNET_MAX_LORA)
                return rb_error(RB_ERR_UNSUPPORTED, "%s: more than %d LoRAs on %s", set->path ? set->path : "LoRA",
                                RB_UNET_MAX_LORA, path);
            int64_t in = p == RB_UNET_K || p == RB_UNET_V ? a->context_dim : a->dim;
            if (pair->down->ndim != 2 || pair->down->shape[1] != in || pair->up->shape[0] != a->dim)
                return rb_error(RB_ERR_FORMAT, "%s: LoRA for %s has shapes that do not fit the UNet (%lld -> %lld)",
                                set->path ? set->path : "LoRA", path, (long long)pair->down->shape[1],
                                (long long)pair->up->shape[0]);
            a->lora[p][a->n_lora[p]++] = pair;
            attached++;
        }
    }
    for (int i = 0; i < set->n; i++) { /* UNet pairs that no attention projection took */
        const rb_lora_pair *pair = set->pairs[i];
        if (strcmp(pair->component, "unet"))
            continue;
        int found = 0;
        for (int k = 0; k < m->n_attn && !found; k++)
            for (int p = 0; p < 4 && !found; p++)
                for (int j = 0; j < m->attn[k]->n_lora[p]; j++)
                    found |= m->attn[k]->lora[p][j] == pair;
        if (!found)
            return rb_error(RB_ERR_UNSUPPORTED, "%s: LoRA module unet.%s is not an attention projection of this UNet "
                            "(run-time LoRA covers to_q/to_k/to_v/to_out.0)", set->path ? set->path : "LoRA", pair->module);
    }
    (void)attached;
    return RB_OK;
}

void rb_unet_detach_lora(rb_unet *m) {
    for (int i = 0; i < m->n_attn; i++)
        memset(m->attn[i]->n_lora, 0, sizeof m->attn[i]->n_lora);
}

/* ---- parameter list ---- */

typedef struct walker {
    void (*fn)(void *user, const rb_unet_param *p);
    void *user;
    char name[192];
} walker;

static void param(walker *wk, rb_tensor **slot, int f32, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                  const char *fmt, ...) RB_PRINTF(9, 10);
static void param(walker *wk, rb_tensor **slot, int f32, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                  const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(wk->name, sizeof wk->name, fmt, ap);
    va_end(ap);
    rb_unet_param p = {wk->name, ndim, {d0, d1, d2, d3}, f32, slot};
    wk->fn(wk->user, &p);
}

#define VEC(slot, C, ...) param(wk, slot, 1, 1, C, 0, 0, 0, __VA_ARGS__)
#define MAT(slot, O, I, ...) param(wk, slot, 0, 2, O, I, 0, 0, __VA_ARGS__)
#define CONV(slot, O, I, k, ...) param(wk, slot, 0, 4, O, I, k, k, __VA_ARGS__)

static void walk_resnet(walker *wk, rb_unet_resnet *r, int temb, const char *p) {
    int64_t ci = r->cin, co = r->cout;
    VEC(&r->norm1_w, ci, "%s.norm1.weight", p);
    VEC(&r->norm1_b, ci, "%s.norm1.bias", p);
    CONV(&r->conv1_w, co, ci, 3, "%s.conv1.weight", p);
    VEC(&r->conv1_b, co, "%s.conv1.bias", p);
    MAT(&r->temb_w, co, temb, "%s.time_emb_proj.weight", p);
    VEC(&r->temb_b, co, "%s.time_emb_proj.bias", p);
    VEC(&r->norm2_w, co, "%s.norm2.weight", p);
    VEC(&r->norm2_b, co, "%s.norm2.bias", p);
    CONV(&r->conv2_w, co, co, 3, "%s.conv2.weight", p);
    VEC(&r->conv2_b, co, "%s.conv2.bias", p);
    if (ci != co) {
        CONV(&r->short_w, co, ci, 1, "%s.conv_shortcut.weight", p);
        VEC(&r->short_b, co, "%s.conv_shortcut.bias", p);
    }
}

static void walk_attn(walker *wk, rb_unet_attn *a) {
    int64_t C = a->dim, X = a->context_dim;
    MAT(&a->to_q, C, C, "%s.to_q.weight", a->name);
    MAT(&a->to_k, C, X, "%s.to_k.weight", a->name);
    MAT(&a->to_v, C, X, "%s.to_v.weight", a->name);
    MAT(&a->to_out_w, C, C, "%s.to_out.0.weight", a->name);
    VEC(&a->to_out_b, C, "%s.to_out.0.bias", a->name);
}

static void walk_transformer(walker *wk, rb_unet_transformer *t, int linear, const char *p) {
    int64_t C = t->channels;
    VEC(&t->norm_w, C, "%s.norm.weight", p);
    VEC(&t->norm_b, C, "%s.norm.bias", p);
    if (linear) {
        MAT(&t->proj_in_w, C, C, "%s.proj_in.weight", p);
        MAT(&t->proj_out_w, C, C, "%s.proj_out.weight", p);
    } else {
        CONV(&t->proj_in_w, C, C, 1, "%s.proj_in.weight", p);
        CONV(&t->proj_out_w, C, C, 1, "%s.proj_out.weight", p);
    }
    VEC(&t->proj_in_b, C, "%s.proj_in.bias", p);
    VEC(&t->proj_out_b, C, "%s.proj_out.bias", p);
    for (int k = 0; k < t->depth; k++) {
        rb_unet_tblock *b = &t->blocks[k];
        VEC(&b->norm1_w, C, "%s.transformer_blocks.%d.norm1.weight", p, k);
        VEC(&b->norm1_b, C, "%s.transformer_blocks.%d.norm1.bias", p, k);
        VEC(&b->norm2_w, C, "%s.transformer_blocks.%d.norm2.weight", p, k);
        VEC(&b->norm2_b, C, "%s.transformer_blocks.%d.norm2.bias", p, k);
        VEC(&b->norm3_w, C, "%s.transformer_blocks.%d.norm3.weight", p, k);
        VEC(&b->norm3_b, C, "%s.transformer_blocks.%d.norm3.bias", p, k);
        walk_attn(wk, &b->attn1);
        walk_attn(wk, &b->attn2);
        MAT(&b->ff_in_w, 8 * C, C, "%s.transformer_blocks.%d.ff.net.0.proj.weight", p, k);
        VEC(&b->ff_in_b, 8 * C, "%s.transformer_blocks.%d.ff.net.0.proj.bias", p, k);
        MAT(&b->ff_out_w, C, 4 * C, "%s.transformer_blocks.%d.ff.net.2.weight", p, k);
        VEC(&b->ff_out_b, C, "%s.transformer_blocks.%d.ff.net.2.bias", p, k);
    }
}

static void walk_block(walker *wk, rb_unet_block *b, int linear, int temb, const char *kind, int i) {
    char p[64];
    int mid = !strcmp(kind, "mid_block");
    for (int j = 0; j < (mid ? 2 : b->n_layers); j++) {
        if (mid)
            snprintf(p, sizeof p, "mid_block.resnets.%d", j);
        else
            snprintf(p, sizeof p, "%s.%d.resnets.%d", kind, i, j);
        walk_resnet(wk, &b->resnets[j], temb, p);
    }
    for (int j = 0; b->has_attn && j < b->n_layers; j++) {
        if (mid)
            snprintf(p, sizeof p, "mid_block.attentions.0");
        else
            snprintf(p, sizeof p, "%s.%d.attentions.%d", kind, i, j);
        walk_transformer(wk, &b->attns[j], linear, p);
    }
}

void rb_unet_visit_params(rb_unet *m, void (*fn)(void *user, const rb_unet_param *p), void *user) {
    walker w = {fn, user, {0}}, *wk = &w;
    const rb_unet_config *c = &m->cfg;
    int64_t T = c->time_embed_dim, c0 = c->block_out[0];
    int n = c->n_blocks, lin = c->use_linear_projection;
    MAT(&m->time_l1_w, T, c0, "time_embedding.linear_1.weight");
    VEC(&m->time_l1_b, T, "time_embedding.linear_1.bias");
    MAT(&m->time_l2_w, T, T, "time_embedding.linear_2.weight");
    VEC(&m->time_l2_b, T, "time_embedding.linear_2.bias");
    if (c->text_time) {
        MAT(&m->add_l1_w, T, c->add_embed_in, "add_embedding.linear_1.weight");
        VEC(&m->add_l1_b, T, "add_embedding.linear_1.bias");
        MAT(&m->add_l2_w, T, T, "add_embedding.linear_2.weight");
        VEC(&m->add_l2_b, T, "add_embedding.linear_2.bias");
    }
    CONV(&m->conv_in_w, c0, c->in_channels, 3, "conv_in.weight");
    VEC(&m->conv_in_b, c0, "conv_in.bias");
    for (int i = 0; i < n; i++) {
        walk_block(wk, &m->down[i], lin, (int)T, "down_blocks", i);
        if (i < n - 1) {
            CONV(&m->down[i].sampler_w, c->block_out[i], c->block_out[i], 3, "down_blocks.%d.downsamplers.0.conv.weight", i);
            VEC(&m->down[i].sampler_b, c->block_out[i], "down_blocks.%d.downsamplers.0.conv.bias", i);
        }
    }
    walk_block(wk, &m->mid, lin, (int)T, "mid_block", 0);
    for (int i = 0; i < n; i++) {
        walk_block(wk, &m->up[i], lin, (int)T, "up_blocks", i);
        if (i < n - 1) {
            int64_t C = m->up[i].channels;
            CONV(&m->up[i].sampler_w, C, C, 3, "up_blocks.%d.upsamplers.0.conv.weight", i);
            VEC(&m->up[i].sampler_b, C, "up_blocks.%d.upsamplers.0.conv.bias", i);
        }
    }
    VEC(&m->norm_out_w, c0, "conv_norm_out.weight");
    VEC(&m->norm_out_b, c0, "conv_norm_out.bias");
    CONV(&m->conv_out_w, c->out_channels, c0, 3, "conv_out.weight");
    VEC(&m->conv_out_b, c->out_channels, "conv_out.bias");
}

/* ---- loading ---- */

static void load_param(void *user, const rb_unet_param *p) {
    rb_unet *m = user;
    char key[256];
    if (m->w.status != RB_OK)
        return;
    rb_status s = rb_unet_map_key(&m->cfg, m->layout, p->name, key, sizeof key);
    if (s != RB_OK) {
        m->w.status = s;
        return;
    }
    *p->slot = rb_weights_get(&m->w, p->f32, p->ndim, p->shape, "%s%s", m->prefix, key);
    if (!*p->slot)
        rb_error_prefix(m->w.status, "UNet parameter %s", p->name);
}

rb_status rb_unet_load(rb_unet *m, const char *config_json, const char *weights) {
    rb_unet_config cfg;
    rb_weights w;
    rb_unet_layout layout;
    char prefix[32];
    memset(m, 0, sizeof *m);
    if (config_json)
        RB_TRY(rb_unet_config_load(&cfg, config_json));
    RB_TRY(rb_weights_open(&w, weights));
    rb_status s = rb_unet_detect_layout(&w, &layout, prefix, sizeof prefix);
    if (s == RB_OK && !config_json && (s = rb_unet_config_detect(&cfg, &w, layout, prefix)) == RB_OK)
        s = rb_unet_config_check(&cfg, weights);
    if (s == RB_OK)
        s = rb_unet_init(m, &cfg);
    if (s != RB_OK) {
        rb_weights_close(&w);
        return s;
    }
    m->w = w; /* the weights struct holds no pointers into itself, so it can move */
    m->layout = layout;
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
    rb_unet_visit_params(m, load_param, m);
    s = m->w.status;
    if (s != RB_OK)
        rb_unet_free(m);
    return s;
}

rb_status rb_unet_load_dir(rb_unet *m, const char *dir) {
    char cfg[4096], w[4096];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    snprintf(w, sizeof w, "%s/diffusion_pytorch_model.safetensors", dir);
    FILE *f = fopen(cfg, "rb"); /* without config.json the config is detected from the shapes */
    if (f)
        fclose(f);
    return rb_unet_load(m, f ? cfg : NULL, w);
}

int rb_unet_unused(const rb_unet *m, int max_print) {
    size_t plen = strlen(m->prefix);
    int n = 0;
    for (int i = 0; i < m->w.st.n; i++) {
        const char *name = m->w.st.entries[i].name;
        if (m->w.used[i] || strncmp(name, m->prefix, plen))
            continue;
        if (n < max_print)
            fprintf(stderr, "relbooth: %s: unused UNet tensor %s\n", m->w.st.path, name);
        n++;
    }
    return n;
}
