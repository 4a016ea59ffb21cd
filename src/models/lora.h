/* LoRA: load low-rank adapters in the layouts people publish (PEFT, diffusers, kohya with diffusers
 * or SGM module names), normalise them to diffusers module paths, and apply them either by merging
 * into a weight (W' = W + s * alpha/r * up @ down) or at run time inside a linear layer
 * (y = x W^T + b + s * alpha/r * (x down^T) up^T), differentiably, so RelationLoRA can be trained.
 *
 * Names: `module` is the diffusers/transformers module path inside its component, e.g.
 * "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q" in component "unet".
 * Every key of a file that does not become part of a pair is listed in `unused` (never dropped
 * silently). See docs/lora.md for the formats and their alpha rules. */
#ifndef RB_MODELS_LORA_H
#define RB_MODELS_LORA_H

#include "io/safetensors.h"
#include "ops/ops.h"

typedef struct rb_lora_pair {
    const char *component; /* "unet", "text_encoder" or "text_encoder_2" */
    const char *module;    /* diffusers module path inside the component */
    rb_tensor *down;       /* A: f32 [r, in] (conv LoRA: [r, in, kh, kw]); owned by the set, writable */
    rb_tensor *up;         /* B: f32 [out, r] (conv LoRA: [out, r, 1, 1]) */
    int rank;              /* r */
    float alpha;           /* the adapter's alpha: its own multiplier is alpha / r */
    float scale;           /* user strength (diffusers' cross_attention_kwargs["scale"]) */
} rb_lora_pair;

/* Effective factor of a pair: scale * alpha / rank. */
static inline float rb_lora_multiplier(const rb_lora_pair *p) { return p->scale * p->alpha / (float)p->rank; }

enum { RB_LORA_FMT_PEFT = 1, RB_LORA_FMT_DIFFUSERS = 2, RB_LORA_FMT_DIFFUSERS_PROC = 4, RB_LORA_FMT_KOHYA = 8,
       RB_LORA_FMT_KOHYA_SGM = 16 };

typedef struct rb_lora_set {
    char *path;            /* source file, or NULL for a set built with rb_lora_add */
    int n, cap;
    rb_lora_pair **pairs;  /* each pair lives in its own block: pointers are stable */
    int n_unused;
    char **unused;         /* file keys that were not used (sorted as in the file) */
    int formats;           /* RB_LORA_FMT_* bits seen */
    /* private */
    void *index;           /* rb_strmap "component:module" -> pair index */
} rb_lora_set;

typedef struct rb_lora_options {
    float scale;         /* initial scale of every pair (default 1) */
    float default_alpha; /* > 0: alpha of PEFT/diffusers pairs that store none (adapter_config.json's
                            lora_alpha); 0: the file's lora_adapter_metadata, else alpha = rank */
    int log_unused;      /* print unused keys to stderr (up to 20) */
} rb_lora_options;

static inline rb_lora_options rb_lora_defaults(void) {
    rb_lora_options o = {1.0f, 0.0f, 1};
    return o;
}

/* Parses a LoRA file (safetensors). opt may be NULL (defaults). */
rb_status rb_lora_load(rb_lora_set *s, const char *path, const rb_lora_options *opt);
/* Same from an open safetensors file (tensors are copied to f32; f may be closed afterwards). */
rb_status rb_lora_load_st(rb_lora_set *s, const rb_safetensors *f, const rb_lora_options *opt);
void rb_lora_free(rb_lora_set *s);

/* An empty set (for training), then one zero-initialised pair per module; returns the pair or NULL. */
void rb_lora_init(rb_lora_set *s);
rb_lora_pair *rb_lora_add(rb_lora_set *s, const char *component, const char *module, int rank, int64_t in_features,
                          int64_t out_features, float alpha);
/* Writes the set in the diffusers format that DreamRelation's train.py saves
 * (`<component>.<module>.lora.down.weight` / `.lora.up.weight`, f32), plus `<component>.<module>.alpha`
 * for pairs whose alpha differs from their rank. */
rb_status rb_lora_save(const rb_lora_set *s, const char *path);

/* The pair of a UNet module (NULL if none). */
const rb_lora_pair *rb_lora_find(const rb_lora_set *s, const char *module_path);
const rb_lora_pair *rb_lora_find_in(const rb_lora_set *s, const char *component, const char *module_path);
void rb_lora_set_scale(rb_lora_set *s, float scale);

/* out = W + sum_p s_p * alpha_p / r_p * up_p @ down_p, in f32 (pairs: an array of pair values).
 * W: [out, in] or [out, in, kh, kw] in any float dtype and layout; out: f32, contiguous, same shape
 * (out->data may equal W->data when W is f32 contiguous).
 * For f16/bf16 base weights merge into an f32 buffer and, if wanted, convert back with rb_tensor_copy. */
rb_status rb_lora_merge(rb_tensor *out, const rb_tensor *W, const rb_lora_pair *pairs, int n_pairs);

/* y = x W^T + b + sum_p s_p * alpha_p / r_p * (x down_p^T) up_p^T, from rb_linear/rb_scale/rb_add, so it
 * records on the tape and gives gradients to x, down and up (and W, b if they need them).
 * x [..., in], W [out, in], b [out] or NULL; pairs is an array of pair values (copies of what
 * rb_lora_find returns, one per loaded LoRA; the tensors are shared), NULL when n_pairs = 0. */
rb_tensor *rb_lora_linear(rb_ctx *c, rb_tensor *x, rb_tensor *W, rb_tensor *b, const rb_lora_pair *pairs, int n_pairs);

/* kohya module stem without its "lora_unet_" prefix, in diffusers ("down_blocks_1_attentions_0_...") or
 * SGM ("input_blocks_4_1_transformer_blocks_0_attn2_to_q") naming -> diffusers module path
 * ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q"). RB_ERR_FORMAT if not a UNet module name. */
rb_status rb_lora_kohya_unet_module(const char *stem, char *out, size_t cap);
/* SGM (ldm) UNet module path ("input_blocks.4.1.proj_in", no "model.diffusion_model." prefix) -> diffusers
 * module path, through the SD1.x/SDXL block table. */
rb_status rb_lora_sgm_unet_module(const char *sgm, char *out, size_t cap);

#endif
