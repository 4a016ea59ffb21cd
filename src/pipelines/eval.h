/* RelationBench evaluation (`relbooth eval`): reads a benchmark manifest (the public RelationBench
 * prompts.json form, or our own JSON form; both in docs/eval.md), generates the cases' images through
 * rb_generate or takes them from a folder (<case id>_<seed>.png), scores them with CLIP-T / CLIP-R /
 * CLIP-I / DINO (pipelines/metrics.h) and writes metrics.json, cases.csv and report.html into the output
 * folder. Every scored image is appended to results.jsonl (raw cosines) as soon as it is done, so a rerun
 * skips finished images and cases, and the convention can be changed without rescoring. */
#ifndef RB_PIPELINES_EVAL_H
#define RB_PIPELINES_EVAL_H

#include <stdint.h>
#include <stdio.h>

#include "pipelines/generate.h"
#include "pipelines/metrics.h"

#define RB_EVAL_MAX_SEEDS 64

typedef struct rb_eval_subject {
    char *name;    /* unique in the manifest ("cat_0", "cat_0/00" in the RelationBench form) */
    char *phrase;  /* the words that stand for it in the prompt ("cat"), given to the generator */
    char **images; /* resolved reference paths; images[0] is the generator's reference */
    int n_images;
} rb_eval_subject;

typedef struct rb_eval_case {
    char *id;        /* [A-Za-z0-9._-]+, unique; names the output files */
    char *prompt;    /* as written in the manifest ("{}" slots or subject words) */
    char *text;      /* the prompt with its slots filled by the subjects' phrases (generator, CLIP-T) */
    char *predicate; /* the relation predicate (CLIP-R) */
    char *lora;      /* a per-case LoRA file (resolved), or NULL */
    float lora_scale;
    int subjects[RB_MAX_SUBJECTS]; /* indices into the manifest's subjects */
    float boxes[RB_MAX_SUBJECTS][4];
    int n_subjects;
} rb_eval_case;

typedef enum { RB_EVAL_RELBOOTH = 0, RB_EVAL_RELATIONBENCH = 1 } rb_eval_format;

typedef struct rb_eval_manifest {
    rb_eval_format format;
    rb_eval_subject *subjects;
    int n_subjects;
    rb_eval_case *cases;
    int n_cases;
    void **owned; /* every allocation, freed by rb_eval_manifest_free */
    int n_owned, cap_owned;
} rb_eval_manifest;

/* Reads a manifest: a JSON array is the RelationBench form (entries {sub1, prompt, phrase[, model]},
 * reference images in <root>/<sub1>/; root NULL: the manifest's folder; lora_dir, if not NULL, turns
 * "model" into <lora_dir>/<model>/pytorch_lora_weights.safetensors), a JSON object with "cases" is ours.
 * Every reference image is probed. Errors (RB_ERR_INVALID / RB_ERR_IO / RB_ERR_FORMAT) name the case:
 * "case hug_0: reference image refs/cat.png: ...", "case hug_0: prompt has 1 {} slot(s) but 2
 * subjects", "manifest x.json: no cases". */
rb_status rb_eval_manifest_load(rb_eval_manifest *m, const char *path, const char *root, const char *lora_dir);
void rb_eval_manifest_free(rb_eval_manifest *m);

typedef struct rb_eval_params {
    const char *manifest;
    const char *root;     /* RelationBench reference root (NULL: the manifest's folder) */
    const char *lora_dir; /* RelationBench "model" LoRAs (NULL: ignored) */
    const char *out_dir;  /* created if missing (its parent must exist) */
    const char *images_dir; /* score this folder; NULL: generate into <out_dir>/images */
    /* generation settings (model, adapter, encoder, LoRAs, size, steps, guidance, ...); prompt,
     * subjects and seed are set per case. gen.seed is the first seed when n_seeds is 0. */
    rb_gen_params gen;
    uint64_t seeds[RB_EVAL_MAX_SEEDS]; /* n_seeds 0: generate with gen.seed; score whatever seeds the
                                        * images folder holds for each case */
    int n_seeds;
    rb_metrics_config metrics; /* clip_dir required */
    rb_score_scale scale;
    FILE *log; /* one line per image and the result; NULL: quiet */
    volatile int *cancel; /* checked between images: RB_ERR_CANCELLED */
    /* after each image: generated / scored say what was computed now (0, 0: skipped, already done) */
    void (*on_image)(void *user, const char *case_id, uint64_t seed, int generated, int scored);
    void *user;
} rb_eval_params;

void rb_eval_params_init(rb_eval_params *p); /* rb_gen_params_init, rb_metrics_config_init, x100 */

typedef struct rb_eval_stats {
    int cases, images;                    /* evaluated */
    int generated, scored;                /* computed in this run */
    int skipped_generate, skipped_score;  /* found done */
    double clip_t, clip_r, clip_i, dino;  /* means in p->scale (NAN: no value) */
} rb_eval_stats;

rb_status rb_eval_run(const rb_eval_params *p, rb_eval_stats *stats);

/* "A {} is hugging a {}" -> number of "{}" slots ("{ }" with blanks counts too). */
int rb_eval_count_slots(const char *prompt);

#endif
