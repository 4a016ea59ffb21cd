/* UNet2DConditionModel forward, as diffusers' unet_2d_condition.py / unet_2d_blocks.py:
 *   t_emb = time_proj(t); emb = time_embedding(t_emb) [+ add_embedding(cat(text_embeds, time_proj(time_ids)))]
 *   x = conv_in(sample); skips = [x]
 *   down block: per layer x = resnet(x, emb) [; x = transformer(x, ehs)]; skips += x; [x = downsample(x); skips += x]
 *   mid: resnet, transformer, resnet
 *   up block: per layer x = resnet(cat(x, skips.pop()), emb) [; x = transformer(x, ehs)]; [x = upsample(x)]
 *   out = conv_out(silu(conv_norm_out(x)))
 * Inference (no tape) compacts the arena after each resnet/transformer so the scratch of a block
 * is reused by the next one; only the values the rest of the net reads stay alive. */
#include <math.h>
#include <string.h>

#include "unet.h"

/* get_timestep_embedding in float32, operation for operation as torch does it:
 * freq_i = exp(-ln(10000) * i / (half - shift)), arg = t * freq_i, out = [cos | sin] (flip) or [sin | cos].
 * t: n values -> [n, dim]. */
static rb_tensor *sinusoid(rb_ctx *c, const float *t, int64_t n, int dim, int flip, float shift) {
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, 2, (int64_t[]){n, dim});
    if (!out)
        return NULL;
    int half = dim / 2;
    float *o = out->data, freq[4096];
    if (half > 4096)
        return rb_ctx_error(c, RB_ERR_UNSUPPORTED, "UNet: time embedding width %d too large", dim);
    const float neg_log_period = (float)-log(10000.0);
    for (int i = 0; i < half; i++)
        freq[i] = expf(neg_log_period * (float)i / ((float)half - shift));
    for (int64_t r = 0; r < n; r++) {
        for (int i = 0; i < half; i++) {
            float arg = t[r] * freq[i], s = sinf(arg), co = cosf(arg);
            o[r * dim + i] = flip ? co : s;
            o[r * dim + half + i] = flip ? s : co;
        }
        if (dim % 2)
            o[r * dim + dim - 1] = 0.0f;
    }
    return out;
}

/* TimestepEmbedding: linear_2(silu(linear_1(x))) */
static rb_tensor *mlp(rb_ctx *c, rb_tensor *x, rb_tensor *w1, rb_tensor *b1, rb_tensor *w2, rb_tensor *b2) {
    return rb_linear(c, rb_silu(c, rb_linear(c, x, w1, b1)), w2, b2);
}

/* ResnetBlock2D. x: [B, Cin, H, W], temb_act = silu(emb): [B, T] -> [B, Cout, H, W] */
static rb_tensor *resnet(rb_ctx *c, const rb_unet *m, const rb_unet_resnet *r, rb_tensor *x, rb_tensor *temb_act) {
    if (!x)
        return NULL;
    int G = m->cfg.norm_groups;
    float eps = m->cfg.norm_eps;
    rb_tensor *h = rb_silu(c, rb_group_norm(c, x, G, r->norm1_w, r->norm1_b, eps));
    h = rb_conv2d(c, h, r->conv1_w, r->conv1_b, 1, 1, 1, 1);
    rb_tensor *t = rb_linear(c, temb_act, r->temb_w, r->temb_b); /* [B, Cout] */
    t = rb_reshape(c, t, 4, (int64_t[]){x->shape[0], r->cout, 1, 1});
    h = rb_add(c, h, t);
    h = rb_silu(c, rb_group_norm(c, h, G, r->norm2_w, r->norm2_b, eps));
    h = rb_conv2d(c, h, r->conv2_w, r->conv2_b, 1, 1, 1, 1);
    rb_tensor *sc = r->short_w ? rb_conv2d(c, x, r->short_w, r->short_b, 1, 1, 0, 0) : x;
    return rb_add(c, sc, h);
}

rb_tensor *rb_unet_attn_proj(rb_ctx *c, const rb_unet_attn *a, int which, rb_tensor *x) {
    rb_tensor *w = which == RB_UNET_Q ? a->to_q : which == RB_UNET_K ? a->to_k : which == RB_UNET_V ? a->to_v : a->to_out_w;
    rb_tensor *b = which == RB_UNET_OUT ? a->to_out_b : NULL;
    if (!a->n_lora[which])
        return rb_linear(c, x, w, b);
    rb_lora_pair pairs[RB_UNET_MAX_LORA];
    for (int i = 0; i < a->n_lora[which]; i++)
        pairs[i] = *a->lora[which][i];
    return rb_lora_linear(c, x, w, b, pairs, a->n_lora[which]);
}

rb_tensor *rb_unet_attn_default(rb_ctx *c, const rb_unet_attn *a, rb_tensor *hidden, rb_tensor *context,
                                int64_t height, int64_t width, void *user) {
    rb_tensor *q = rb_unet_attn_proj(c, a, RB_UNET_Q, hidden);  /* [B, N, C] */
    rb_tensor *k = rb_unet_attn_proj(c, a, RB_UNET_K, context); /* [B, L, C] */
    rb_tensor *v = rb_unet_attn_proj(c, a, RB_UNET_V, context); /* [B, L, C] */
    rb_tensor *o = rb_attention(c, q, k, v, a->heads, NULL, 0.0f);
    return rb_unet_attn_proj(c, a, RB_UNET_OUT, o);
}

static rb_tensor *call_attn(rb_ctx *c, const rb_unet_attn *a, const rb_unet_proc *procs, rb_tensor *hidden,
                            rb_tensor *context, int64_t H, int64_t W) {
    if (!hidden || !context)
        return NULL;
    const rb_unet_proc *p = procs ? &procs[a->index] : NULL;
    rb_tensor *o = p && p->fn ? p->fn(c, a, hidden, context, H, W, p->user)
                              : rb_unet_attn_default(c, a, hidden, context, H, W, NULL);
    if (o && !rb_same_shape(o, hidden))
        return rb_ctx_error(c, RB_ERR_INVALID, "UNet: processor of %s returned a wrongly shaped tensor", a->name);
    if (!o && c->status == RB_OK)
        return rb_ctx_error(c, RB_ERR_INTERNAL, "UNet: processor of %s failed without a status", a->name);
    return o;
}

/* BasicTransformerBlock on tokens h: [B, N, C] */
static rb_tensor *tblock(rb_ctx *c, const rb_unet_tblock *b, const rb_unet_proc *procs, rb_tensor *h,
                         rb_tensor *ehs, int64_t H, int64_t W) {
    const float eps = 1e-5f; /* BasicTransformerBlock's LayerNorms (norm_eps default) */
    rb_tensor *n = rb_layer_norm(c, h, b->norm1_w, b->norm1_b, eps);
    h = rb_add(c, h, call_attn(c, &b->attn1, procs, n, n, H, W));
    n = rb_layer_norm(c, h, b->norm2_w, b->norm2_b, eps);
    h = rb_add(c, h, call_attn(c, &b->attn2, procs, n, ehs, H, W));
    n = rb_layer_norm(c, h, b->norm3_w, b->norm3_b, eps);
    rb_tensor *f = rb_geglu(c, rb_linear(c, n, b->ff_in_w, b->ff_in_b)); /* [B, N, 4C] */
    return rb_add(c, h, rb_linear(c, f, b->ff_out_w, b->ff_out_b));
}

/* A transformer block as a recomputed (checkpointed) block: in = {h, encoder_hidden_states}. */
typedef struct tblock_job {
    const rb_unet_tblock *b;
    const rb_unet_proc *procs;
    int64_t H, W;
} tblock_job;

static rb_tensor *tblock_fn(rb_ctx *c, void *user, rb_tensor *const *in, int n_in) {
    const tblock_job *j = user;
    return tblock(c, j->b, j->procs, in[0], in[1], j->H, j->W);
}

/* Transformer2DModel. x: [B, C, H, W] -> [B, C, H, W] */
static rb_tensor *transformer(rb_ctx *c, const rb_unet *m, const rb_unet_transformer *t,
                              const rb_unet_proc *procs, int recompute, rb_tensor *x, rb_tensor *ehs) {
    if (!x)
        return NULL;
    const int linear = m->cfg.use_linear_projection;
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    rb_tensor *h = rb_group_norm(c, x, m->cfg.norm_groups, t->norm_w, t->norm_b, 1e-6f); /* eps fixed in diffusers */
    if (!linear)
        h = rb_conv2d(c, h, t->proj_in_w, t->proj_in_b, 1, 1, 0, 0);
    h = rb_reshape(c, rb_permute(c, h, (int[]){0, 2, 3, 1}), 3, (int64_t[]){B, H * W, C}); /* [B, HW, C] */
    if (linear)
        h = rb_linear(c, h, t->proj_in_w, t->proj_in_b);
    for (int k = 0; k < t->depth; k++) {
        if (!(recompute && c->tape)) {
            size_t mk = rb_arena_mark(c->arena); /* inference: drop the block's scratch (keep is a no-op on a tape) */
            h = rb_ctx_keep(c, mk, tblock(c, &t->blocks[k], procs, h, ehs, H, W));
            continue;
        }
        /* the job must live until backward: it goes below the block's own allocations in the arena */
        tblock_job *job = rb_arena_alloc(c->arena, sizeof *job);
        if (!job)
            return rb_ctx_fail(c, RB_ERR_OOM);
        *job = (tblock_job){&t->blocks[k], procs, H, W};
        h = h ? rb_checkpoint_params(c, tblock_fn, job, 2, (rb_tensor *[]){h, ehs}) : NULL;
    }
    if (linear)
        h = rb_linear(c, h, t->proj_out_w, t->proj_out_b);
    h = rb_permute(c, rb_reshape(c, h, 4, (int64_t[]){B, H, W, C}), (int[]){0, 3, 1, 2}); /* [B, C, H, W] */
    if (!linear)
        h = rb_conv2d(c, h, t->proj_out_w, t->proj_out_b, 1, 1, 0, 0);
    return rb_add(c, h, x);
}

static rb_status check_inputs(rb_ctx *c, const rb_unet *m, const rb_unet_in *in) {
    const rb_unet_config *cfg = &m->cfg;
    const rb_tensor *s = in->sample, *e = in->encoder_hidden_states, *t = in->timestep;
    if (!s || s->ndim != 4 || s->dtype != RB_F32 || s->shape[1] != cfg->in_channels)
        return rb_error(RB_ERR_INVALID, "UNet: sample must be f32 [B, %d, H, W]", cfg->in_channels);
    int64_t B = s->shape[0], mult = (int64_t)1 << (cfg->n_blocks - 1);
    if (B < 1 || s->shape[2] % mult || s->shape[3] % mult || s->shape[2] < 1 || s->shape[3] < 1)
        return rb_error(RB_ERR_UNSUPPORTED, "UNet: sample height and width must be multiples of %lld",
                        (long long)mult);
    if (!e || e->ndim != 3 || e->dtype != RB_F32 || e->shape[0] != B || e->shape[2] != cfg->cross_attention_dim)
        return rb_error(RB_ERR_INVALID, "UNet: encoder_hidden_states must be f32 [%lld, L, %d]", (long long)B,
                        cfg->cross_attention_dim);
    int64_t nt = t ? rb_numel(t) : 0;
    if (!t || t->ndim > 1 || (nt != 1 && nt != B) ||
        (!rb_dtypes[t->dtype].is_float && t->dtype != RB_I64 && t->dtype != RB_I32))
        return rb_error(RB_ERR_INVALID, "UNet: timestep must be a number, [1] or [%lld]", (long long)B);
    if (cfg->text_time) {
        int64_t te = cfg->add_embed_in - 6 * cfg->addition_time_embed_dim;
        const rb_tensor *x = in->text_embeds, *ti = in->time_ids;
        if (!x || x->ndim != 2 || x->dtype != RB_F32 || x->shape[0] != B || x->shape[1] != te)
            return rb_error(RB_ERR_INVALID, "UNet: text_embeds must be f32 [%lld, %lld]", (long long)B, (long long)te);
        if (!ti || ti->ndim != 2 || ti->shape[0] != B || ti->shape[1] != 6)
            return rb_error(RB_ERR_INVALID, "UNet: time_ids must be [%lld, 6]", (long long)B);
    }
    (void)c;
    return RB_OK;
}

/* emb = time_embedding(time_proj(t)) [+ add_embedding(cat(text_embeds, time_proj(time_ids)))]: [B, T] */
static rb_tensor *embeddings(rb_ctx *c, const rb_unet *m, const rb_unet_in *in, rb_unet_out *out) {
    const rb_unet_config *cfg = &m->cfg;
    int64_t B = in->sample->shape[0], nt = rb_numel(in->timestep);
    float *tv = rb_arena_alloc(c->arena, (size_t)(6 * B) * sizeof *tv);
    if (!tv)
        return rb_ctx_fail(c, RB_ERR_OOM);
    for (int64_t b = 0; b < B; b++) /* torch: timesteps.expand(B), then .float() */
        tv[b] = (float)rb_tensor_get(in->timestep, nt == 1 ? 0 : b);
    rb_tensor *tp = sinusoid(c, tv, B, cfg->block_out[0], cfg->flip_sin_to_cos, cfg->freq_shift);
    rb_tensor *emb = mlp(c, tp, m->time_l1_w, m->time_l1_b, m->time_l2_w, m->time_l2_b);
    if (in->collect) {
        out->time_proj = tp;
        out->time_embedding = emb;
    }
    if (!cfg->text_time)
        return emb;
    for (int64_t i = 0; i < 6 * B; i++)
        tv[i] = (float)rb_tensor_get(in->time_ids, i);
    rb_tensor *atp = sinusoid(c, tv, 6 * B, cfg->addition_time_embed_dim, cfg->flip_sin_to_cos, cfg->freq_shift);
    rb_tensor *tf = rb_reshape(c, atp, 2, (int64_t[]){B, 6 * cfg->addition_time_embed_dim});
    rb_tensor *cat = rb_concat(c, (rb_tensor *[]){in->text_embeds, tf}, 2, 1); /* [B, add_embed_in] */
    rb_tensor *aug = mlp(c, cat, m->add_l1_w, m->add_l1_b, m->add_l2_w, m->add_l2_b);
    if (in->collect) {
        out->add_time_proj = atp;
        out->add_embedding = aug;
    }
    return rb_add(c, emb, aug);
}

#define MAX_SKIPS (1 + RB_UNET_MAX_BLOCKS * RB_UNET_MAX_LAYERS)

rb_status rb_unet_forward(rb_ctx *c, const rb_unet *m, const rb_unet_in *in, rb_unet_out *out) {
    memset(out, 0, sizeof *out);
    if (c->status != RB_OK)
        return c->status;
    rb_status s = check_inputs(c, m, in);
    if (s != RB_OK)
        return c->status = s;
    const rb_unet_config *cfg = &m->cfg;
    const int n = cfg->n_blocks;
    rb_tensor *ehs = in->encoder_hidden_states, *skips[MAX_SKIPS];
    int ns = 0;
    rb_tensor *emb = embeddings(c, m, in, out);
    rb_tensor *temb_act = rb_silu(c, emb); /* every ResnetBlock2D applies silu to emb first */
    size_t mk = rb_arena_mark(c->arena);
    rb_tensor *x = rb_ctx_keep(c, mk, rb_conv2d(c, in->sample, m->conv_in_w, m->conv_in_b, 1, 1, 1, 1));
    if (in->collect)
        out->conv_in = x;
    skips[ns++] = x;
    for (int i = 0; i < n; i++) {
        const rb_unet_block *b = &m->down[i];
        for (int j = 0; j < b->n_layers; j++) {
            mk = rb_arena_mark(c->arena);
            x = rb_ctx_keep(c, mk, resnet(c, m, &b->resnets[j], x, temb_act));
            if (b->has_attn) {
                mk = rb_arena_mark(c->arena);
                x = rb_ctx_keep(c, mk, transformer(c, m, &b->attns[j], in->procs, in->recompute, x, ehs));
            }
            skips[ns++] = x;
        }
        if (b->sampler_w) { /* Downsample2D: 3x3 conv, stride 2, padding 1 */
            mk = rb_arena_mark(c->arena);
            x = rb_ctx_keep(c, mk, rb_conv2d(c, x, b->sampler_w, b->sampler_b, 2, 2, 1, 1));
            skips[ns++] = x;
        }
        if (in->collect)
            out->down[i] = x;
    }
    mk = rb_arena_mark(c->arena);
    x = rb_ctx_keep(c, mk, resnet(c, m, &m->mid.resnets[0], x, temb_act));
    mk = rb_arena_mark(c->arena);
    x = rb_ctx_keep(c, mk, transformer(c, m, &m->mid.attns[0], in->procs, in->recompute, x, ehs));
    mk = rb_arena_mark(c->arena);
    x = rb_ctx_keep(c, mk, resnet(c, m, &m->mid.resnets[1], x, temb_act));
    if (in->collect)
        out->mid = x;
    for (int i = 0; i < n; i++) {
        const rb_unet_block *b = &m->up[i];
        for (int j = 0; j < b->n_layers; j++) {
            if (ns < 1)
                return c->status = rb_error(RB_ERR_INTERNAL, "UNet: skip connections exhausted");
            mk = rb_arena_mark(c->arena);
            rb_tensor *cat = rb_concat(c, (rb_tensor *[]){x, skips[--ns]}, 2, 1); /* [B, Cx + Cskip, H, W] */
            x = rb_ctx_keep(c, mk, resnet(c, m, &b->resnets[j], cat, temb_act));
            if (b->has_attn) {
                mk = rb_arena_mark(c->arena);
                x = rb_ctx_keep(c, mk, transformer(c, m, &b->attns[j], in->procs, in->recompute, x, ehs));
            }
        }
        if (b->sampler_w) { /* Upsample2D: nearest x2, then 3x3 conv */
            mk = rb_arena_mark(c->arena);
            x = rb_ctx_keep(c, mk, rb_conv2d(c, rb_upsample_nearest2x(c, x), b->sampler_w, b->sampler_b, 1, 1, 1, 1));
        }
        if (in->collect)
            out->up[i] = x;
    }
    x = rb_group_norm(c, x, cfg->norm_groups, m->norm_out_w, m->norm_out_b, cfg->norm_eps);
    if (in->collect)
        out->conv_norm_out = x;
    out->sample = rb_conv2d(c, rb_silu(c, x), m->conv_out_w, m->conv_out_b, 1, 1, 1, 1);
    return c->status;
}
