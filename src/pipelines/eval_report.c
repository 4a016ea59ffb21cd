/* The outputs of `relbooth eval`, each written atomically (rb_atomic_*): metrics.json (means, counts,
 * convention, models), cases.csv (one row per image), report.html (the metric table and a grid of every
 * case: reference subjects next to each generated image). The report shows thumbnails written into
 * <out>/thumbs/ and links generated images by relative paths, so the output folder can be opened and
 * moved offline. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/file.h"
#include "core/mem.h"
#include "models/image_processor.h"
#include "io/json.h"
#include "pipelines/eval_internal.h"

#define THUMB 192
static const char *const metric_names[4] = {"CLIP-T", "CLIP-R", "CLIP-I", "DINO"};

void eval_item_scores(const eval_run *r, const eval_item *it, double out[4]) {
    rb_score_scale sc = r->p->scale;
    const rb_eval_case *c = &r->man.cases[it->c];
    out[0] = isfinite(it->clip_t) ? rb_score_apply(sc, it->clip_t) : NAN;
    out[1] = isfinite(it->clip_r) ? rb_score_apply(sc, it->clip_r) : NAN;
    double si = 0, sd = 0;
    int q = 0, has_dino = 1;
    for (int k = 0; k < c->n_subjects; k++) {
        int n = r->man.subjects[c->subjects[k]].n_images;
        double mi = 0, md = 0;
        for (int i = 0; i < n; i++, q++) {
            mi += rb_score_apply(sc, it->clip_i[q]);
            if (isfinite(it->dino[q]))
                md += rb_score_apply(sc, it->dino[q]);
            else
                has_dino = 0;
        }
        si += mi / n, sd += md / n;
    }
    out[2] = c->n_subjects ? si / c->n_subjects : NAN;
    out[3] = c->n_subjects && has_dino ? sd / c->n_subjects : NAN;
}

/* A growing text buffer; on OOM it stops growing and `failed` is set. */
typedef struct buf {
    char *p;
    size_t n, cap;
    int failed;
} buf;

static void bput(buf *b, const char *s, size_t n) {
    if (b->failed)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *q = rb_alloc(cap, "eval report");
        if (!q) {
            b->failed = 1;
            return;
        }
        if (b->n)
            memcpy(q, b->p, b->n);
        rb_free(b->p);
        b->p = q, b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void bprintf(buf *b, const char *fmt, ...) RB_PRINTF(2, 3);
static void bprintf(buf *b, const char *fmt, ...) {
    char tmp[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        bput(b, tmp, (size_t)n);
        return;
    }
    char *big = rb_alloc((size_t)n + 1, "eval report");
    if (!big) {
        b->failed = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    bput(b, big, (size_t)n);
    rb_free(big);
}

static void html(buf *b, const char *s) {
    for (; *s; s++) {
        const char *e = *s == '<' ? "&lt;" : *s == '>' ? "&gt;" : *s == '&' ? "&amp;" : *s == '"' ? "&quot;" : NULL;
        if (e)
            bput(b, e, strlen(e));
        else
            bput(b, s, 1);
    }
}

static void csv(buf *b, const char *s) {
    if (!strpbrk(s, ",\"\n\r")) {
        bput(b, s, strlen(s));
        return;
    }
    bput(b, "\"", 1);
    for (; *s; s++) {
        if (*s == '"')
            bput(b, "\"\"", 2); /* a quote inside a quoted field is doubled (RFC 4180) */
        else
            bput(b, s, 1);
    }
    bput(b, "\"", 1);
}

static void num(buf *b, double v) {
    if (isfinite(v))
        bprintf(b, "%.6g", v);
}

static rb_status save(const rb_eval_params *p, const char *name, buf *b) {
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", p->out_dir, name);
    if (b->failed)
        return rb_error(RB_ERR_OOM, "%s: out of memory", path);
    rb_atomic_file f;
    RB_TRY(rb_atomic_open(&f, path));
    return rb_atomic_commit(&f, rb_atomic_write(&f, b->p ? b->p : "", b->n));
}

/* thumbs/<name>: the image scaled to fit THUMB x THUMB (never enlarged), unless it exists. */
static rb_status thumb(const rb_eval_params *p, const char *src, const char *name) {
    char path[8192];
    snprintf(path, sizeof path, "%s/thumbs/%s", p->out_dir, name);
    if (access(path, F_OK) == 0)
        return RB_OK;
    rb_image img, small = {0};
    RB_TRY(rb_image_load(&img, src, 3));
    int w = img.width, h = img.height;
    if (w > THUMB || h > THUMB) {
        w = img.width >= img.height ? THUMB : (int)lround((double)img.width * THUMB / img.height);
        h = img.width >= img.height ? (int)lround((double)img.height * THUMB / img.width) : THUMB;
        w = w < 1 ? 1 : w, h = h < 1 ? 1 : h;
    }
    rb_status s = w == img.width && h == img.height ? RB_OK : rb_image_resize(&small, &img, w, h, RB_RESAMPLE_BICUBIC);
    if (s == RB_OK)
        s = rb_png_write(path, small.data ? &small : &img, 0, NULL, NULL);
    rb_image_free(&img), rb_image_free(&small);
    return s;
}

static void thumb_name(char *out, size_t n, const char *prefix, const char *name, uint64_t k) {
    snprintf(out, n, "%s%s_%" PRIu64 ".png", prefix, name, k);
    for (char *q = out; *q; q++)
        if (!isalnum((unsigned char)*q) && *q != '_' && *q != '-' && *q != '.')
            *q = '_';
}

static rb_status write_report(eval_run *r, const double *means, const int *counts) {
    const rb_eval_params *p = r->p;
    char dir[8192], name[600];
    snprintf(dir, sizeof dir, "%s/thumbs", p->out_dir);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return rb_error(RB_ERR_IO, "output folder %s: cannot create thumbs/: %s", p->out_dir, strerror(errno));
    int fmt2 = p->scale == RB_SCORE_X100;
    buf b = {0};
    bprintf(&b, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>relbooth eval</title>\n<style>"
                "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
                "td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
                "figure{display:inline-block;margin:2px;text-align:center;font-size:small}"
                "figure img{max-width:%dpx;max-height:%dpx;display:block}.ref{background:#eef}</style></head><body>\n",
            THUMB, THUMB);
    bprintf(&b, "<h1>relbooth eval</h1>\n<p>manifest ");
    html(&b, p->manifest);
    bprintf(&b, " (%s form), %d cases, %d images; scores in the <b>%s</b> convention (%s)</p>\n",
            r->man.format == RB_EVAL_RELATIONBENCH ? "RelationBench" : "relbooth", r->man.n_cases, r->n_items,
            rb_score_scale_name(p->scale), rb_score_scale_formula(p->scale));
    bprintf(&b, "<table><tr><th>metric</th><th>mean</th><th>images</th></tr>\n");
    for (int k = 0; k < 4; k++) {
        bprintf(&b, "<tr><td>%s</td><td>", metric_names[k]);
        if (counts[k])
            bprintf(&b, fmt2 ? "%.2f" : "%.4f", means[k]);
        else
            bprintf(&b, "&ndash;");
        bprintf(&b, "</td><td>%d</td></tr>\n", counts[k]);
    }
    bprintf(&b, "</table>\n<h2>Cases</h2>\n<table><tr><th>case</th><th>reference subjects</th>"
                "<th>generated (seed: CLIP-T / CLIP-R / CLIP-I / DINO)</th></tr>\n");
    rb_status s = RB_OK;
    for (int i = 0; i < r->n_items && s == RB_OK; i++) {
        const eval_item *it = &r->items[i];
        const rb_eval_case *c = &r->man.cases[it->c];
        if (i == 0 || r->items[i - 1].c != it->c) {
            bprintf(&b, "<tr><td><b>");
            html(&b, c->id);
            bprintf(&b, "</b><br>");
            html(&b, c->text);
            bprintf(&b, "<br>predicate: <i>");
            html(&b, c->predicate);
            bprintf(&b, "</i></td><td class=\"ref\">");
            for (int k = 0; k < c->n_subjects && s == RB_OK; k++) {
                const rb_eval_subject *sub = &r->man.subjects[c->subjects[k]];
                for (int q = 0; q < sub->n_images && s == RB_OK; q++) {
                    thumb_name(name, sizeof name, "ref_", sub->name, (uint64_t)q);
                    s = thumb(p, sub->images[q], name);
                    bprintf(&b, "<figure><img src=\"thumbs/%s\" alt=\"\"><figcaption>", name);
                    html(&b, sub->phrase);
                    bprintf(&b, "</figcaption></figure>");
                }
            }
            bprintf(&b, "</td><td>");
        }
        char seed[32];
        snprintf(seed, sizeof seed, "%" PRIu64, it->seed);
        thumb_name(name, sizeof name, "img_", c->id, it->seed);
        if (s == RB_OK)
            s = thumb(p, it->image, name);
        double v[4];
        eval_item_scores(r, it, v);
        if (p->images_dir)
            bprintf(&b, "<figure><img src=\"thumbs/%s\" alt=\"\"><figcaption>%s: ", name, seed);
        else
            bprintf(&b, "<figure><a href=\"images/%s_%s.png\"><img src=\"thumbs/%s\" alt=\"\"></a><figcaption>%s: ",
                    c->id, seed, name, seed);
        for (int k = 0; k < 4; k++) {
            if (isfinite(v[k]))
                bprintf(&b, fmt2 ? "%.1f" : "%.3f", v[k]);
            else
                bprintf(&b, "&ndash;");
            bprintf(&b, k < 3 ? " / " : "</figcaption></figure>");
        }
        if (i + 1 == r->n_items || r->items[i + 1].c != it->c)
            bprintf(&b, "</td></tr>\n");
    }
    bprintf(&b, "</table>\n</body></html>\n");
    if (s == RB_OK)
        s = save(p, "report.html", &b);
    rb_free(b.p);
    return s;
}

rb_status eval_write_outputs(eval_run *r, rb_eval_stats *st) {
    const rb_eval_params *p = r->p;
    double sums[4] = {0}, means[4];
    int counts[4] = {0};
    buf b = {0};
    bprintf(&b, "case,seed,image,prompt,predicate,subjects,CLIP-T,CLIP-R,CLIP-I,DINO,convention\n");
    uint64_t seeds[RB_EVAL_MAX_SEEDS];
    int n_seeds = 0;
    for (int i = 0; i < r->n_items; i++) {
        const eval_item *it = &r->items[i];
        const rb_eval_case *c = &r->man.cases[it->c];
        double v[4];
        eval_item_scores(r, it, v);
        for (int k = 0; k < 4; k++)
            if (isfinite(v[k]))
                sums[k] += v[k], counts[k]++;
        int known = 0;
        for (int k = 0; k < n_seeds; k++)
            known |= seeds[k] == it->seed;
        if (!known && n_seeds < RB_EVAL_MAX_SEEDS)
            seeds[n_seeds++] = it->seed;
        csv(&b, c->id);
        bprintf(&b, ",%" PRIu64 ",", it->seed);
        csv(&b, it->image);
        bput(&b, ",", 1);
        csv(&b, c->text);
        bput(&b, ",", 1);
        csv(&b, c->predicate);
        bput(&b, ",", 1);
        buf names = {0};
        for (int k = 0; k < c->n_subjects; k++) {
            if (k)
                bput(&names, ";", 1);
            bprintf(&names, "%s", r->man.subjects[c->subjects[k]].name);
        }
        csv(&b, names.p ? names.p : "");
        b.failed |= names.failed;
        rb_free(names.p);
        for (int k = 0; k < 4; k++)
            bput(&b, ",", 1), num(&b, v[k]);
        bprintf(&b, ",%s\n", rb_score_scale_name(p->scale));
    }
    for (int k = 0; k < 4; k++)
        means[k] = counts[k] ? sums[k] / counts[k] : NAN;
    st->clip_t = means[0], st->clip_r = means[1], st->clip_i = means[2], st->dino = means[3];
    rb_status s = save(p, "cases.csv", &b);
    rb_free(b.p);
    if (s != RB_OK)
        return s;

    json_t *metrics = json_object(), *seeds_j = json_array(), *models = json_object();
    for (int k = 0; k < 4; k++)
        json_object_set_new(metrics, metric_names[k],
                            json_pack("{s:o, s:i}", "mean", counts[k] ? json_real(means[k]) : json_null(), "count",
                                      counts[k]));
    for (int k = 0; k < n_seeds; k++)
        json_array_append_new(seeds_j, json_integer((json_int_t)seeds[k]));
    json_object_set_new(models, "clip", json_string(p->metrics.clip_dir));
    json_object_set_new(models, "dino", p->metrics.dino_dir ? json_string(p->metrics.dino_dir) : json_null());
    json_object_set_new(models, "dino_pool", json_string(p->metrics.dino_pool == RB_DINO_POOL_MEAN ? "mean" : "cls"));
    if (!p->images_dir) {
        const rb_gen_params *g = &p->gen;
        json_t *loras = json_array();
        for (int k = 0; k < g->n_loras; k++)
            json_array_append_new(loras, json_pack("{s:s, s:f}", "path", g->loras[k].path, "scale",
                                                   (double)g->loras[k].scale));
        json_object_set_new(
            models, "generator",
            json_pack("{s:s, s:o, s:o, s:o, s:i, s:i, s:i, s:f, s:f}", "model", g->model, "ms_adapter",
                      g->ms_adapter ? json_string(g->ms_adapter) : json_null(), "image_encoder",
                      g->image_encoder ? json_string(g->image_encoder) : json_null(), "loras", loras, "steps",
                      g->steps, "width", g->width, "height", g->height, "guidance", (double)g->guidance, "ip_scale",
                      (double)g->ip_scale));
    }
    json_t *root = json_pack("{s:s, s:s, s:o, s:i, s:i, s:o, s:s, s:s, s:o, s:o}", "convention",
                             rb_score_scale_name(p->scale), "formula", rb_score_scale_formula(p->scale), "metrics",
                             metrics, "cases", r->man.n_cases, "images", r->n_items, "seeds", seeds_j, "manifest",
                             p->manifest, "format", r->man.format == RB_EVAL_RELATIONBENCH ? "relationbench" : "relbooth",
                             "images_dir", p->images_dir ? json_string(p->images_dir) : json_null(), "models", models);
    char *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(root);
    if (!text)
        return rb_error(RB_ERR_OOM, "eval: metrics.json");
    buf mb = {0};
    bput(&mb, text, strlen(text));
    bput(&mb, "\n", 1);
    free(text);
    s = save(p, "metrics.json", &mb);
    rb_free(mb.p);
    if (s != RB_OK)
        return s;
    s = write_report(r, means, counts);
    if (s == RB_OK && p->log) {
        fprintf(p->log, "%d cases, %d images:", r->man.n_cases, r->n_items);
        for (int k = 0; k < 4; k++) {
            if (!counts[k])
                fprintf(p->log, "  %s -", metric_names[k]);
            else
                fprintf(p->log, p->scale == RB_SCORE_X100 ? "  %s %.2f" : "  %s %.4f", metric_names[k], means[k]);
        }
        fprintf(p->log, "  (%s = %s)\n", rb_score_scale_name(p->scale), rb_score_scale_formula(p->scale));
    }
    return s;
}
