/* Shared between eval.c (the run) and eval_report.c (metrics.json, cases.csv, report.html). */
#ifndef RB_PIPELINES_EVAL_INTERNAL_H
#define RB_PIPELINES_EVAL_INTERNAL_H

#include <jansson.h>

#include "pipelines/eval.h"

/* One generated image of a case: its raw cosines once scored. */
typedef struct eval_item {
    int c;          /* case index */
    uint64_t seed;
    char *image;    /* path (rb_alloc) */
    int done;       /* scored (now or in an earlier run) */
    int in_log;     /* its line is in results.jsonl (not only in a rank's results.rank<R>.jsonl) */
    int scored_now; /* scored by this process in this run */
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

/* results.jsonl lines (eval.c): the header naming the scoring models, an item's line with its raw
 * cosines, appending one (fsync'ed), and marking the item a line describes as done (0: matches none). */
json_t *eval_results_header(const rb_eval_params *p);
json_t *eval_results_line(const eval_run *r, const eval_item *it);
rb_status eval_results_append(FILE *f, const char *path, json_t *line); /* takes the reference */
int eval_results_apply(eval_run *r, json_t *line, int in_log);

/* Scale-out over MPI ranks (eval_dist.c, docs/eval.md "Scale-out"). A rank owns the items of the
 * cases c with c % size == rank; it generates and scores only those and logs them in its own
 * results.rank<R>.jsonl (results.jsonl itself when alone). */
int eval_mine(const eval_item *it);
void eval_log_path(const rb_eval_params *p, char *path, size_t cap); /* this rank's log */
/* Every rank calls it at the same point: s, or an error when another rank failed (`what` it was doing). */
rb_status eval_dist_agree(rb_status s, const char *what);
/* After scoring, on every rank: rank 0 receives the other ranks' new lines and counters, then folds
 * every scored item that results.jsonl lacks into it and removes the results.rank*.jsonl logs.
 * s is this rank's status so far; returns it, or on rank 0 the first failing rank's error. */
rb_status eval_dist_merge(eval_run *r, rb_status s, rb_eval_stats *st);

/* Scaled per-image scores: CLIP-I / DINO are the mean over subjects of the mean over their references of
 * the scaled per-reference values (NAN when the case has no subject, DINO NAN without DINO). */
void eval_item_scores(const eval_run *r, const eval_item *it, double out[4]);

/* Writes metrics.json, cases.csv, report.html (and report thumbnails under thumbs/) into p->out_dir,
 * each atomically; fills the means in stats. */
rb_status eval_write_outputs(eval_run *r, rb_eval_stats *stats);

#endif
