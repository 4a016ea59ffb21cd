/* RelationLoRA training data: DreamRelation's official folder layout (data/hug, data/shake) and a JSON
 * manifest of our own, turned into exactly the tensors of the official KeypointsDataset.__getitem__
 * (src/dataset/data.py + data_utils.py, commit 1767aac2b336). docs/training-data.md has the formats,
 * the transform step by step, the validation rules and the missing-predicate fallback.
 *
 *   rb_relation_data_options o; rb_relation_data_options_init(&o);
 *   rb_relation_dataset ds;     RB_TRY(rb_relation_dataset_open(&ds, "data/hug", &o));
 *   rb_relation_sample s;       RB_TRY(rb_relation_sample_load(&ds, 0, &s));
 *   ... s.image, s.keypoints ...
 *   rb_relation_sample_free(&s); rb_relation_dataset_close(&ds);
 */
#ifndef RB_PIPELINES_RELATION_DATA_H
#define RB_PIPELINES_RELATION_DATA_H

#include <stdint.h>

#include "core/tensor.h"

#define RB_RELATION_MAX_ENTITIES 2
#define RB_RELATION_KEYPOINTS 17

/* The random draws of data_utils.py, in Python's `random` API: random() in [0, 1) and randint(a, b)
 * in [a, b] inclusive. The reference draws in this order per item: for each concept image then the
 * motion image: random() (crop branch if < crop_p), the crop draws if any, then the paste offsets y, x.
 * NULL functions: a built-in splitmix64 generator seeded with options.seed (not Python's MT19937). */
typedef struct rb_relation_rng {
    double (*random)(void *user);
    int64_t (*randint)(void *user, int64_t a, int64_t b);
    void *user;
} rb_relation_rng;

typedef struct rb_relation_data_options {
    int size;             /* canvas size, KeypointsDataset(size=1024) */
    int mask_res;         /* 128: the masks' cv2.resize target (latent resolution) */
    int clip_resize;      /* 512: concept .resize((512, 512)) before the CLIP processor; 0 skips concept_images */
    double crop_p;        /* 0.5: RandomResizeCrop's crop probability */
    int expect_size;      /* > 0: every image (concepts, motion) must be expect_size x expect_size (official: 1024) */
    int allow_soft_masks; /* 0: mask pixels must be 0 or 255; 1: any gray value (what the reference tolerates) */
    int derive_predicate; /* 0: a sample without "predicate" fails at open; 1: derive it from the prompt */
    int check_files;      /* 1: open checks that every file of every sample exists */
    uint64_t seed;        /* for the built-in generator */
    rb_relation_rng rng;
} rb_relation_data_options;

void rb_relation_data_options_init(rb_relation_data_options *o);

/* Keypoints of one sample come from a torch file or inline numbers (manifest). */
typedef struct rb_relation_kp_src {
    char *path;  /* torch.save file holding one float tensor, or NULL */
    float *data; /* inline values, or NULL */
    int64_t rows; /* inline: number of (17, 2) rows */
} rb_relation_kp_src;

typedef struct rb_relation_item {
    char *id;
    char *prompt;
    int n; /* entities = concept images = masks = motion keypoint rows (1 or 2) */
    char *entities[RB_RELATION_MAX_ENTITIES];
    int n_predicate;
    char **predicate;
    int predicate_derived; /* 1 when prompts.json had none and the fallback made it */
    char *motion_path;
    char *concept_paths[RB_RELATION_MAX_ENTITIES];
    char *mask_paths[RB_RELATION_MAX_ENTITIES];
    rb_relation_kp_src motion_kp;
    rb_relation_kp_src concept_kp[RB_RELATION_MAX_ENTITIES];
} rb_relation_item;

typedef struct rb_relation_dataset {
    char *source; /* the root folder or manifest path, for messages */
    int is_manifest;
    int n_items;
    rb_relation_item *items;
    rb_relation_data_options opt;
    uint64_t rng_state; /* built-in generator */
} rb_relation_dataset;

/* One item of KeypointsDataset (n = entities). Tensors are contiguous, data from rb_alloc. */
typedef struct rb_relation_sample {
    const rb_relation_item *item; /* id, prompt, entities, predicate (owned by the dataset) */
    rb_tensor image;                  /* f32 [3, S, S]  "images": motion.png on the canvas, in [-1, 1] */
    rb_tensor concept_images_for_vae; /* f32 [n, 3, S, S] the concepts through the same transform */
    rb_tensor concept_images;         /* f32 [n, 3, 224, 224] CLIP processor of the 512x512 concepts (or empty) */
    rb_tensor keypoints;              /* f32 [2n, 17, 2] cat(motion (n), concept_1 (1), ..., concept_n (1)) */
    rb_tensor mask_values;            /* f32 [n, R, R] the masks after the transform, before >= 0.5 */
    rb_tensor masks;                  /* f32 [n, R, R] mask_values >= 0.5, as 0/1 */
    rb_tensor object_segmaps;         /* f32 [R, R] max over masks */
    rb_tensor bboxes;                 /* f32 [n, 4] (x1, y1, x2, y2) inclusive extent / R, zeros if empty */
    int64_t original_size[2];         /* (h, w) of motion.png */
    int64_t crop_top_left[2];         /* always (0, 0) as in the reference */
    /* the transform's draws, for inspection: per image (concepts then motion) paste (y, x) and size */
    int paste_y[RB_RELATION_MAX_ENTITIES + 1], paste_x[RB_RELATION_MAX_ENTITIES + 1];
    int pasted_h[RB_RELATION_MAX_ENTITIES + 1], pasted_w[RB_RELATION_MAX_ENTITIES + 1];
} rb_relation_sample;

/* root_or_manifest: a folder with prompts.json, videos/, masks/ (official layout), or a .json manifest
 * (docs/training-data.md). Parses the prompts, resolves paths and (check_files) checks they exist;
 * images and keypoints are read by rb_relation_sample_load. Errors name the sample and the file. */
rb_status rb_relation_dataset_open(rb_relation_dataset *ds, const char *root_or_manifest,
                                   const rb_relation_data_options *opt);
int rb_relation_dataset_count(const rb_relation_dataset *ds);
void rb_relation_dataset_close(rb_relation_dataset *ds);

/* Reads, validates and transforms item `index`; draws from the options' rng. On error nothing stays
 * allocated and the message names the sample id and the file. */
rb_status rb_relation_sample_load(rb_relation_dataset *ds, int index, rb_relation_sample *s);
void rb_relation_sample_free(rb_relation_sample *s);

/* The fallback predicate (docs/training-data.md): the words of `prompt` between the first occurrence
 * of entities[0] and the following occurrence of entities[1] (whole words, case-insensitive, punctuation
 * trimmed), without leading/trailing "a", "an", "the", "and"; if that is empty, the words after the
 * last entity (for one entity: the words after it). Writes a NUL-terminated string into out (cap bytes); RB_ERR_INVALID if none is found. */
rb_status rb_relation_derive_predicate(const char *prompt, int n_entities, char *const *entities, char *out,
                                       size_t cap);

#endif
