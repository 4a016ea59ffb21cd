/* `relbooth eval` over MPI ranks (docs/eval.md "Scale-out"). Every rank reads the manifest, lists the
 * images and reads the results logs the same way, so all agree on the items without talking; rank r then
 * generates and scores the items of the cases c with c % size == r and appends each scored image to its
 * own <out>/results.rank<r>.jsonl (fsync'ed: an interrupted run loses at most one image per rank, and
 * no two processes ever append to the same file). At the end rank 0 gathers the lines scored in this run
 * and the counters, folds every scored item that results.jsonl lacks into it, removes the rank logs
 * and writes the outputs from the items in manifest order, so they do not depend on the process count.
 * A rerun (with any process count) reads results.jsonl and any rank logs still there. */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/dist.h"
#include "core/mem.h"
#include "pipelines/eval_internal.h"

int eval_mine(const eval_item *it) { return it->c % rb_dist_size() == rb_dist_rank(); }

void eval_log_path(const rb_eval_params *p, char *path, size_t cap) {
    if (rb_dist_size() == 1)
        snprintf(path, cap, "%s/results.jsonl", p->out_dir);
    else
        snprintf(path, cap, "%s/results.rank%d.jsonl", p->out_dir, rb_dist_rank());
}

rb_status eval_dist_agree(rb_status s, const char *what) {
    if (rb_dist_size() == 1)
        return s;
    int failed = s != RB_OK;
    rb_status m = rb_dist_any(&failed);
    if (m != RB_OK)
        return m;
    if (failed && s == RB_OK)
        return rb_error(RB_ERR_INVALID, "eval: another rank failed %s (see its message)", what);
    return s;
}

/* This rank's lines of the images it scored in this run, one per line. */
static rb_status new_lines(const eval_run *r, char **out, size_t *len) {
    size_t n = 0, cap = 0;
    char *buf = NULL;
    for (int i = 0; i < r->n_items; i++) {
        if (!r->items[i].scored_now)
            continue;
        json_t *j = eval_results_line(r, &r->items[i]);
        char *line = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        size_t k = line ? strlen(line) : 0;
        if (line && n + k + 2 > cap) {
            size_t nc = 2 * (n + k + 2);
            char *nb = rb_alloc(nc, "eval merge");
            if (nb && n)
                memcpy(nb, buf, n);
            rb_free(buf);
            buf = nb, cap = nc;
        }
        if (!line || !buf) {
            free(line);
            rb_free(buf);
            return rb_error(RB_ERR_OOM, "eval: collecting the scores to merge");
        }
        memcpy(buf + n, line, k);
        buf[n + k] = '\n';
        n += k + 1;
        free(line);
    }
    *out = buf, *len = n;
    return RB_OK;
}

/* 1 when the file does not end with a newline (an append was cut short). */
static int ends_mid_line(const char *path) {
    FILE *f = fopen(path, "rb");
    int c = EOF;
    if (f && fseek(f, -1, SEEK_END) == 0)
        c = fgetc(f);
    if (f)
        fclose(f);
    return c != EOF && c != '\n';
}

/* Rank 0: append every scored item that results.jsonl lacks, then remove the rank logs. */
static rb_status fold_logs(eval_run *r) {
    const rb_eval_params *p = r->p;
    char path[8192], log[8192];
    snprintf(log, sizeof log, "%s/results.jsonl", p->out_dir);
    FILE *f = NULL;
    rb_status s = RB_OK;
    for (int i = 0; i < r->n_items && s == RB_OK; i++) {
        eval_item *it = &r->items[i];
        if (!it->done || it->in_log)
            continue;
        if (!f) {
            int fresh = access(log, F_OK) != 0, cut = !fresh && ends_mid_line(log);
            if (!(f = fopen(log, "a")))
                return rb_error(RB_ERR_IO, "output folder %s: cannot write results.jsonl: %s", p->out_dir,
                                strerror(errno));
            /* start on a new line after an interrupted append (the partial line is ignored) */
            if (cut && fputc('\n', f) == EOF)
                s = rb_error(RB_ERR_IO, "%s: write failed", log);
            if (s == RB_OK && fresh)
                s = eval_results_append(f, log, eval_results_header(p));
            if (s != RB_OK)
                break;
        }
        json_t *line = eval_results_line(r, it);
        s = line ? eval_results_append(f, log, line) : rb_error(RB_ERR_OOM, "eval");
        it->in_log = s == RB_OK;
    }
    if (f && fclose(f) != 0 && s == RB_OK)
        s = rb_error(RB_ERR_IO, "%s: close failed", log);
    if (s != RB_OK)
        return s;
    /* every line of the rank logs is now in results.jsonl (fsync'ed above), or matched no item */
    DIR *d = opendir(p->out_dir);
    if (!d)
        return rb_error(RB_ERR_IO, "output folder %s: cannot read it: %s", p->out_dir, strerror(errno));
    for (struct dirent *e; (e = readdir(d));) {
        int rank, end = 0;
        if (sscanf(e->d_name, "results.rank%d.jsonl%n", &rank, &end) != 1 || e->d_name[end])
            continue;
        snprintf(path, sizeof path, "%s/%s", p->out_dir, e->d_name);
        if (unlink(path) != 0 && s == RB_OK)
            s = rb_error(RB_ERR_IO, "%s: cannot remove it after merging: %s", path, strerror(errno));
    }
    closedir(d);
    return s;
}

rb_status eval_dist_merge(eval_run *r, rb_status s, rb_eval_stats *st) {
    int rank = rb_dist_rank(), size = rb_dist_size();
    if (size > 1) {
        /* every rank takes part in each collective below whatever its own status */
        char *lines = NULL, *all = NULL, *errs = NULL;
        size_t n = 0;
        size_t *off = rb_alloc(2 * ((size_t)size + 1) * sizeof(size_t), "eval merge"), *eoff = off + size + 1;
        rb_status m = off ? new_lines(r, &lines, &n) : RB_ERR_OOM;
        if (m != RB_OK && s == RB_OK)
            s = m; /* its images stay in its rank log for a rerun */
        char mine[1024];
        snprintf(mine, sizeof mine, "%s", s != RB_OK ? rb_last_error() : "");
        double counts[4] = {st->generated, st->scored, st->skipped_generate, st->skipped_score};
        int failed = !off;
        m = rb_dist_any(&failed);
        if (m == RB_OK && failed)
            m = rb_error(RB_ERR_OOM, "eval: out of memory merging the ranks' scores");
        if (m == RB_OK)
            m = rb_dist_gather_bytes(s == RB_OK ? lines : "", s == RB_OK ? n : 0, 0, &all, off);
        if (m == RB_OK)
            m = rb_dist_gather_bytes(mine, strlen(mine), 0, &errs, eoff);
        if (m == RB_OK)
            m = rb_dist_allreduce_sum_f64(counts, 4);
        if (m != RB_OK && s == RB_OK)
            s = m;
        if (rank == 0 && s == RB_OK) {
            for (int q = 1; q < size && s == RB_OK; q++)
                if (eoff[q + 1] > eoff[q])
                    s = rb_error(RB_ERR_INVALID, "rank %d: %.*s", q, (int)(eoff[q + 1] - eoff[q]), errs + eoff[q]);
            for (char *line = all, *next; s == RB_OK && line && *line; line = next) {
                next = strchr(line, '\n');
                if (next)
                    *next++ = 0;
                json_t *j = json_loads(line, 0, NULL);
                if (!j || !eval_results_apply(r, j, 0))
                    s = rb_error(RB_ERR_INTERNAL, "eval: a rank sent a score line that matches no image: %.200s",
                                 line);
                json_decref(j);
            }
        }
        st->generated = (int)counts[0], st->scored = (int)counts[1];
        st->skipped_generate = (int)counts[2], st->skipped_score = (int)counts[3];
        rb_free(lines), rb_free(all), rb_free(errs), rb_free(off);
    }
    if (rank == 0 && s == RB_OK) {
        for (int i = 0; i < r->n_items; i++)
            if (!r->items[i].done)
                return rb_error(RB_ERR_INTERNAL, "eval: image %s was not scored", r->items[i].image);
        s = fold_logs(r);
    }
    return s;
}
