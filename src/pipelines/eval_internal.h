/* Shared between eval.c (the run) and eval_report.c (metrics.json, cases.csv, report.html). */
#ifndef RB_PIPELINES_EVAL_INTERNAL_H
#define RB_PIPELINES_EVAL_INTERNAL_H

#include "pipelines/eval.h"

/* One generated image of a case: its raw cosines once scored. */
typedef struct eval_item {
    int c;          /* case index */
    uint64_t seed;
    char *image;    /* path (rb_alloc) */
    int done;       /* scored (now or in an earlier run) */
    double clip_t, clip_r;
    double *clip_i, *dino; /* [n_refs of the case]: per subject, per reference image; dino NAN without DINO */
    int n_refs;
} eval_item;

typedef struct eval_run {
    const rb_eval_params *p;
    rb_eval_manifest man;
    eval_item *items;
    int n_items;
} eval_run;

/* Scaled per-image scores: CLIP-I / DINO are the mean over subjects of the mean over their references of
 * the scaled per-reference values (NAN when the case has no subject, DINO NAN without DINO). */
void eval_item_scores(const eval_run *r, const eval_item *it, double out[4]);

/* Writes metrics.json, cases.csv, report.html (and report thumbnails under thumbs/) into p->out_dir,
 * each atomically; fills the means in stats. */
rb_status eval_write_outputs(eval_run *r, rb_eval_stats *stats);

#endif
