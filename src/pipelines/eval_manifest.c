/* Benchmark manifests for `relbooth eval` (formats in docs/eval.md "Manifests"):
 *   RelationBench form: the public prompts.json, a JSON array of {sub1, prompt, phrase[, model]} with the
 *     reference photos in <root>/<sub1>/; as the public reproduction does, every reference photo of an
 *     entry is one case (one subject, box [0, 0, 1, 1]), the prompt names the subject with words;
 *   our form: {"subjects": [...], "cases": [...]} with "{}" slots in the prompts.
 * Every error names the case (or the manifest when no case is at fault). */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/file.h"
#include "core/mem.h"
#include "io/json.h"
#include "pipelines/eval.h"
#include "text/predicate.h"

#define MAX_PRED 1024

static void *own(rb_eval_manifest *m, size_t n) {
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        void **o = rb_alloc((size_t)cap * sizeof *o, "eval manifest");
        if (!o)
            return NULL;
        if (m->n_owned)
            memcpy(o, m->owned, (size_t)m->n_owned * sizeof *o);
        rb_free(m->owned);
        m->owned = o, m->cap_owned = cap;
    }
    void *p = rb_calloc(n ? n : 1, "eval manifest");
    if (p)
        m->owned[m->n_owned++] = p;
    return p;
}

static char *own_str(rb_eval_manifest *m, const char *s) {
    size_t n = strlen(s);
    char *d = own(m, n + 1);
    if (d)
        memcpy(d, s, n + 1);
    return d;
}

void rb_eval_manifest_free(rb_eval_manifest *m) {
    for (int i = 0; i < m->n_owned; i++)
        rb_free(m->owned[i]);
    rb_free(m->owned);
    memset(m, 0, sizeof *m);
}

int rb_eval_count_slots(const char *prompt) {
    int n = 0;
    for (const char *p = prompt; *p; p++)
        if (*p == '{') {
            const char *q = p + 1;
            while (*q == ' ' || *q == '\t')
                q++;
            if (*q == '}')
                n++, p = q;
        }
    return n;
}

/* The prompt with its i-th slot replaced by phrases[i]. */
static char *fill_slots(rb_eval_manifest *m, const char *prompt, char *const *phrases, int n) {
    size_t len = strlen(prompt) + 1;
    for (int i = 0; i < n; i++)
        len += strlen(phrases[i]);
    char *out = own(m, len), *o = out;
    if (!out)
        return NULL;
    int k = 0;
    for (const char *p = prompt; *p; p++) {
        if (*p == '{') {
            const char *q = p + 1;
            while (*q == ' ' || *q == '\t')
                q++;
            if (*q == '}' && k < n) {
                size_t l = strlen(phrases[k]);
                memcpy(o, phrases[k++], l);
                o += l, p = q;
                continue;
            }
        }
        *o++ = *p;
    }
    *o = 0;
    return out;
}

static int valid_id(const char *s) {
    if (!*s || *s == '.' || strlen(s) > 200)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.')
            return 0;
    return 1;
}

/* "dir/rel" unless rel is absolute. */
static char *join(rb_eval_manifest *m, const char *dir, const char *rel) {
    if (rel[0] == '/' || !dir || !dir[0])
        return own_str(m, rel);
    char *p = own(m, strlen(dir) + strlen(rel) + 2);
    if (p)
        sprintf(p, "%s/%s", dir, rel);
    return p;
}

/* Default layouts (MS-Bench's combination boxes): one subject fills the image, two sit side by side,
 * three or more share the width in equal columns, all in the middle half of the height. */
static void default_boxes(rb_eval_case *c) {
    int n = c->n_subjects;
    for (int i = 0; i < n; i++) {
        if (n == 1) {
            float b[4] = {0, 0, 1, 1};
            memcpy(c->boxes[i], b, sizeof b);
        } else {
            c->boxes[i][0] = (float)i / (float)n, c->boxes[i][2] = (float)(i + 1) / (float)n;
            c->boxes[i][1] = 0.25f, c->boxes[i][3] = 0.75f;
        }
    }
}

static rb_status probe_ref(const char *case_id, const char *path) {
    rb_image img;
    if (rb_image_probe(&img, path) != RB_OK)
        return rb_error_prefix(RB_ERR_IO, "case %s: reference image", case_id);
    return RB_OK;
}

static rb_status case_predicate(rb_eval_manifest *m, rb_eval_case *c, const char *given, const char *const *words,
                                int n_words) {
    char pred[MAX_PRED];
    if (given) {
        if (!given[0])
            return rb_error(RB_ERR_INVALID, "case %s: empty \"predicate\"", c->id);
        c->predicate = own_str(m, given);
    } else {
        if (rb_predicate_extract(c->prompt, words, n_words, pred, sizeof pred) != RB_OK)
            return rb_error_prefix(RB_ERR_INVALID, "case %s: no relation predicate (give \"predicate\")", c->id);
        c->predicate = own_str(m, pred);
    }
    return c->predicate ? RB_OK : rb_error(RB_ERR_OOM, "eval manifest");
}

/* ---- our JSON form ---- */

static const char *jstr(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static rb_status load_ours(rb_eval_manifest *m, json_t *root, const char *path, const char *dir) {
    json_t *subs = json_object_get(root, "subjects"), *cases = json_object_get(root, "cases");
    const char *img_root = jstr(root, "root");
    char *base = img_root ? join(m, dir, img_root) : own_str(m, dir);
    if (!base)
        return rb_error(RB_ERR_OOM, "eval manifest");
    if (!json_is_array(cases) || json_array_size(cases) == 0)
        return rb_error(RB_ERR_INVALID, "manifest %s: no cases (\"cases\" must be a non-empty array)", path);
    if (subs && !json_is_array(subs))
        return rb_error(RB_ERR_FORMAT, "manifest %s: \"subjects\" must be an array", path);
    size_t ns = subs ? json_array_size(subs) : 0, nc = json_array_size(cases);
    if (nc > 1000000 || ns > 1000000)
        return rb_error(RB_ERR_FORMAT, "manifest %s: too many entries", path);
    m->subjects = own(m, (ns ? ns : 1) * sizeof *m->subjects);
    m->cases = own(m, nc * sizeof *m->cases);
    if (!m->subjects || !m->cases)
        return rb_error(RB_ERR_OOM, "eval manifest");
    for (size_t i = 0; i < ns; i++) {
        json_t *s = json_array_get(subs, i), *imgs = json_object_get(s, "images");
        const char *name = jstr(s, "name"), *phrase = jstr(s, "phrase");
        if (!name || !name[0])
            return rb_error(RB_ERR_FORMAT, "manifest %s: subject %zu has no \"name\"", path, i);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(m->subjects[j].name, name))
                return rb_error(RB_ERR_FORMAT, "manifest %s: subject \"%s\" is defined twice", path, name);
        if (!json_is_array(imgs) || json_array_size(imgs) == 0 || json_array_size(imgs) > 1000)
            return rb_error(RB_ERR_INVALID, "manifest %s: subject \"%s\" needs \"images\": [1..1000 paths]", path,
                            name);
        rb_eval_subject *sub = &m->subjects[i];
        sub->name = own_str(m, name);
        sub->phrase = own_str(m, phrase && phrase[0] ? phrase : name);
        sub->n_images = (int)json_array_size(imgs);
        sub->images = own(m, (size_t)sub->n_images * sizeof *sub->images);
        if (!sub->name || !sub->phrase || !sub->images)
            return rb_error(RB_ERR_OOM, "eval manifest");
        for (int k = 0; k < sub->n_images; k++) {
            json_t *v = json_array_get(imgs, (size_t)k);
            if (!json_is_string(v))
                return rb_error(RB_ERR_FORMAT, "manifest %s: subject \"%s\": images must be strings", path, name);
            if (!(sub->images[k] = join(m, base, json_string_value(v))))
                return rb_error(RB_ERR_OOM, "eval manifest");
        }
    }
    m->n_subjects = (int)ns;
    for (size_t i = 0; i < nc; i++) {
        json_t *cj = json_array_get(cases, i), *cs = json_object_get(cj, "subjects"),
               *boxes = json_object_get(cj, "boxes");
        rb_eval_case *c = &m->cases[i];
        const char *id = jstr(cj, "id"), *prompt = jstr(cj, "prompt");
        if (!id || !valid_id(id))
            return rb_error(RB_ERR_FORMAT, "manifest %s: case %zu: \"id\" must be letters, digits, '_', '-', '.'",
                            path, i);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(m->cases[j].id, id))
                return rb_error(RB_ERR_FORMAT, "case %s: id used twice", id);
        c->id = own_str(m, id);
        if (!prompt || !prompt[0])
            return rb_error(RB_ERR_INVALID, "case %s: no \"prompt\"", id);
        c->prompt = own_str(m, prompt);
        size_t n = json_is_array(cs) ? json_array_size(cs) : 0;
        if (cs && !json_is_array(cs))
            return rb_error(RB_ERR_FORMAT, "case %s: \"subjects\" must be an array of subject names", id);
        if (n > RB_MAX_SUBJECTS)
            return rb_error(RB_ERR_INVALID, "case %s: %zu subjects; at most %d", id, n, RB_MAX_SUBJECTS);
        int slots = rb_eval_count_slots(prompt);
        if ((size_t)slots != n)
            return rb_error(RB_ERR_INVALID, "case %s: prompt has %d {} slot(s) but %zu subject(s)", id, slots, n);
        c->n_subjects = (int)n;
        char *phrases[RB_MAX_SUBJECTS];
        for (size_t k = 0; k < n; k++) {
            const char *sn = json_string_value(json_array_get(cs, k));
            int found = -1;
            for (int j = 0; sn && j < m->n_subjects; j++)
                if (!strcmp(m->subjects[j].name, sn))
                    found = j;
            if (found < 0)
                return rb_error(RB_ERR_INVALID, "case %s: unknown subject \"%s\"", id, sn ? sn : "(not a string)");
            c->subjects[k] = found;
            phrases[k] = m->subjects[found].phrase;
        }
        if (boxes) {
            if (!json_is_array(boxes) || json_array_size(boxes) != n)
                return rb_error(RB_ERR_INVALID, "case %s: \"boxes\" must hold one [x0, y0, x1, y1] per subject", id);
            for (size_t k = 0; k < n; k++) {
                json_t *b = json_array_get(boxes, k);
                if (!json_is_array(b) || json_array_size(b) != 4)
                    return rb_error(RB_ERR_INVALID, "case %s: box %zu must be [x0, y0, x1, y1]", id, k);
                for (int q = 0; q < 4; q++) {
                    json_t *v = json_array_get(b, (size_t)q);
                    double x = json_number_value(v);
                    if (!json_is_number(v) || !(x >= 0 && x <= 1))
                        return rb_error(RB_ERR_INVALID, "case %s: box %zu: coordinates must be numbers in [0, 1]", id,
                                        k);
                    c->boxes[k][q] = (float)x;
                }
                if (!(c->boxes[k][2] > c->boxes[k][0] && c->boxes[k][3] > c->boxes[k][1]))
                    return rb_error(RB_ERR_INVALID, "case %s: box %zu is empty (x1 <= x0 or y1 <= y0)", id, k);
            }
        } else {
            default_boxes(c);
        }
        c->text = fill_slots(m, prompt, phrases, (int)n);
        if (!c->text)
            return rb_error(RB_ERR_OOM, "eval manifest");
        RB_TRY(case_predicate(m, c, jstr(cj, "predicate"), NULL, 0));
        const char *lora = jstr(cj, "lora");
        json_t *ls = json_object_get(cj, "lora_scale");
        c->lora = lora ? join(m, dir, lora) : NULL;
        c->lora_scale = json_is_number(ls) ? (float)json_number_value(ls) : 1.0f;
        for (int k = 0; k < c->n_subjects; k++) {
            const rb_eval_subject *s = &m->subjects[c->subjects[k]];
            for (int q = 0; q < s->n_images; q++)
                RB_TRY(probe_ref(id, s->images[q]));
        }
    }
    m->n_cases = (int)nc;
    return RB_OK;
}

/* ---- the RelationBench form ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int is_image_name(const char *n) {
    const char *dot = strrchr(n, '.');
    return dot && n[0] != '.' &&
           (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png") ||
            !strcasecmp(dot, ".webp"));
}

/* Sorted image file names in dir (what the reproduction iterates: sorted *.jpg; we also take png/webp). */
static rb_status list_images(const char *case_id, const char *dir, char ***names, int *n) {
    *names = NULL, *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return rb_error(RB_ERR_IO, "case %s: reference folder %s: %s", case_id, dir, strerror(errno));
    int cap = 0;
    struct dirent *e;
    rb_status s = RB_OK;
    while ((e = readdir(d)) && s == RB_OK) {
        if (!is_image_name(e->d_name))
            continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **nn = rb_alloc((size_t)cap * sizeof *nn, "eval");
            if (!nn) {
                s = rb_error(RB_ERR_OOM, "eval: listing %s", dir);
                break;
            }
            if (*n)
                memcpy(nn, *names, (size_t)*n * sizeof *nn);
            rb_free(*names);
            *names = nn;
        }
        if (!((*names)[*n] = strdup(e->d_name)))
            s = rb_error(RB_ERR_OOM, "eval: listing %s", dir);
        else
            (*n)++;
    }
    closedir(d);
    if (s == RB_OK && *n == 0)
        s = rb_error(RB_ERR_IO, "case %s: reference folder %s holds no image (.jpg, .jpeg, .png, .webp)", case_id,
                     dir);
    if (s == RB_OK)
        qsort(*names, (size_t)*n, sizeof **names, cmp_str);
    return s;
}

static void free_names(char **names, int n) {
    for (int i = 0; i < n; i++)
        free(names[i]);
    rb_free(names);
}

/* Whole-word, case-insensitive occurrence of w in s. */
static int has_words(const char *s, const char *w) {
    size_t n = strlen(w);
    if (!n)
        return 0;
    for (const char *p = s; *p; p++)
        if (!strncasecmp(p, w, n) && (p == s || !isalnum((unsigned char)p[-1])) && !isalnum((unsigned char)p[n]))
            return 1;
    return 0;
}

static void sanitize(char *s) {
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.')
            *s = '_';
}

static rb_status load_relationbench(rb_eval_manifest *m, json_t *arr, const char *path, const char *root,
                                    const char *lora_dir) {
    size_t ne = json_array_size(arr);
    if (ne == 0)
        return rb_error(RB_ERR_INVALID, "manifest %s: no cases (empty RelationBench prompt list)", path);
    if (ne > 100000)
        return rb_error(RB_ERR_FORMAT, "manifest %s: too many entries", path);
    /* first pass: count cases (one per reference photo) */
    int total = 0;
    rb_status s = RB_OK;
    for (size_t i = 0; i < ne && s == RB_OK; i++) {
        json_t *e = json_array_get(arr, i);
        const char *sub1 = jstr(e, "sub1");
        char id[64];
        snprintf(id, sizeof id, "%03zu", i + 1);
        if (!json_is_object(e) || !sub1 || !sub1[0] || !jstr(e, "prompt"))
            return rb_error(RB_ERR_FORMAT, "case %s: RelationBench entries need \"sub1\" and \"prompt\" strings", id);
        char *dir = join(m, root, sub1);
        if (!dir)
            return rb_error(RB_ERR_OOM, "eval manifest");
        char **names;
        int n;
        snprintf(id, sizeof id, "%03zu (%.40s)", i + 1, sub1);
        s = list_images(id, dir, &names, &n);
        if (s == RB_OK)
            free_names(names, n), total += n;
    }
    RB_TRY(s);
    m->subjects = own(m, (size_t)total * sizeof *m->subjects);
    m->cases = own(m, (size_t)total * sizeof *m->cases);
    if (!m->subjects || !m->cases)
        return rb_error(RB_ERR_OOM, "eval manifest");
    for (size_t i = 0; i < ne; i++) {
        json_t *e = json_array_get(arr, i);
        const char *sub1 = jstr(e, "sub1"), *prompt = jstr(e, "prompt"), *phrase = jstr(e, "phrase"),
                   *model = jstr(e, "model");
        char folder[256];
        const char *slash = strrchr(sub1, '/');
        snprintf(folder, sizeof folder, "%s", slash && slash[1] ? slash + 1 : sub1);
        sanitize(folder);
        char entry_id[300];
        snprintf(entry_id, sizeof entry_id, "%03zu_%s", i + 1, folder);
        if (rb_eval_count_slots(prompt))
            return rb_error(RB_ERR_INVALID, "case %s: RelationBench prompts name the subject with words, not {} slots",
                            entry_id);
        /* The subject's words in the prompt: the phrase with '_' as blanks ("plushie_cat" -> "plushie cat"),
         * else without them ("toysamurai", as some public prompts write it), else the phrase itself. */
        char words[3][256];
        const char *ph = phrase && phrase[0] ? phrase : folder;
        snprintf(words[0], sizeof words[0], "%s", ph);
        snprintf(words[2], sizeof words[2], "%s", ph);
        int k = 0;
        for (const char *p = ph; *p && k < 255; p++)
            if (*p != '_')
                words[1][k++] = *p;
        words[1][k] = 0;
        for (char *p = words[0]; *p; p++)
            if (*p == '_')
                *p = ' ';
        const char *word = NULL;
        for (int w = 0; w < 3 && !word; w++)
            if (has_words(prompt, words[w]))
                word = words[w];
        if (!word)
            return rb_error(RB_ERR_INVALID, "case %s: the subject \"%s\" does not occur in the prompt \"%s\"",
                            entry_id, ph, prompt);
        char *dir = join(m, root, sub1);
        char **names;
        int n;
        if (!dir)
            return rb_error(RB_ERR_OOM, "eval manifest");
        RB_TRY(list_images(entry_id, dir, &names, &n));
        for (int r = 0; r < n; r++) {
            rb_eval_subject *sub = &m->subjects[m->n_subjects];
            rb_eval_case *c = &m->cases[m->n_cases];
            char stem[256], buf[600];
            snprintf(stem, sizeof stem, "%s", names[r]);
            char *dot = strrchr(stem, '.');
            if (dot)
                *dot = 0;
            sanitize(stem);
            snprintf(buf, sizeof buf, "%s/%s", folder, stem);
            sub->name = own_str(m, buf);
            sub->phrase = own_str(m, word);
            sub->images = own(m, sizeof *sub->images);
            if (sub->images)
                sub->images[0] = join(m, dir, names[r]);
            sub->n_images = 1;
            snprintf(buf, sizeof buf, "%s_%s", entry_id, stem);
            c->id = own_str(m, buf);
            c->prompt = own_str(m, prompt);
            c->text = own_str(m, prompt);
            c->n_subjects = 1;
            c->subjects[0] = m->n_subjects;
            default_boxes(c);
            c->lora_scale = 1.0f;
            if (model && lora_dir) {
                snprintf(buf, sizeof buf, "%s/pytorch_lora_weights.safetensors", model);
                c->lora = join(m, lora_dir, buf);
            }
            rb_status st = !sub->name || !sub->phrase || !sub->images || !sub->images[0] || !c->id || !c->prompt ||
                                   !c->text || (model && lora_dir && !c->lora)
                               ? rb_error(RB_ERR_OOM, "eval manifest")
                               : RB_OK;
            const char *wl[1] = {word};
            if (st == RB_OK)
                st = case_predicate(m, c, NULL, wl, 1);
            if (st == RB_OK)
                st = probe_ref(c->id, sub->images[0]);
            if (st != RB_OK) {
                free_names(names, n);
                return st;
            }
            m->n_subjects++, m->n_cases++;
        }
        free_names(names, n);
    }
    return RB_OK;
}

rb_status rb_eval_manifest_load(rb_eval_manifest *m, const char *path, const char *root, const char *lora_dir) {
    memset(m, 0, sizeof *m);
    json_t *j;
    rb_status ls = rb_json_load(path, &j);
    if (ls != RB_OK)
        return rb_error_prefix(ls, "manifest");
    char *pcopy = strdup(path);
    if (!pcopy) {
        json_decref(j);
        return rb_error(RB_ERR_OOM, "eval manifest");
    }
    const char *dir = dirname(pcopy);
    rb_status s;
    if (json_is_array(j)) {
        m->format = RB_EVAL_RELATIONBENCH;
        s = load_relationbench(m, j, path, root ? root : dir, lora_dir);
    } else if (json_is_object(j) && json_object_get(j, "cases")) {
        m->format = RB_EVAL_RELBOOTH;
        s = load_ours(m, j, path, dir);
    } else if (json_is_object(j)) {
        s = rb_error(RB_ERR_INVALID, "manifest %s: no cases (neither a RelationBench list nor an object with "
                                     "\"cases\")", path);
    } else {
        s = rb_error(RB_ERR_FORMAT, "manifest %s: not a JSON array or object", path);
    }
    free(pcopy);
    json_decref(j);
    if (s != RB_OK)
        rb_eval_manifest_free(m);
    return s;
}
