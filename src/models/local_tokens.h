/* DreamRelation's local image tokens (src/modules/image_encoder.py with the vendored open_clip's
 * `encode_pseudo_boxes(..., extract_type="v2")`, i.e. CLIPSelf's dense path): an open_clip ViT
 * (ViT-bigG-14 in the release, checkpoint epoch_6.pt) run on the 896 x 896 reference image gives one
 * L2-normalised feature per patch (64 x 64 of them); roi_align over an N x N grid of boxes (N = 4)
 * turns them into N*N local tokens per subject, which are appended after the subject's 257 global CLIP
 * tokens (hidden_states[-2]) before the resampler. docs/local-tokens.md has the details.
 *
 * Pooling fix: the released code passes roi_align ONE box tensor for the whole batch, so every subject
 * is pooled from the first image. rb_local_tokens pools each subject from its own image unless
 * `official_pooling` is set, which reproduces the released behaviour. */
#ifndef RB_MODELS_LOCAL_TOKENS_H
#define RB_MODELS_LOCAL_TOKENS_H

#include "models/clip_vision.h"

#define RB_LOCAL_DEFAULT_POOL 4      /* ImageEncoder.num_patches: 4 x 4 = 16 local tokens */
#define RB_LOCAL_DEFAULT_IMAGE 896   /* concept_images_896 */

typedef struct rb_local_encoder {
    rb_clip_vision vis; /* the open_clip vision tower (layout RB_CLIP_LAYOUT_OPEN_CLIP) */
} rb_local_encoder;

/* weights_path: epoch_6.pt (a training checkpoint {"epoch", "state_dict": {"module.visual.*"}}), a
 * torch.save(state_dict) .pt, or a .safetensors, as rb_clip_vision_load_open_clip reads them.
 * config_path: an open_clip model json; NULL looks for open_clip_config.json next to the weights and
 * otherwise uses the built-in ViT-bigG-14 config (what ImageEncoder hard-codes). The checkpoint's
 * shapes are checked against the config. */
rb_status rb_local_encoder_load(rb_local_encoder *e, const char *weights_path, const char *config_path);
void rb_local_encoder_free(rb_local_encoder *e);

/* The position table for a gh x gw patch grid: [1 + gh*gw, D]. The class entry is kept as is and the
 * checkpoint's g0 x g0 patch grid is resized with F.interpolate(mode="bicubic", align_corners=False,
 * no antialias) when the grid differs (open_clip's rescale_positional_embedding). */
rb_tensor *rb_local_position_embedding(rb_ctx *c, const rb_local_encoder *e, int64_t gh, int64_t gw);

/* Dense features: pixels [n, 3, H, W] (H, W multiples of the patch size; 896 in DreamRelation) ->
 * [n, H/p, W/p, D] (channels last, row-major grid): conv patches + class token + rescaled positions,
 * ln_pre, blocks 0..L-2, the last block without attention (x + out_proj(V), then x + mlp(ln_2(x))),
 * class token dropped, ln_post, no projection, each token L2-normalised. ln_post_out (optional) gets
 * the ln_post output before the normalisation, [n, gh*gw, D]. */
rb_tensor *rb_local_dense(rb_ctx *c, const rb_local_encoder *e, rb_tensor *pixels, rb_tensor **ln_post_out);

/* roi_align pooling of dense [n, gh, gw, D] over n_pool x n_pool boxes (torchvision roi_align,
 * output 1 x 1, spatial_scale 1, sampling_ratio -1, aligned=True; boxes from generate_bboxes: token
 * k = i * n_pool + j covers x in [i, i+1) / n_pool, y in [j, j+1) / n_pool, i.e. x is the OUTER
 * index) -> [n, n_pool^2, D]. When gh and gw are multiples of n_pool this is the exact block mean.
 * official_pooling: every subject gets subject 0's tokens (the released code's behaviour). */
rb_tensor *rb_local_pool(rb_ctx *c, rb_tensor *dense, int n_pool, int official_pooling);

/* Raw kernels of rb_local_pool. forward: out [n, P*P, D] (=) from dense [n or 1, gh, gw, D]; output
 * image b reads image (official ? 0 : b); accumulates in double. Scratch: idx and wt hold
 * n * P*P * 4 * (gh/P + 2) * (gw/P + 2) entries, acc n * P*P * D. backward: ddense (+=) from dout
 * [n, P*P, D]; idx and wt hold 4 * (gh/P + 2) * (gw/P + 2) entries. */
void local_pool_forward(float *out, const float *dense, int64_t n, int64_t gh, int64_t gw, int64_t D, int P,
                        int official, int64_t *idx_scratch, double *wt_scratch, double *acc_scratch);
void local_pool_backward(float *ddense, const float *dout, int64_t n, int64_t gh, int64_t gw, int64_t D, int P,
                         int official, int64_t *idx_scratch, double *wt_scratch);

/* rb_local_pool(rb_local_dense(pixels)) -> [n, n_pool^2, D]. */
rb_tensor *rb_local_tokens(rb_ctx *c, const rb_local_encoder *e, rb_tensor *pixels_896, int n_pool,
                           int official_pooling);

/* Resampler input per subject: cat(global [n, T, D], local [n, P, D]) along tokens -> [n, T + P, D]. */
rb_tensor *rb_local_concat(rb_ctx *c, rb_tensor *global_tokens, rb_tensor *local_tokens);

#endif
