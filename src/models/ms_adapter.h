/* MS-Diffusion's adapter (msdiffusion/models/model.py, attention_processor.py; the same code in
 * DreamRelation): the grounding resampler, the learned dummy image tokens, and the extra to_k_ip /
 * to_v_ip projections of every cross-attention, which MaskedIPAttnProcessor2_0 uses to add a
 * box-masked image attention to the text attention:
 *
 *   out = to_out( attn(q, K_text, V_text) + gamma * rowmask * attn(q, K_ip, V_ip, box bias) )
 *
 * where the context is [77 text | 4 dummy | 16 per subject] tokens, a query pixel may attend to the
 * tokens of subject j only inside box j and to the dummy tokens only outside every box (bias -10000
 * elsewhere), and rows of pixels outside every box are zeroed after the softmax. */
#ifndef RB_MODELS_MS_ADAPTER_H
#define RB_MODELS_MS_ADAPTER_H

#include "models/resampler.h"
#include "models/unet.h"

typedef struct rb_ms_adapter {
    rb_weights w;
    rb_resampler resampler;
    rb_tensor *dummy_tokens; /* [1, num_dummy, cross_attention_dim] */
    int n_attn;              /* the UNet's processor count */
    rb_tensor **to_k_ip, **to_v_ip; /* [n_attn]; [C, cross_attention_dim], NULL for attn1 */
    int text_tokens, num_dummy;
} rb_ms_adapter;

/* ms_adapter.bin (torch) or the same keys in safetensors: image_proj.*, ms_adapter.<i>.to_k_ip/to_v_ip.weight
 * for every cross-attention processor index i of `unet`, dummy_image_tokens. dim_head: the
 * resampler's head width (64 in the released model). Every tensor of the file must be used. */
rb_status rb_ms_adapter_load(rb_ms_adapter *a, const char *path, const rb_unet *unet, int dim_head);
void rb_ms_adapter_free(rb_ms_adapter *a);

/* MS-Diffusion's automatic layout ("auto layout guidance", use_psuedo_attention_mask): every
 * cross-attention keeps, per subject, the text attention map of its phrase tokens (mean over the
 * tokens and heads) from every call; from the start_step-th call on, the average of the kept maps,
 * min-max normalised over the pixels (eps 1e-5) and thresholded (> mask_threshold), replaces the box
 * as the subject's region. State lives across the denoising steps of one image. */
typedef struct rb_ms_layout {
    int start_step;       /* 5 */
    float mask_threshold; /* 0.5 */
    const int64_t (*spans)[2]; /* [n_subjects] phrase token spans [start, end) in the prompt's ids */
    int n_attn;
    float **sum;          /* [n_attn] -> [B, n_subjects, N] running sums of the maps (allocated on first use) */
    int *count;           /* [n_attn] maps kept so far */
    int64_t *numel;       /* [n_attn] size of sum[i] */
} rb_ms_layout;

rb_status rb_ms_layout_init(rb_ms_layout *l, int n_attn, const int64_t (*spans)[2], int start_step, float threshold);
void rb_ms_layout_free(rb_ms_layout *l);

/* Per UNet call: what the masked processors need. */
typedef struct rb_ms_call {
    const rb_ms_adapter *adapter;
    int n_subjects;
    const float *boxes;          /* [B, n_subjects, 4] (x0, y0, x1, y1) in [0, 1]; all zero = no image (uncond) */
    float scale;                 /* gamma, 0.6 at inference */
    const float *subject_scales; /* NULL, or [n_subjects]: image tokens of subject j weighted by s_j, no gamma */
    rb_ms_layout *layout;        /* NULL, or the automatic layout's state (rows with boxes use it) */
} rb_ms_call;

/* The masked cross-attention processor (user = rb_ms_call*). */
rb_tensor *rb_ms_attn2(rb_ctx *c, const rb_unet_attn *attn, rb_tensor *hidden, rb_tensor *context, int64_t height,
                       int64_t width, void *user);

/* Fills procs[0..unet->n_attn) with the masked processor on every cross-attention and the default
 * one on self-attention. */
void rb_ms_procs(const rb_unet *unet, rb_ms_call *call, rb_unet_proc *procs);

/* Image tokens of one batch row: [1, num_dummy + n*Q, D] = cat(dummy tokens, resampler tokens). */
rb_tensor *rb_ms_image_tokens(rb_ctx *c, const rb_ms_adapter *a, rb_tensor *resampler_tokens);

/* The pixel rows / columns a box covers on an h x w grid: [floor(x0 w), ceil(x1 w)), clamped. */
void rb_ms_box_cells(const float *box, int64_t h, int64_t w, int64_t *r0, int64_t *r1, int64_t *c0, int64_t *c1);

#endif
