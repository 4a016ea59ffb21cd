/* `relbooth eval`: generate (or find) every case's images, score them, write the outputs.
 * Two phases keep the peak memory of one: all missing images are generated first (rb_generate loads
 * and releases its models per call), then the scoring models are loaded once and every unscored image
 * is scored. Resume: an image file that exists is not generated again, and an image with a line in
 * <out>/results.jsonl (appended and fsync'ed as soon as it is scored, raw cosines) is not scored again. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/dist.h"
#include "core/file.h"
#include "core/mem.h"
#include "io/json.h"
#include "pipelines/eval_internal.h"

#define RESULTS_VERSION 1

void rb_eval_params_init(rb_eval_params *p) {
    memset(p, 0, sizeof *p);
    rb_gen_params_init(&p->gen);
    rb_metrics_config_init(&p->metrics);
    p->scale = RB_SCORE_X100;
}

static int case_refs(const eval_run *r, int c) {
    const rb_eval_case *cs = &r->man.cases[c];
    int n = 0;
    for (int k = 0; k < cs->n_subjects; k++)
        n += r->man.subjects[cs->subjects[k]].n_images;
    return n;
}

static rb_status add_item(eval_run *r, int *cap, int c, uint64_t seed, const char *image) {
    if (r->n_items == *cap) {
        int nc = *cap ? 2 * *cap : 64;
        eval_item *n = rb_calloc((size_t)nc * sizeof *n, "eval items");
        if (!n)
            return RB_ERR_OOM;
        if (r->n_items)
            memcpy(n, r->items, (size_t)r->n_items * sizeof *n);
        rb_free(r->items);
        r->items = n, *cap = nc;
    }
    eval_item *it = &r->items[r->n_items];
    memset(it, 0, sizeof *it);
    it->c = c, it->seed = seed, it->n_refs = case_refs(r, c);
    it->image = rb_alloc(strlen(image) + 1, "eval item");
    it->clip_i = rb_alloc((size_t)(it->n_refs + 1) * 2 * sizeof(double), "eval item");
    if (!it->image || !it->clip_i) {
        rb_free(it->image), rb_free(it->clip_i);
        return RB_ERR_OOM;
    }
    strcpy(it->image, image);
    it->dino = it->clip_i + it->n_refs + 1;
    it->clip_t = it->clip_r = NAN;
    r->n_items++;
    return RB_OK;
}

static void free_run(eval_run *r) {
    for (int i = 0; i < r->n_items; i++)
        rb_free(r->items[i].image), rb_free(r->items[i].clip_i);
    rb_free(r->items);
    rb_eval_manifest_free(&r->man);
}

/* "<id>_<digits>.<png|jpg|jpeg|webp>" -> seed. */
static int parse_image_name(const char *name, const char *id, uint64_t *seed) {
    size_t n = strlen(id);
    if (strncmp(name, id, n) || name[n] != '_' || !isdigit((unsigned char)name[n + 1]))
        return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(name + n + 1, &end, 10);
    if (errno || *end != '.' || end - (name + n + 1) > 20)
        return 0;
    if (strcasecmp(end, ".png") && strcasecmp(end, ".jpg") && strcasecmp(end, ".jpeg") && strcasecmp(end, ".webp"))
        return 0;
    *seed = v;
    return 1;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The images folder: every case needs at least one image (or every requested seed). */
static rb_status collect_images(eval_run *r) {
    const rb_eval_params *p = r->p;
    DIR *d = opendir(p->images_dir);
    if (!d)
        return rb_error(RB_ERR_IO, "images folder %s: cannot read it: %s", p->images_dir, strerror(errno));
    int n_names = 0, cap_names = 0;
    char **names = NULL;
    struct dirent *e;
    rb_status s = RB_OK;
    while ((e = readdir(d)) && s == RB_OK) {
        if (e->d_name[0] == '.')
            continue;
        if (n_names == cap_names) {
            cap_names = cap_names ? 2 * cap_names : 256;
            char **nn = rb_alloc((size_t)cap_names * sizeof *nn, "eval");
            if (!nn) {
                s = RB_ERR_OOM;
                break;
            }
            if (n_names)
                memcpy(nn, names, (size_t)n_names * sizeof *nn);
            rb_free(names);
            names = nn;
        }
        if (!(names[n_names] = strdup(e->d_name)))
            s = RB_ERR_OOM;
        else
            n_names++;
    }
    closedir(d);
    int cap = 0;
    char path[8192];
    for (int c = 0; c < r->man.n_cases && s == RB_OK; c++) {
        const char *id = r->man.cases[c].id;
        uint64_t found[RB_EVAL_MAX_SEEDS];
        int idx[RB_EVAL_MAX_SEEDS], nf = 0;
        for (int i = 0; i < n_names && nf < RB_EVAL_MAX_SEEDS; i++) {
            uint64_t seed;
            if (!parse_image_name(names[i], id, &seed))
                continue;
            int want = !p->n_seeds;
            for (int k = 0; k < p->n_seeds; k++)
                want |= p->seeds[k] == seed;
            int dup = 0;
            for (int k = 0; k < nf; k++)
                dup |= found[k] == seed;
            if (want && !dup)
                idx[nf] = i, found[nf++] = seed;
        }
        if (p->n_seeds && nf < p->n_seeds) {
            for (int k = 0; k < p->n_seeds; k++) {
                int have = 0;
                for (int q = 0; q < nf; q++)
                    have |= found[q] == p->seeds[k];
                if (!have) {
                    s = rb_error(RB_ERR_IO, "case %s: no image %s_%" PRIu64 ".png in %s", id, id, p->seeds[k],
                                 p->images_dir);
                    break;
                }
            }
        } else if (!nf) {
            s = rb_error(RB_ERR_IO, "case %s: no image %s_<seed>.png in %s", id, id, p->images_dir);
        }
        /* seeds in increasing order, so the report and the CSV do not depend on the folder's order */
        for (int a = 0; a < nf; a++)
            for (int b = a + 1; b < nf; b++)
                if (cmp_u64(&found[a], &found[b]) > 0) {
                    uint64_t t = found[a];
                    int ti = idx[a];
                    found[a] = found[b], idx[a] = idx[b], found[b] = t, idx[b] = ti;
                }
        for (int k = 0; k < nf && s == RB_OK; k++) {
            snprintf(path, sizeof path, "%s/%s", p->images_dir, names[idx[k]]);
            s = add_item(r, &cap, c, found[k], path);
        }
    }
    for (int i = 0; i < n_names; i++)
        free(names[i]);
    rb_free(names);
    return s;
}

static rb_status make_dir(const char *path, const char *what) {
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return rb_error(RB_ERR_IO, "%s %s: cannot create it: %s", what, path, strerror(errno));
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return rb_error(RB_ERR_IO, "%s %s: not a folder", what, path);
    if (access(path, W_OK | X_OK) != 0)
        return rb_error(RB_ERR_IO, "%s %s: not writable: %s", what, path, strerror(errno));
    return RB_OK;
}

/* ---- results.jsonl ---- */

static json_t *jnum(double v) { return isfinite(v) ? json_real(v) : json_null(); }
static double jval(json_t *v) { return json_is_number(v) ? json_number_value(v) : NAN; }

json_t *eval_results_header(const rb_eval_params *p) {
    return json_pack("{s:i, s:s, s:o, s:s}", "relbooth_eval_results", RESULTS_VERSION, "clip", p->metrics.clip_dir,
                     "dino", p->metrics.dino_dir ? json_string(p->metrics.dino_dir) : json_null(), "dino_pool",
                     p->metrics.dino_pool == RB_DINO_POOL_MEAN ? "mean" : "cls");
}

/* Per-reference values grouped by subject: [[s0 r0, s0 r1], [s1 r0]]. */
static json_t *ref_array(const eval_run *r, const eval_item *it, const double *v) {
    const rb_eval_case *c = &r->man.cases[it->c];
    json_t *a = json_array();
    int q = 0;
    for (int k = 0; k < c->n_subjects; k++) {
        json_t *s = json_array();
        for (int i = 0; i < r->man.subjects[c->subjects[k]].n_images; i++)
            json_array_append_new(s, jnum(v[q++]));
        json_array_append_new(a, s);
    }
    return a;
}

static int read_refs(const eval_run *r, const eval_item *it, json_t *a, double *v, int allow_null) {
    const rb_eval_case *c = &r->man.cases[it->c];
    if (allow_null && json_is_null(a)) { /* DINO without a DINO model */
        for (int q = 0; q < it->n_refs; q++)
            v[q] = NAN;
        return 1;
    }
    if (!json_is_array(a) || json_array_size(a) != (size_t)c->n_subjects)
        return 0;
    int q = 0;
    for (int k = 0; k < c->n_subjects; k++) {
        json_t *s = json_array_get(a, (size_t)k);
        if (!json_is_array(s) || json_array_size(s) != (size_t)r->man.subjects[c->subjects[k]].n_images)
            return 0;
        for (size_t i = 0; i < json_array_size(s); i++) {
            json_t *x = json_array_get(s, i);
            if (!json_is_number(x) && !(allow_null && json_is_null(x)))
                return 0;
            v[q++] = jval(x);
        }
    }
    return 1;
}

json_t *eval_results_line(const eval_run *r, const eval_item *it) {
    const rb_eval_case *c = &r->man.cases[it->c];
    return json_pack("{s:s, s:I, s:s, s:s, s:s, s:o, s:o, s:o, s:o}", "case", c->id, "seed", (json_int_t)it->seed,
                     "image", it->image, "prompt", c->text, "predicate", c->predicate, "clip_t", jnum(it->clip_t),
                     "clip_r", jnum(it->clip_r), "clip_i", ref_array(r, it, it->clip_i), "dino",
                     r->p->metrics.dino_dir ? ref_array(r, it, it->dino) : json_null());
}

/* Marks the item a line describes (same case, seed and prompt, same shape) as done. */
int eval_results_apply(eval_run *r, json_t *j, int in_log) {
    const char *id = json_string_value(json_object_get(j, "case"));
    const char *prompt = json_string_value(json_object_get(j, "prompt"));
    json_t *seed = json_object_get(j, "seed");
    int hit = 0;
    for (int i = 0; id && prompt && json_is_integer(seed) && i < r->n_items; i++) {
        eval_item *it = &r->items[i];
        const rb_eval_case *c = &r->man.cases[it->c];
        if (it->seed != (uint64_t)json_integer_value(seed) || strcmp(c->id, id) || strcmp(c->text, prompt))
            continue;
        if (read_refs(r, it, json_object_get(j, "clip_i"), it->clip_i, 0) &&
            read_refs(r, it, json_object_get(j, "dino"), it->dino, 1)) {
            it->clip_t = jval(json_object_get(j, "clip_t"));
            it->clip_r = jval(json_object_get(j, "clip_r"));
            it->done = hit = 1;
            it->in_log |= in_log;
        }
    }
    return hit;
}

/* Marks the items that a results log already holds (in_log: it is results.jsonl itself). A line that
 * does not parse (an interrupted append) is ignored. Other scoring models: error. */
static rb_status read_results(eval_run *r, const char *path, int in_log, int *needs_newline) {
    *needs_newline = 0;
    if (access(path, F_OK) != 0)
        return RB_OK;
    char *text;
    size_t len;
    RB_TRY(rb_read_file(path, (size_t)1 << 31, &text, &len));
    *needs_newline = len && text[len - 1] != '\n';
    json_t *want = eval_results_header(r->p);
    rb_status s = RB_OK;
    int line_no = 0;
    for (char *line = text, *next; line && *line && s == RB_OK; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        json_t *j = json_loads(line, 0, NULL);
        if (!j)
            continue;
        if (line_no++ == 0) {
            if (!json_equal(j, want))
                s = rb_error(RB_ERR_INVALID, "output folder %s: %s was scored with other models or settings (%s); "
                                             "use another output folder", r->p->out_dir, strrchr(path, '/') + 1, line);
        } else {
            eval_results_apply(r, j, in_log);
        }
        json_decref(j);
    }
    json_decref(want);
    rb_free(text);
    return s;
}

/* results.jsonl, then every rank's results.rank<R>.jsonl left by a multi-rank run (any process count). */
static rb_status read_all_results(eval_run *r, const char *mine, int *needs_newline) {
    char path[8192];
    int nl;
    snprintf(path, sizeof path, "%s/results.jsonl", r->p->out_dir);
    RB_TRY(read_results(r, path, 1, &nl));
    *needs_newline = !strcmp(path, mine) && nl;
    DIR *d = opendir(r->p->out_dir);
    if (!d)
        return rb_error(RB_ERR_IO, "output folder %s: cannot read it: %s", r->p->out_dir, strerror(errno));
    rb_status s = RB_OK;
    for (struct dirent *e; s == RB_OK && (e = readdir(d));) {
        int rank, end = 0;
        if (sscanf(e->d_name, "results.rank%d.jsonl%n", &rank, &end) != 1 || e->d_name[end])
            continue;
        snprintf(path, sizeof path, "%s/%s", r->p->out_dir, e->d_name);
        s = read_results(r, path, 0, &nl);
        if (!strcmp(path, mine))
            *needs_newline = nl;
    }
    closedir(d);
    return s;
}

rb_status eval_results_append(FILE *f, const char *path, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s)
        return rb_error(RB_ERR_OOM, "%s: encoding a line", path);
    int ok = fputs(s, f) >= 0 && fputc('\n', f) != EOF && fflush(f) == 0 && fsync(fileno(f)) == 0;
    free(s);
    return ok ? RB_OK : rb_error(RB_ERR_IO, "%s: write failed: %s", path, strerror(errno));
}

/* ---- generation ---- */

static rb_status generate_item(eval_run *r, const eval_item *it) {
    const rb_eval_params *p = r->p;
    const rb_eval_case *c = &r->man.cases[it->c];
    rb_gen_params g = p->gen;
    g.prompt = c->text;
    g.seed = it->seed;
    g.batch_count = 1;
    g.cancel = p->cancel;
    g.n_subjects = c->n_subjects;
    for (int k = 0; k < c->n_subjects; k++) {
        const rb_eval_subject *s = &r->man.subjects[c->subjects[k]];
        g.subjects[k] = (rb_subject){s->images[0], s->phrase, {c->boxes[k][0], c->boxes[k][1], c->boxes[k][2],
                                                              c->boxes[k][3]}};
    }
    if (c->lora) {
        if (g.n_loras >= RB_MAX_LORAS)
            return rb_error(RB_ERR_INVALID, "case %s: more than %d LoRAs", c->id, RB_MAX_LORAS);
        g.loras[g.n_loras++] = (rb_lora_ref){c->lora, c->lora_scale};
    }
    rb_image img;
    rb_status s = rb_generate(&g, &img);
    if (s != RB_OK)
        return s == RB_ERR_CANCELLED ? s : rb_error_prefix(s, "case %s (seed %" PRIu64 ")", c->id, it->seed);
    char params[4096];
    rb_gen_params_describe(&g, it->seed, params, sizeof params);
    const char *keys[] = {"parameters"}, *vals[] = {params};
    s = rb_png_write(it->image, &img, 1, keys, vals);
    rb_image_free(&img);
    return s == RB_OK ? RB_OK : rb_error_prefix(s, "case %s", c->id);
}

/* ---- scoring ---- */

typedef struct scorer {
    rb_metrics m;
    int E, D;
    float **ref_clip, **ref_dino; /* per subject: [n_images, E] / [n_images, D], computed on first use */
    float *img_clip, *img_dino, *txt;
} scorer;

static rb_status subject_features(eval_run *r, scorer *sc, int si, const char *case_id) {
    const rb_eval_subject *s = &r->man.subjects[si];
    if (sc->ref_clip[si])
        return RB_OK;
    float *clip = rb_alloc((size_t)s->n_images * (size_t)(sc->E + sc->D) * sizeof(float), "eval references");
    if (!clip)
        return RB_ERR_OOM;
    for (int i = 0; i < s->n_images; i++) {
        rb_image img;
        rb_status st = rb_image_load(&img, s->images[i], 3);
        if (st == RB_OK) {
            st = rb_metrics_image_features(&sc->m, &img, 1, clip + (size_t)i * sc->E,
                                           sc->D ? clip + (size_t)s->n_images * sc->E + (size_t)i * sc->D : NULL);
            rb_image_free(&img);
        }
        if (st != RB_OK) {
            rb_free(clip);
            return rb_error_prefix(st, "case %s: reference image", case_id);
        }
    }
    sc->ref_clip[si] = clip;
    sc->ref_dino[si] = clip + (size_t)s->n_images * sc->E;
    return RB_OK;
}

static rb_status score_item(eval_run *r, scorer *sc, eval_item *it, int text_ready) {
    const rb_eval_case *c = &r->man.cases[it->c];
    for (int k = 0; k < c->n_subjects; k++)
        RB_TRY(subject_features(r, sc, c->subjects[k], c->id));
    if (!text_ready) {
        const char *texts[2] = {c->text, c->predicate};
        rb_status s = rb_metrics_text_features(&sc->m, texts, 2, sc->txt);
        if (s != RB_OK)
            return rb_error_prefix(s, "case %s: text", c->id);
    }
    rb_image img;
    rb_status s = rb_image_load(&img, it->image, 3);
    if (s != RB_OK)
        return rb_error_prefix(s, "case %s: image", c->id);
    s = rb_metrics_image_features(&sc->m, &img, 0, sc->img_clip, sc->D ? sc->img_dino : NULL);
    rb_image_free(&img);
    if (s != RB_OK)
        return rb_error_prefix(s, "case %s: image %s", c->id, it->image);
    it->clip_t = rb_metrics_cosine(sc->img_clip, sc->txt, sc->E);
    it->clip_r = rb_metrics_cosine(sc->img_clip, sc->txt + sc->E, sc->E);
    int q = 0;
    for (int k = 0; k < c->n_subjects; k++) {
        int si = c->subjects[k];
        for (int i = 0; i < r->man.subjects[si].n_images; i++, q++) {
            it->clip_i[q] = rb_metrics_cosine(sc->img_clip, sc->ref_clip[si] + (size_t)i * sc->E, sc->E);
            it->dino[q] = sc->D ? rb_metrics_cosine(sc->img_dino, sc->ref_dino[si] + (size_t)i * sc->D, sc->D) : NAN;
        }
    }
    it->done = 1;
    return RB_OK;
}

static rb_status score_all(eval_run *r, const char *results_path, int needs_newline, rb_eval_stats *st) {
    const rb_eval_params *p = r->p;
    int todo = 0;
    for (int i = 0; i < r->n_items; i++)
        if (eval_mine(&r->items[i]))
            todo += !r->items[i].done, st->skipped_score += r->items[i].done;
    if (!todo)
        return RB_OK;
    int fresh = access(results_path, F_OK) != 0, alone = rb_dist_size() == 1;
    FILE *f = fopen(results_path, "a");
    if (!f)
        return rb_error(RB_ERR_IO, "output folder %s: cannot write results.jsonl: %s", p->out_dir, strerror(errno));
    scorer sc;
    memset(&sc, 0, sizeof sc);
    rb_status s = RB_OK;
    if (needs_newline && fputc('\n', f) == EOF)
        s = rb_error(RB_ERR_IO, "%s: write failed", results_path);
    if (s == RB_OK && fresh)
        s = eval_results_append(f, results_path, eval_results_header(p));
    if (s == RB_OK)
        s = rb_metrics_open(&sc.m, &p->metrics);
    if (s != RB_OK) {
        fclose(f);
        return s;
    }
    sc.E = rb_metrics_clip_dim(&sc.m), sc.D = rb_metrics_dino_dim(&sc.m);
    sc.ref_clip = rb_calloc((size_t)(r->man.n_subjects + 1) * 2 * sizeof(float *), "eval");
    sc.img_clip = rb_alloc((size_t)(3 * sc.E + sc.D + 1) * sizeof(float), "eval");
    if (!sc.ref_clip || !sc.img_clip)
        s = RB_ERR_OOM;
    else {
        sc.ref_dino = sc.ref_clip + r->man.n_subjects + 1;
        sc.txt = sc.img_clip + sc.E;
        sc.img_dino = sc.txt + 2 * sc.E;
    }
    int last_case = -1;
    for (int i = 0; i < r->n_items && s == RB_OK; i++) {
        eval_item *it = &r->items[i];
        if (it->done || !eval_mine(it))
            continue;
        if (p->cancel && *p->cancel) {
            s = rb_error(RB_ERR_CANCELLED, "eval: cancelled (a rerun resumes)");
            break;
        }
        s = score_item(r, &sc, it, last_case == it->c);
        last_case = s == RB_OK ? it->c : -1;
        if (s != RB_OK)
            break;
        const rb_eval_case *c = &r->man.cases[it->c];
        json_t *line = eval_results_line(r, it);
        s = line ? eval_results_append(f, results_path, line) : rb_error(RB_ERR_OOM, "eval");
        if (s != RB_OK)
            break;
        it->scored_now = 1, it->in_log = alone;
        st->scored++;
        if (p->log) {
            double v[4];
            eval_item_scores(r, it, v);
            fprintf(p->log, "scored %s seed %" PRIu64 ": CLIP-T %.4g  CLIP-R %.4g  CLIP-I %.4g  DINO %.4g\n", c->id,
                    it->seed, v[0], v[1], v[2], v[3]);
        }
        if (p->on_image)
            p->on_image(p->user, c->id, it->seed, 0, 1);
    }
    for (int k = 0; sc.ref_clip && k < r->man.n_subjects; k++)
        rb_free(sc.ref_clip[k]);
    rb_free(sc.ref_clip), rb_free(sc.img_clip);
    rb_metrics_close(&sc.m);
    if (fclose(f) != 0 && s == RB_OK)
        s = rb_error(RB_ERR_IO, "%s: close failed", results_path);
    return s;
}

rb_status rb_eval_run(const rb_eval_params *p, rb_eval_stats *st) {
    memset(st, 0, sizeof *st);
    st->clip_t = st->clip_r = st->clip_i = st->dino = NAN;
    if (!p->manifest || !p->out_dir)
        return rb_error(RB_ERR_INVALID, "eval: a manifest and an output folder are needed");
    if (!p->metrics.clip_dir)
        return rb_error(RB_ERR_INVALID, "eval: a CLIP model folder is needed for scoring");
    if (p->n_seeds < 0 || p->n_seeds > RB_EVAL_MAX_SEEDS)
        return rb_error(RB_ERR_INVALID, "eval: 1 to %d seeds", RB_EVAL_MAX_SEEDS);
    if (!p->images_dir && !p->gen.model)
        return rb_error(RB_ERR_INVALID, "eval: give a model to generate with or a folder of images to score");
    eval_run r;
    memset(&r, 0, sizeof r);
    r.p = p;
    RB_TRY(rb_eval_manifest_load(&r.man, p->manifest, p->root, p->lora_dir));
    char path[8192], results[8192];
    rb_status s = make_dir(p->out_dir, "output folder");
    eval_log_path(p, results, sizeof results);
    if (s == RB_OK && p->images_dir) {
        s = collect_images(&r);
    } else if (s == RB_OK) {
        snprintf(path, sizeof path, "%s/images", p->out_dir);
        s = make_dir(path, "output folder");
        int cap = 0;
        uint64_t one = p->gen.seed;
        const uint64_t *seeds = p->n_seeds ? p->seeds : &one;
        int ns = p->n_seeds ? p->n_seeds : 1;
        for (int c = 0; c < r.man.n_cases && s == RB_OK; c++)
            for (int k = 0; k < ns && s == RB_OK; k++) {
                snprintf(path, sizeof path, "%s/images/%s_%" PRIu64 ".png", p->out_dir, r.man.cases[c].id, seeds[k]);
                s = add_item(&r, &cap, c, seeds[k], path);
            }
    }
    int needs_newline = 0;
    if (s == RB_OK)
        s = read_all_results(&r, results, &needs_newline);
    /* the setup above is the same on every rank; a rank that failed alone must not leave the others
     * waiting in the merge */
    s = eval_dist_agree(s, "to read the benchmark");
    if (s != RB_OK) {
        free_run(&r);
        return s;
    }
    /* phase 1: the missing images */
    for (int i = 0; i < r.n_items && s == RB_OK && !p->images_dir; i++) {
        eval_item *it = &r.items[i];
        if (!eval_mine(it))
            continue;
        if (it->done || access(it->image, F_OK) == 0) {
            st->skipped_generate++;
            continue;
        }
        if (p->cancel && *p->cancel) {
            s = rb_error(RB_ERR_CANCELLED, "eval: cancelled (a rerun resumes)");
            break;
        }
        if (p->log)
            fprintf(p->log, "generating %s seed %" PRIu64 " (%d/%d)\n", r.man.cases[it->c].id, it->seed, i + 1,
                    r.n_items);
        s = generate_item(&r, it);
        if (s == RB_OK) {
            st->generated++;
            if (p->on_image)
                p->on_image(p->user, r.man.cases[it->c].id, it->seed, 1, 0);
        }
    }
    /* phase 2: scores */
    if (s == RB_OK)
        s = score_all(&r, results, needs_newline, st);
    /* rank 0 collects every rank's scores and writes the outputs */
    s = eval_dist_merge(&r, s, st);
    if (s == RB_OK && rb_dist_rank() == 0) {
        st->images = r.n_items;
        st->cases = r.man.n_cases;
        s = eval_write_outputs(&r, st);
    }
    s = eval_dist_agree(s, "to write the outputs");
    if (s == RB_OK)
        s = rb_dist_bcast(st, sizeof *st, 0);
    free_run(&r);
    return s;
}
