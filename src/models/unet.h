/* UNet2DConditionModel (diffusers) for SD 1.x and SDXL:
 *   SD 1.x: CrossAttnDownBlock2D x3 + DownBlock2D, 1x1-conv proj_in/out, attention_head_dim (int) = heads;
 *   SDXL:   DownBlock2D + CrossAttnDownBlock2D x2, linear proj_in/out, transformer_layers_per_block,
 *           "text_time" addition embedding (pooled text embeds + sinusoids of the 6 time ids).
 * Weights in the diffusers layout (canonical names) or the original single-file layouts
 * (SGM/LDM `model.diffusion_model.*`), converted by the rule tables in unet_keys.c.
 *
 * Attention processors: every Attention module (attn1 = self, attn2 = cross) is called through a
 * replaceable function, so MS-Diffusion's masked image cross-attention and LoRA plug in without
 * touching the UNet. Processor index order = diffusers' `unet.attn_processors` dict order, which is
 * module registration order: down_blocks (in order), then up_blocks, then mid_block (diffusers
 * registers up_blocks before mid_block), and inside each Transformer2DModel transformer_blocks in
 * order with attn1 before attn2. So attn2 modules sit at odd indices, as ms_adapter.bin's
 * `"{2k+1}.to_k_ip.weight"` keys expect. */
#ifndef RB_MODELS_UNET_H
#define RB_MODELS_UNET_H

#include "models/lora.h"
#include "models/weights.h"
#include "ops/ops.h"

#define RB_UNET_MAX_BLOCKS 6
#define RB_UNET_MAX_LAYERS 4 /* resnets per up block = layers_per_block + 1 */

typedef struct rb_unet_config {
    int in_channels, out_channels;
    int n_blocks;                               /* number of down (= up) blocks */
    int block_out[RB_UNET_MAX_BLOCKS];          /* block_out_channels */
    int down_attn[RB_UNET_MAX_BLOCKS];          /* 1: CrossAttnDownBlock2D, 0: DownBlock2D */
    int up_attn[RB_UNET_MAX_BLOCKS];            /* 1: CrossAttnUpBlock2D, 0: UpBlock2D (up-block order) */
    int mid_attn;                               /* 1: UNetMidBlock2DCrossAttn */
    int layers_per_block;
    int transformer_layers[RB_UNET_MAX_BLOCKS]; /* per down block; mid uses the last; up block i uses [n-1-i] */
    int heads[RB_UNET_MAX_BLOCKS];              /* per down block (same reversal); head dim = channels / heads */
    int cross_attention_dim;
    int use_linear_projection;                  /* 1: Linear proj_in/out (SDXL), 0: 1x1 Conv2d (SD 1.x) */
    int norm_groups;
    float norm_eps;
    int flip_sin_to_cos;
    float freq_shift;
    int text_time;                              /* addition_embed_type == "text_time" (SDXL) */
    int addition_time_embed_dim;                /* sinusoid width per time id */
    int add_embed_in;                           /* projection_class_embeddings_input_dim */
    int time_embed_dim;                         /* 4 * block_out[0] */
} rb_unet_config;

/* Reads a diffusers unet/config.json; unsupported variants fail with RB_ERR_UNSUPPORTED naming the key. */
rb_status rb_unet_config_load(rb_unet_config *cfg, const char *path);
/* Consistency of a config (channels vs groups/heads, sizes); `path` names it in messages. */
rb_status rb_unet_config_check(const rb_unet_config *cfg, const char *path);

/* ---- weights ---- */

typedef struct rb_unet_resnet { /* ResnetBlock2D */
    int cin, cout;
    rb_tensor *norm1_w, *norm1_b, *conv1_w, *conv1_b, *temb_w, *temb_b;
    rb_tensor *norm2_w, *norm2_b, *conv2_w, *conv2_b;
    rb_tensor *short_w, *short_b; /* 1x1 conv_shortcut when cin != cout, else NULL */
} rb_unet_resnet;

/* One Attention module, as handed to processors. */
#define RB_UNET_MAX_LORA 8

typedef struct rb_unet_attn {
    int index;        /* position in the processor order (see top of file) */
    int cross;        /* 0: attn1 (self), 1: attn2 (cross) */
    char name[112];   /* diffusers module path, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn2" */
    int heads, dim;   /* dim = query/hidden channels C = heads * head_dim */
    int context_dim;  /* key/value input width: C for attn1, cross_attention_dim for attn2 */
    rb_tensor *to_q;  /* [C, C]            (no bias) */
    rb_tensor *to_k;  /* [C, context_dim]  (no bias) */
    rb_tensor *to_v;  /* [C, context_dim]  (no bias) */
    rb_tensor *to_out_w, *to_out_b; /* to_out.0: [C, C], [C] */
    /* run-time LoRA pairs per projection (RB_UNET_Q..RB_UNET_OUT), set by rb_unet_attach_lora */
    const rb_lora_pair *lora[4][RB_UNET_MAX_LORA];
    int n_lora[4];
} rb_unet_attn;

enum { RB_UNET_Q = 0, RB_UNET_K, RB_UNET_V, RB_UNET_OUT };

typedef struct rb_unet_tblock { /* BasicTransformerBlock */
    rb_tensor *norm1_w, *norm1_b, *norm2_w, *norm2_b, *norm3_w, *norm3_b;
    rb_unet_attn attn1, attn2;
    rb_tensor *ff_in_w, *ff_in_b;   /* ff.net.0.proj (GEGLU): [8C, C], [8C] */
    rb_tensor *ff_out_w, *ff_out_b; /* ff.net.2: [C, 4C], [C] */
} rb_unet_tblock;

typedef struct rb_unet_transformer { /* Transformer2DModel */
    int channels, depth, heads;
    rb_tensor *norm_w, *norm_b;          /* GroupNorm(groups, C, eps 1e-6) */
    rb_tensor *proj_in_w, *proj_in_b;    /* [C, C] linear or [C, C, 1, 1] conv */
    rb_tensor *proj_out_w, *proj_out_b;
    rb_unet_tblock *blocks;              /* [depth] */
} rb_unet_transformer;

typedef struct rb_unet_block {
    int n_layers, has_attn, channels;
    rb_unet_resnet resnets[RB_UNET_MAX_LAYERS];
    rb_unet_transformer attns[RB_UNET_MAX_LAYERS];
    rb_tensor *sampler_w, *sampler_b; /* downsamplers.0.conv / upsamplers.0.conv, or NULL */
} rb_unet_block;

typedef enum { RB_UNET_DIFFUSERS = 0, RB_UNET_SGM = 1 /* SGM (SDXL) and LDM (SD 1.x): same UNet names */ } rb_unet_layout;

typedef struct rb_unet {
    rb_unet_config cfg;
    rb_weights w;
    rb_unet_layout layout;
    char prefix[32]; /* of the file's UNet keys, e.g. "model.diffusion_model." */
    rb_tensor *time_l1_w, *time_l1_b, *time_l2_w, *time_l2_b; /* time_embedding.linear_{1,2} */
    rb_tensor *add_l1_w, *add_l1_b, *add_l2_w, *add_l2_b;     /* add_embedding.linear_{1,2} (text_time) */
    rb_tensor *conv_in_w, *conv_in_b;
    rb_unet_block down[RB_UNET_MAX_BLOCKS], up[RB_UNET_MAX_BLOCKS], mid; /* mid: resnets 0,1 + attns 0 */
    rb_tensor *norm_out_w, *norm_out_b, *conv_out_w, *conv_out_b;
    int n_attn;
    rb_unet_attn **attn; /* [n_attn] in processor order */
} rb_unet;

/* Builds the module structure (channels, names, processor order) from a config, without weights. */
rb_status rb_unet_init(rb_unet *m, const rb_unet_config *cfg);
/* Layout and key prefix of a checkpoint's UNet tensors: `conv_in.weight` -> diffusers,
 * `input_blocks.0.0.weight` -> SGM/LDM, each optionally under `model.diffusion_model.`, `unet.` or
 * `diffusion_model.`. */
rb_status rb_unet_detect_layout(const rb_weights *w, rb_unet_layout *layout, char *prefix, size_t n);
/* Config from tensor shapes (for a checkpoint without config.json). Shapes determine the blocks,
 * widths, layers, transformer depths, cross-attention width, projection kind, in/out channels and
 * the text_time input width; the rest follows the Stable Diffusion conventions: norm_num_groups 32,
 * norm_eps 1e-5, flip_sin_to_cos, freq_shift 0, heads = C/64 (at least 1) with linear projections (SDXL/SD2) and 8
 * with conv projections (SD 1.x), addition_time_embed_dim 256. Logs one line with the result. */
rb_status rb_unet_config_detect(rb_unet_config *cfg, const rb_weights *w, rb_unet_layout layout,
                                const char *prefix);
/* config_json (diffusers; NULL: detect from tensor shapes) + weights (a .safetensors in either layout, detected from its keys). */
rb_status rb_unet_load(rb_unet *m, const char *config_json, const char *weights);
/* dir/config.json + dir/diffusion_pytorch_model.safetensors */
rb_status rb_unet_load_dir(rb_unet *m, const char *dir);
void rb_unet_free(rb_unet *m);
/* UNet tensors of the file (those under the layout's prefix) never used; lists up to max_print. */
int rb_unet_unused(const rb_unet *m, int max_print);

/* Every parameter the model has, by canonical (diffusers) name, with its expected shape. */
typedef struct rb_unet_param {
    const char *name;
    int ndim;
    int64_t shape[4];
    int f32;           /* loaded as f32 (norms, biases) rather than in the stored dtype (matrices) */
    rb_tensor **slot;  /* where the loader puts it */
} rb_unet_param;
void rb_unet_visit_params(rb_unet *m, void (*fn)(void *user, const rb_unet_param *p), void *user);

/* Maps a diffusers parameter name to its name in `layout` (without the file prefix), by the rule
 * tables of unet_keys.c. RB_ERR_INVALID when the name is not a UNet parameter name. */
rb_status rb_unet_map_key(const rb_unet_config *cfg, rb_unet_layout layout, const char *name, char *out,
                          size_t n);

/* ---- run-time LoRA ---- */

/* Attaches every pair of `set` whose module is an attention projection of this UNet
 * (`<attn>.to_q/.to_k/.to_v/.to_out.0`, component "unet"); several sets may be attached, each pair
 * keeping its own scale. Pairs are used by reference: the set must outlive the UNet's use of it.
 * RB_ERR_UNSUPPORTED names the first UNet pair on another module (merge those instead). */
rb_status rb_unet_attach_lora(rb_unet *m, const rb_lora_set *set);
void rb_unet_detach_lora(rb_unet *m);

/* A projection of an attention module with its attached LoRA pairs: x W^T (+ b for to_out.0) + LoRA. */
rb_tensor *rb_unet_attn_proj(rb_ctx *c, const rb_unet_attn *a, int which, rb_tensor *x);

/* ---- attention processors ---- */

/* Computes an Attention module's output (after to_out.0, before the residual add):
 *   hidden:  [B, N, C] the normed hidden states (norm1 / norm2 output), N = height * width
 *   context: [B, L, context_dim] encoder_hidden_states for attn2, `hidden` itself for attn1
 * returns [B, N, C] from c->arena (NULL with c->status set on error). */
typedef rb_tensor *(*rb_unet_attn_fn)(rb_ctx *c, const rb_unet_attn *attn, rb_tensor *hidden, rb_tensor *context,
                                      int64_t height, int64_t width, void *user);
typedef struct rb_unet_proc {
    rb_unet_attn_fn fn; /* NULL: the default processor */
    void *user;
} rb_unet_proc;

/* Default processor: to_out(softmax(q k^T / sqrt(head_dim)) v) with q = to_q(hidden), k/v = to_k/to_v(context). */
rb_tensor *rb_unet_attn_default(rb_ctx *c, const rb_unet_attn *attn, rb_tensor *hidden, rb_tensor *context,
                                int64_t height, int64_t width, void *user);

/* ---- forward ---- */

typedef struct rb_unet_in {
    rb_tensor *sample;                /* [B, in_channels, H, W], H and W multiples of 2^(n_blocks-1) */
    rb_tensor *timestep;              /* [] or [1] (same t for all rows) or [B]; any numeric dtype */
    rb_tensor *encoder_hidden_states; /* [B, L, cross_attention_dim] */
    rb_tensor *text_embeds;           /* [B, add_embed_in - 6 * addition_time_embed_dim] (text_time only) */
    rb_tensor *time_ids;              /* [B, 6] (text_time only) */
    const rb_unet_proc *procs;        /* NULL, or m->n_attn entries indexed by processor index */
    int collect;                      /* fill the intermediate outputs below */
    int recompute;                    /* with a tape: keep only each transformer block's input and output
                                         and recompute the block in backward (training memory); tensors a
                                         processor makes inside a block are then not kept */
} rb_unet_in;

typedef struct rb_unet_out {
    rb_tensor *sample; /* [B, out_channels, H, W] */
    /* with collect (names as the golden intermediate.* tensors): */
    rb_tensor *time_proj, *time_embedding, *add_time_proj, *add_embedding, *conv_in;
    rb_tensor *down[RB_UNET_MAX_BLOCKS], *mid, *up[RB_UNET_MAX_BLOCKS], *conv_norm_out;
} rb_unet_out;

/* Inference without a tape compacts the arena after every block (only skip connections, block
 * outputs and embeddings stay); with c->tape set everything is kept for the backward pass. */
rb_status rb_unet_forward(rb_ctx *c, const rb_unet *m, const rb_unet_in *in, rb_unet_out *out);

#endif
