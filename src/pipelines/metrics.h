/* RelationBench scores of generated images (paper section 4, Table 1):
 *   CLIP-T  cos(CLIP image features, CLIP text features of the whole prompt)      text alignment
 *   CLIP-R  cos(CLIP image features, CLIP text features of the relation predicate) relation alignment
 *   CLIP-I  cos(CLIP image features, CLIP features of a subject's reference image) identity
 *   DINO    cos(DINO embedding of the image, of the reference image)                identity
 * with transformers' CLIPModel (openai/clip-vit-large-patch14 in the paper and in the public
 * reproduction) and a DINO backbone (facebook/dino-vits16 by default; DINOv2 by path). Features are
 * L2-normalised and compared by cosine, as the public evaluation code does (docs/eval.md "Scores").
 * The predicate comes from the caller (text/predicate.h extracts it). Scores are raw cosines here; a
 * rb_score_scale converts them for display, per pair, before any averaging. */
#ifndef RB_PIPELINES_METRICS_H
#define RB_PIPELINES_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include "io/image.h"
#include "models/clip_model.h"
#include "models/dino.h"
#include "models/image_processor.h"
#include "text/clip_tokenizer.h"

/* How a cosine is reported. Papers differ; compare numbers only in the same convention. */
typedef enum rb_score_scale {
    RB_SCORE_COSINE = 0,  /* cos: what the public reproduction reports (CLIP-T 0.276) */
    RB_SCORE_X100 = 1,    /* max(100 cos, 0): torchmetrics CLIPScore; the paper's tables (CLIP-T 30.6) */
    RB_SCORE_W25 = 2,     /* 2.5 max(cos, 0): CLIPScore of Hessel et al. 2021 */
} rb_score_scale;

const char *rb_score_scale_name(rb_score_scale s);              /* "cosine", "x100", "clipscore-w2.5" */
const char *rb_score_scale_formula(rb_score_scale s);           /* "cos", "max(100*cos, 0)", ... */
rb_status rb_score_scale_parse(const char *name, rb_score_scale *out); /* the names above; also "w2.5" */
double rb_score_apply(rb_score_scale s, double cosine);

/* The DINO image embedding. */
typedef enum rb_dino_pool {
    RB_DINO_POOL_CLS = 0,  /* final-LayerNormed [CLS] token: the paper ("class embeddings"), DreamBooth */
    RB_DINO_POOL_MEAN = 1, /* mean of last_hidden_state over all tokens incl. [CLS]: the public reproduction */
} rb_dino_pool;

typedef struct rb_metrics_config {
    const char *clip_dir;      /* CLIPModel folder: config.json, model.safetensors, preprocessor_config.json
                                * (absent: CLIPImageProcessor defaults) */
    const char *tokenizer_dir; /* vocab.json + merges.txt (+ special_tokens_map.json); NULL: clip_dir */
    const char *dino_dir;      /* ViTModel / Dinov2Model folder (+ preprocessor_config.json, absent: the
                                * ViT resp. Bit processor defaults); NULL: no DINO score */
    rb_dino_pool dino_pool;    /* default CLS */
    int ref_resize;            /* > 0: references are converted to RGB and resized to this square (Pillow
                                * bicubic) before the processors, as the reproduction does (512, the size
                                * the generator was given); 0: used as they are. Default 512. */
    rb_dtype matmul_dtype;     /* RB_F32 (default) or RB_BF16 (twice as fast, ~1e-3 on cosines) */
    size_t arena_bytes;        /* activation arena; 0: sized from the models */
} rb_metrics_config;

void rb_metrics_config_init(rb_metrics_config *cfg);

typedef struct rb_metrics {
    rb_metrics_config cfg;
    rb_clip_model clip;
    rb_clip_tokenizer *tok;
    rb_preprocess_config clip_pre, dino_pre;
    rb_dino dino;
    int has_dino;
    void *dino_block; /* an in-memory DINO (benchmark), else NULL */
    rb_arena arena;
    rb_ctx ctx;
} rb_metrics;

/* Loads the models named by cfg (which is copied; its strings must outlive m). */
rb_status rb_metrics_open(rb_metrics *m, const rb_metrics_config *cfg);
void rb_metrics_close(rb_metrics *m);

int rb_metrics_clip_dim(const rb_metrics *m); /* CLIP joint-space width E */
int rb_metrics_dino_dim(const rb_metrics *m); /* DINO width, 0 without DINO */

/* CLIPProcessor(text=texts, padding=True) ids and attention mask, [n, L] with L the longest
 * BOS + BPE + EOS, padded with the pad token; a text of more than 77 tokens is truncated to BOS + 75 +
 * EOS (the public reproduction would fail there instead). ids/mask: int64, n * max_len entries,
 * row stride max_len (max_len >= 77 always suffices); *len gets L. */
rb_status rb_metrics_tokenize(const rb_metrics *m, const char *const *texts, int n, int64_t *ids, int64_t *mask,
                              int max_len, int *len);

/* L2-normalised CLIP text features of n texts -> out [n, E]. */
rb_status rb_metrics_text_features(rb_metrics *m, const char *const *texts, int n, float *out);

/* L2-normalised CLIP image features [E] and DINO embedding [Dd] (dino may be NULL; ignored without
 * DINO) of one image; is_reference applies cfg.ref_resize first. */
rb_status rb_metrics_image_features(rb_metrics *m, const rb_image *img, int is_reference, float *clip, float *dino);

#define RB_METRICS_MAX_REFS 8

typedef struct rb_metrics_scores {
    double clip_t, clip_r;                 /* raw cosines; NAN when the text was not given */
    int n_refs;
    double clip_i[RB_METRICS_MAX_REFS];    /* per subject reference */
    double dino[RB_METRICS_MAX_REFS];      /* NAN without DINO */
    double clip_i_mean, dino_mean;         /* means over references of the raw cosines (NAN if none) */
} rb_metrics_scores;

/* Scores of one generated image. prompt / predicate may be NULL (score skipped). ref_clip
 * [n_refs, E] and ref_dino [n_refs, Dd] (NULL without DINO) are reference features from
 * rb_metrics_image_features(..., is_reference = 1), computed once per subject. */
rb_status rb_metrics_score(rb_metrics *m, const rb_image *generated, const char *prompt, const char *predicate,
                           const float *ref_clip, const float *ref_dino, int n_refs, rb_metrics_scores *out);

/* One line "CLIP-T 27.81  CLIP-R 18.20  CLIP-I 74.20  DINO 62.60  (x100 = max(100*cos, 0))";
 * multi-reference CLIP-I / DINO are the means of the scaled per-reference values. */
void rb_metrics_scores_print(FILE *f, const rb_metrics_scores *s, rb_score_scale scale);

/* cos(a, b) of n floats in double (F.cosine_similarity with eps 1e-8). */
double rb_metrics_cosine(const float *a, const float *b, int n);

/* ---- benchmark ---- */

typedef struct rb_metrics_bench_result {
    int threads;
    rb_dtype matmul_dtype;
    double build_s;       /* building the random models in memory */
    double preprocess_s;  /* 1024x1024 -> CLIP 224 and DINO 224 pixels */
    double clip_image_s;  /* CLIP ViT-L/14 vision tower, one image */
    double clip_text_s;   /* CLIP text tower, prompt + predicate */
    double dino_s;        /* DINO ViT-S/16, one image */
    double total_s;       /* rb_metrics_score of one 1024x1024 image, references cached (best of reps) */
    double reference_s;   /* features of one 1024x1024 reference (once per subject) */
    double gflop;         /* matrix-product work of one total_s call */
} rb_metrics_bench_result;

/* Times scoring one 1024x1024 image (CLIP-T, CLIP-R, CLIP-I and DINO against one reference) with
 * CLIP ViT-L/14 and DINO ViT-S/16 at full size, random f32 weights built in memory (no files), on
 * `threads` threads (0: keep the current setting), `reps` timed repetitions after one warm-up (the
 * best is reported). Needs ~2 GiB of memory. */
rb_status rb_metrics_bench(int threads, rb_dtype matmul_dtype, int reps, rb_metrics_bench_result *out);

#endif
