/* RelationLoRA training losses (DreamRelation train.py, commit 1767aac2b336; paper section 3.4):
 *
 *   L_mse = mean((eps_hat - eps)^2)
 *   L_kml = mean((z_ref[k, :, h', w'] - z0_hat[:, h, w])^2)  over the n*17 keypoints x 4 channels, where
 *           z0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t), (h, w) = int(kp_target * W) and
 *           (h', w') = int(kp_concept * W) (W = latent width, both axes; the released code's int(kp * 4)
 *           on the concept side is a bug, offered only as kml_ref_scale = 4); active for t <= kml_t_max
 *   L_cal = mean over the stored layers of  sum(map bg)/(sum bg + 1e-5) - sum(map obj)/(sum obj + 1e-5)
 *           where map = the predicate tokens' text-attention probabilities (mean over the span's tokens,
 *           then over heads) of every attn2 with h*w <= cal_max_hw, obj = the object segmap resized
 *           with nearest (chained from layer to layer, as the released loop does), bg = 1 - obj
 *   loss  = L_mse + w_kml L_kml [t <= kml_t_max] + w_cal L_cal
 *
 * Everything is built from taped ops, so rb_backward(loss) gives the LoRA gradients. The CAL maps
 * come from rb_rel_attn2, a processor that runs MS-Diffusion's masked attention (rb_ms_attn2) and,
 * for the layers it stores, also the explicit softmax(q k^T d^-0.5) over the 77 text tokens. */
#ifndef RB_PIPELINES_RELATION_LOSS_H
#define RB_PIPELINES_RELATION_LOSS_H

#include "models/ms_adapter.h"

#define RB_REL_MAX_MAPS 128

typedef struct rb_rel_loss_config {
    float w_kml;       /* lambda_kml (paper 1e-3, released code 0.1) */
    int kml_t_max;     /* KML only for rows with t <= kml_t_max; < 0: at every t (paper) */
    int kml_ref_scale; /* 0: the intended int(kp * W) on the concept side; 4: the released code's int(kp * 4) */
    float w_cal;       /* lambda_cal; 0: no CAL (no predicate maps are computed) */
    int cal_max_hw;    /* layers with h*w <= this store their predicate map (released: 32*32 = 1024) */
} rb_rel_loss_config;

/* The two presets of `relbooth train --recipe`: paper (w_kml 1e-3 at every t, no CAL) and official
 * (w_kml 0.1 for t <= 333, w_cal 1e-3, int(kp * W) on both sides). */
void rb_rel_loss_config_paper(rb_rel_loss_config *cfg);
void rb_rel_loss_config_official(rb_rel_loss_config *cfg);

/* Per UNet call: the masked processor's call plus the predicate-map store (the released attn_store).
 *
 * Two ways to get L_cal:
 * - segmaps NULL (stored maps): every map stays on the tape (maps[]) and rb_rel_cal builds L_cal after the
 *   forward. The maps are made inside the transformer blocks, so this needs the blocks' whole forward on
 *   the tape (rb_unet_in.recompute off). Used to inspect the maps.
 * - segmaps set (in-block CAL, what training uses): each stored layer's term (L_cal's per-layer value,
 *   [B]) is computed inside its block from that layer's chained segmap, and attached to the attention's
 *   output by an auxiliary-loss op (forward: identity; backward: d(term) += dL/dL_cal / (n_maps B), read
 *   from the L_cal node that rb_rel_loss makes after the forward). Nothing but the block's output leaves
 *   the block, so blocks can be recomputed in backward; the gradients are those of the stored-maps way. */
typedef struct rb_rel_attn_call {
    rb_ms_call ms;
    const int64_t *pred_span; /* [B, 2] predicate token span [start, end) per row; NULL: no maps */
    int max_hw;               /* store maps of layers with h*w <= max_hw */
    const rb_tensor *segmaps; /* [B, H0, W0] object segmaps (0/1): in-block CAL; NULL: stored maps */
    int n_maps;
    rb_tensor *maps[RB_REL_MAX_MAPS];   /* [B, h*w, 1], in forward order (the attn_store dict order); NULL in-block */
    int64_t map_h[RB_REL_MAX_MAPS], map_w[RB_REL_MAX_MAPS];
    const char *map_layer[RB_REL_MAX_MAPS]; /* module name, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn2" */
    /* in-block CAL state */
    int map_attn[RB_REL_MAX_MAPS];        /* attn->index of stored layer i (finds i again when a block is recomputed) */
    float layer_value[RB_REL_MAX_MAPS][16]; /* forward value of stored layer i's term, per row */
    rb_tensor *cal;                       /* the L_cal node (rb_rel_loss); set: the forward is over */
} rb_rel_attn_call;

/* The training processor for attn2 (user = rb_rel_attn_call*): rb_ms_attn2's output, plus the
 * predicate map of this layer appended to the store when pred_span is set and h*w <= max_hw (with
 * segmaps set: the layer's CAL term, attached to the output as described above). */
rb_tensor *rb_rel_attn2(rb_ctx *c, const rb_unet_attn *attn, rb_tensor *hidden, rb_tensor *context, int64_t height,
                        int64_t width, void *user);
/* procs[0..n_attn): rb_rel_attn2 on every cross-attention, the default on self-attention. Clears the store
 * (and the in-block state; segmaps and the other inputs are kept). */
void rb_rel_procs(const rb_unet *unet, rb_rel_attn_call *call, rb_unet_proc *procs);

/* z0_hat [B, C, H, W] from x_t and eps_hat (taped); abar[B] = alphas_cumprod[t_b]. */
rb_tensor *rb_rel_pred_x0(rb_ctx *c, rb_tensor *x_t, rb_tensor *eps, const float *abar);

/* The keypoint index of a normalised coordinate: int64(kp * scale) in float32, truncated toward zero,
 * clamped to [0, limit - 1] (the reference would fail on an out-of-range index). */
int64_t rb_rel_kp_index(float kp, int64_t scale, int64_t limit);

/* L_kml over the rows b with active[b] != 0 (NULL: all): z0_hat [B, C, H, W] (taped), concept latents
 * [B, n, C, H, W] (constant), keypoints [B, 2n, 17, 2] (x, y). ref_scale 0: W. Returns [] (NULL with
 * c->status RB_OK when no row is active). */
rb_tensor *rb_rel_kml(rb_ctx *c, rb_tensor *z0_hat, const rb_tensor *concept_latents, const rb_tensor *keypoints,
                      int n, int ref_scale, const int *active);

/* In-block CAL: L_cal [] from the forward's per-layer values (the same float operations as rb_rel_cal),
 * recorded on the tape as the node whose gradient the blocks' auxiliary ops read in backward. `anchor`
 * (the UNet output) is listed as its input only so that the tape records it; it gets no gradient.
 * Sets call->cal. NULL with c->status RB_OK when no layer was stored. */
rb_tensor *rb_rel_cal_collect(rb_ctx *c, rb_rel_attn_call *call, rb_tensor *anchor);

/* L_cal from the stored maps and the object segmaps [B, H0, W0] (0/1): [] = mean over rows of the
 * released [B]-shaped value. layer_loss[i] ([B]) and segmap_used[i] ([B, h, w]) may be NULL; else they
 * receive the per-layer values (arrays of call->n_maps). NULL with c->status RB_OK when no map is stored. */
rb_tensor *rb_rel_cal(rb_ctx *c, const rb_rel_attn_call *call, const rb_tensor *segmaps, rb_tensor **layer_loss,
                      rb_tensor **segmap_used);

/* The whole loss of one UNet call. */
typedef struct rb_rel_loss_in {
    rb_tensor *x_t;                  /* [B, 4, H, W] noisy latents */
    rb_tensor *eps;                  /* [B, 4, H, W] UNet output (taped) */
    const rb_tensor *noise;          /* [B, 4, H, W] */
    const int64_t *timesteps;        /* [B] */
    const float *alphas_cumprod;     /* the DDPM table */
    const rb_tensor *keypoints;      /* [B, 2n, 17, 2] */
    const rb_tensor *concept_latents; /* [B, n, 4, H, W] */
    int n_entities;
    const rb_tensor *segmaps;        /* [B, H0, W0] */
    rb_rel_attn_call *attn;          /* the call whose processors stored the maps (CAL), or NULL */
} rb_rel_loss_in;

typedef struct rb_rel_loss_out {
    rb_tensor *total;  /* [] */
    rb_tensor *mse;    /* [] */
    rb_tensor *kml;    /* [] or NULL when inactive (every t > kml_t_max) or w_kml == 0 */
    rb_tensor *cal;    /* [] or NULL when w_cal == 0 */
    rb_tensor *z0_hat; /* [B, 4, H, W] or NULL when KML is not computed */
} rb_rel_loss_out;

rb_status rb_rel_loss(rb_ctx *c, const rb_rel_loss_config *cfg, const rb_rel_loss_in *in, rb_rel_loss_out *out);

#endif
