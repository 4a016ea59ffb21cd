/* RelationLoRA training data: the official DreamRelation layout and our JSON manifest, both read into
 * rb_relation_item descriptors at open; rb_relation_sample_load reproduces KeypointsDataset.__getitem__
 * (RandomResizeCrop -> ToTensor -> Normalize, masks through cv2 INTER_LINEAR, bboxes, CLIP concepts).
 * docs/training-data.md describes every rule implemented here. */
#include "pipelines/relation_data.h"

#include <ctype.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/file.h"
#include "core/mem.h"
#include "core/status.h"
#include "io/image.h"
#include "io/torchfile.h"
#include "models/image_processor.h"

#define MAX_JSON_BYTES (64u << 20)

void rb_relation_data_options_init(rb_relation_data_options *o) {
    memset(o, 0, sizeof *o);
    o->size = 1024;
    o->mask_res = 128;
    o->clip_resize = 512;
    o->crop_p = 0.5;
    o->check_files = 1;
}

/* ---- built-in generator (splitmix64): used when the caller gives no rng ---- */

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double builtin_random(void *u) { return (double)(splitmix((uint64_t *)u) >> 11) * 0x1.0p-53; }
static int64_t builtin_randint(void *u, int64_t a, int64_t b) {
    uint64_t span = (uint64_t)(b - a) + 1, lim = UINT64_MAX - UINT64_MAX % span, x;
    do /* rejection sampling: no modulo bias */
        x = splitmix((uint64_t *)u);
    while (x >= lim);
    return a + (int64_t)(x % span);
}

static double draw_random(rb_relation_dataset *ds) {
    return ds->opt.rng.random ? ds->opt.rng.random(ds->opt.rng.user) : builtin_random(&ds->rng_state);
}
static rb_status draw_randint(rb_relation_dataset *ds, int64_t a, int64_t b, int *out, const char *id) {
    int64_t v = ds->opt.rng.randint ? ds->opt.rng.randint(ds->opt.rng.user, a, b) : builtin_randint(&ds->rng_state, a, b);
    if (v < a || v > b)
        return rb_error(RB_ERR_INVALID, "relation data: sample \"%s\": rng randint(%lld, %lld) returned %lld", id,
                        (long long)a, (long long)b, (long long)v);
    *out = (int)v;
    return RB_OK;
}

/* ---- strings and paths ---- */

static char *dupstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = rb_alloc(n, "relation data string");
    if (d)
        memcpy(d, s, n);
    return d;
}
static char *join(const char *dir, const char *a, const char *b, const char *c) {
    char buf[4096];
    int n = snprintf(buf, sizeof buf, "%s%s%s%s%s%s%s", dir, a ? "/" : "", a ? a : "", b ? "/" : "", b ? b : "",
                     c ? "/" : "", c ? c : "");
    if (n < 0 || (size_t)n >= sizeof buf) {
        rb_error(RB_ERR_INVALID, "relation data: path too long under %s", dir);
        return NULL;
    }
    char *d = dupstr(buf);
    if (!d)
        rb_error(RB_ERR_OOM, "relation data: out of memory");
    return d;
}
static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}
static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static void kp_free(rb_relation_kp_src *k) {
    rb_free(k->path);
    rb_free(k->data);
    memset(k, 0, sizeof *k);
}
static void item_free(rb_relation_item *it) {
    rb_free(it->id);
    rb_free(it->prompt);
    for (int k = 0; k < RB_RELATION_MAX_ENTITIES; k++) {
        rb_free(it->entities[k]);
        rb_free(it->concept_paths[k]);
        rb_free(it->mask_paths[k]);
        kp_free(&it->concept_kp[k]);
    }
    for (int k = 0; k < it->n_predicate; k++)
        rb_free(it->predicate[k]);
    rb_free(it->predicate);
    rb_free(it->motion_path);
    kp_free(&it->motion_kp);
    memset(it, 0, sizeof *it);
}

void rb_relation_dataset_close(rb_relation_dataset *ds) {
    if (!ds)
        return;
    for (int i = 0; i < ds->n_items; i++)
        item_free(&ds->items[i]);
    rb_free(ds->items);
    rb_free(ds->source);
    memset(ds, 0, sizeof *ds);
}

int rb_relation_dataset_count(const rb_relation_dataset *ds) { return ds ? ds->n_items : 0; }

/* ---- predicate fallback ---- */

/* Words trimmed from both ends of a derived predicate: articles and the conjunction "and" (so "A lion
 * and a polar bear hug." falls through to the words after the entities). */
static int is_article(const char *w, size_t n) {
    return (n == 1 && tolower((unsigned char)w[0]) == 'a') || (n == 2 && !strncasecmp(w, "an", 2)) ||
           (n == 3 && (!strncasecmp(w, "the", 3) || !strncasecmp(w, "and", 3)));
}

typedef struct word {
    const char *p;
    size_t n;
} word;

/* Splits on whitespace; trims leading/trailing punctuation of each word (keeps inner '-', '\''). */
static int split_words(const char *s, word *w, int cap) {
    int n = 0;
    while (*s && n < cap) {
        while (*s && isspace((unsigned char)*s))
            s++;
        const char *b = s;
        while (*s && !isspace((unsigned char)*s))
            s++;
        const char *e = s;
        while (b < e && ispunct((unsigned char)*b))
            b++;
        while (e > b && ispunct((unsigned char)e[-1]))
            e--;
        if (e > b)
            w[n++] = (word){b, (size_t)(e - b)};
    }
    return n;
}

/* Index of the first occurrence of the word sequence of `phrase` in w[from..), or -1. */
static int find_words(const word *w, int n, int from, const char *phrase) {
    word pw[64];
    int m = split_words(phrase, pw, 64);
    if (m == 0)
        return -1;
    for (int i = from; i + m <= n; i++) {
        int ok = 1;
        for (int j = 0; j < m && ok; j++)
            ok = w[i + j].n == pw[j].n && !strncasecmp(w[i + j].p, pw[j].p, pw[j].n);
        if (ok)
            return i;
    }
    return -1;
}

static rb_status words_to(const word *w, int b, int e, char *out, size_t cap) {
    while (b < e && is_article(w[b].p, w[b].n))
        b++;
    while (e > b && is_article(w[e - 1].p, w[e - 1].n))
        e--;
    if (e <= b)
        return RB_ERR_INVALID;
    const char *start = w[b].p, *end = w[e - 1].p + w[e - 1].n;
    if ((size_t)(end - start) + 1 > cap)
        return rb_error(RB_ERR_INVALID, "predicate fallback: phrase longer than %zu bytes", cap - 1);
    memcpy(out, start, (size_t)(end - start));
    out[end - start] = 0;
    return RB_OK;
}

rb_status rb_relation_derive_predicate(const char *prompt, int n_entities, char *const *entities, char *out,
                                       size_t cap) {
    word w[256];
    if (!prompt || !out || cap == 0 || n_entities < 1 || n_entities > RB_RELATION_MAX_ENTITIES)
        return rb_error(RB_ERR_INVALID, "predicate fallback: bad arguments");
    int n = split_words(prompt, w, 256);
    int e0 = find_words(w, n, 0, entities[0]);
    if (e0 < 0)
        return rb_error(RB_ERR_INVALID, "predicate fallback: entity \"%s\" is not a word of the prompt \"%s\"",
                        entities[0], prompt);
    word tmp[64];
    int after0 = e0 + split_words(entities[0], tmp, 64), after_last = after0;
    if (n_entities == 2) {
        int e1 = find_words(w, n, after0, entities[1]);
        if (e1 < 0)
            return rb_error(RB_ERR_INVALID,
                            "predicate fallback: entity \"%s\" does not follow \"%s\" in the prompt \"%s\"",
                            entities[1], entities[0], prompt);
        if (words_to(w, after0, e1, out, cap) == RB_OK)
            return RB_OK;
        after_last = e1 + split_words(entities[1], tmp, 64);
    }
    if (words_to(w, after_last, n, out, cap) == RB_OK)
        return RB_OK;
    return rb_error(RB_ERR_INVALID, "predicate fallback: no words between or after the entities in \"%s\"", prompt);
}

/* ---- prompts (prompts.json entry or manifest sample) ---- */

static rb_status set_strings(const char *src, const char *id, const char *key, json_t *v, char **dst, int max,
                             int *count) {
    int n = 0;
    if (json_is_string(v)) {
        if (max < 1)
            return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"%s\" has too many values", src, id, key);
        if (!(dst[0] = dupstr(json_string_value(v))))
            return rb_error(RB_ERR_OOM, "%s: out of memory", src);
        n = 1;
    } else if (json_is_array(v)) {
        if ((int)json_array_size(v) > max)
            return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"%s\" has %zu values (at most %d)", src, id, key,
                            json_array_size(v), max);
        for (size_t i = 0; i < json_array_size(v); i++) {
            json_t *e = json_array_get(v, i);
            if (!json_is_string(e))
                return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"%s\"[%zu] is not a string", src, id, key, i);
            if (!(dst[n++] = dupstr(json_string_value(e))))
                return rb_error(RB_ERR_OOM, "%s: out of memory", src);
        }
    } else {
        return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"%s\" must be a string or a list of strings", src, id,
                        key);
    }
    *count = n;
    return RB_OK;
}

/* prompt, entities/entity, predicate of one sample; it->n must be set (number of concept images). */
static rb_status parse_text(rb_relation_dataset *ds, rb_relation_item *it, json_t *o, const char *src) {
    if (!json_is_object(o))
        return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\" is not a JSON object", src, it->id);
    json_t *p = json_object_get(o, "prompt");
    if (!json_is_string(p))
        return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"prompt\" is missing or not a string", src, it->id);
    if (!(it->prompt = dupstr(json_string_value(p))))
        return rb_error(RB_ERR_OOM, "%s: out of memory", src);
    json_t *ents = json_object_get(o, "entities"), *ent = json_object_get(o, "entity");
    const char *key = ents ? "entities" : "entity";
    if (!ents && !ent)
        return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": neither \"entities\" nor \"entity\"", src, it->id);
    int ne = 0;
    RB_TRY(set_strings(src, it->id, key, ents ? ents : ent, it->entities, RB_RELATION_MAX_ENTITIES, &ne));
    if (ne != it->n)
        return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": %d %s for %d concept image%s", src, it->id, ne, key,
                        it->n, it->n == 1 ? "" : "s");
    json_t *pred = json_object_get(o, "predicate");
    if (pred && !json_is_null(pred)) {
        size_t np = json_is_array(pred) ? json_array_size(pred) : 1;
        if (np == 0)
            return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"predicate\" is an empty list", src, it->id);
        if (!(it->predicate = rb_calloc(np * sizeof(char *), "predicate")))
            return rb_error(RB_ERR_OOM, "%s: out of memory", src);
        return set_strings(src, it->id, "predicate", pred, it->predicate, (int)np, &it->n_predicate);
    }
    if (!ds->opt.derive_predicate)
        return rb_error(RB_ERR_FORMAT,
                        "%s: sample \"%s\" has no \"predicate\" (the official code would crash in get_phrases_idx); "
                        "add one, or set derive_predicate to take it from the prompt",
                        src, it->id);
    char buf[512];
    rb_status s = rb_relation_derive_predicate(it->prompt, it->n, it->entities, buf, sizeof buf);
    if (s != RB_OK)
        return rb_error_prefix(s, "%s: sample \"%s\"", src, it->id);
    if (!(it->predicate = rb_calloc(sizeof(char *), "predicate")) || !(it->predicate[0] = dupstr(buf)))
        return rb_error(RB_ERR_OOM, "%s: out of memory", src);
    it->n_predicate = 1;
    it->predicate_derived = 1;
    return RB_OK;
}

/* ---- official folder layout ---- */

static int id_cmp(const void *a, const void *b) {
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    size_t nx = strspn(x, "0123456789"), ny = strspn(y, "0123456789");
    if (nx == strlen(x) && ny == strlen(y) && nx != ny) /* both numbers: "2" before "10" */
        return nx < ny ? -1 : 1;
    return strcmp(x, y);
}

static rb_status fill_folder_item(rb_relation_dataset *ds, rb_relation_item *it, const char *root, json_t *prompts,
                                  const char *pj) {
    char *probe = join(root, "videos", it->id, "concept.png");
    if (!probe)
        return RB_ERR_OOM;
    int single = is_file(probe);
    rb_free(probe);
    it->n = single ? 1 : 2;
    static const char *kp_two[2] = {"concept_keyposes_one.pth", "concept_keyposes_two.pth"};
    static const char *mask_two[2] = {"motion0.png", "motion1.png"};
    char name[32];
    for (int k = 0; k < it->n; k++) {
        snprintf(name, sizeof name, single ? "concept.png" : "concept%d.png", k);
        if (!(it->concept_paths[k] = join(root, "videos", it->id, name)) ||
            !(it->concept_kp[k].path = join(root, "videos", it->id, single ? "concept_keyposes.pth" : kp_two[k])) ||
            !(it->mask_paths[k] = join(root, "masks", it->id, single ? "motion.png" : mask_two[k])))
            return RB_ERR_OOM;
    }
    if (!(it->motion_path = join(root, "videos", it->id, "motion.png")) ||
        !(it->motion_kp.path = join(root, "videos", it->id, "motion_keyposes.pth")))
        return RB_ERR_OOM;
    json_t *o = json_object_get(prompts, it->id);
    if (!o)
        return rb_error(RB_ERR_FORMAT, "%s: no entry for sample \"%s\" (videos/%s exists)", pj, it->id, it->id);
    return parse_text(ds, it, o, pj);
}

static rb_status open_folder(rb_relation_dataset *ds, const char *root) {
    char *pj = join(root, "prompts.json", NULL, NULL), *vid = join(root, "videos", NULL, NULL);
    char *text = NULL;
    json_t *prompts = NULL;
    DIR *d = NULL;
    char **ids = NULL;
    int n = 0, cap = 0;
    size_t tlen = 0;
    rb_status s = RB_OK;
    if (!pj || !vid) {
        s = RB_ERR_OOM;
        goto done;
    }
    if ((s = rb_read_file(pj, MAX_JSON_BYTES, &text, &tlen)) != RB_OK) {
        s = rb_error_prefix(s, "relation data %s", root);
        goto done;
    }
    json_error_t je;
    prompts = json_loads(text, 0, &je);
    if (!prompts || !json_is_object(prompts)) {
        s = prompts ? rb_error(RB_ERR_FORMAT, "%s: top level is not an object {\"<id>\": {...}}", pj)
                    : rb_error(RB_ERR_FORMAT, "%s: malformed JSON at line %d: %s", pj, je.line, je.text);
        goto done;
    }
    if (!(d = opendir(vid))) {
        s = rb_error(RB_ERR_IO, "relation data %s: cannot list %s", root, vid);
        goto done;
    }
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char *sub = join(vid, e->d_name, NULL, NULL);
        int dir = sub && is_dir(sub);
        rb_free(sub);
        if (!dir)
            continue;
        if (n == cap) {
            int nc = cap ? 2 * cap : 16;
            char **g = rb_alloc((size_t)nc * sizeof *g, "sample ids");
            if (!g) {
                s = rb_error(RB_ERR_OOM, "relation data: out of memory");
                goto done;
            }
            if (n)
                memcpy(g, ids, (size_t)n * sizeof *g);
            rb_free(ids);
            ids = g;
            cap = nc;
        }
        if (!(ids[n] = dupstr(e->d_name))) {
            s = rb_error(RB_ERR_OOM, "relation data: out of memory");
            goto done;
        }
        n++;
    }
    if (n == 0) {
        s = rb_error(RB_ERR_FORMAT, "relation data %s: no sample folders under videos/", root);
        goto done;
    }
    qsort(ids, (size_t)n, sizeof *ids, id_cmp);
    if (!(ds->items = rb_calloc((size_t)n * sizeof *ds->items, "relation items"))) {
        s = rb_error(RB_ERR_OOM, "relation data: out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        ds->items[i].id = ids[i];
        ids[i] = NULL;
        ds->n_items = i + 1;
        if ((s = fill_folder_item(ds, &ds->items[i], root, prompts, pj)) != RB_OK)
            goto done;
    }
done:
    if (d)
        closedir(d);
    for (int i = 0; i < n; i++)
        rb_free(ids ? ids[i] : NULL);
    rb_free(ids);
    json_decref(prompts);
    rb_free(text);
    rb_free(pj);
    rb_free(vid);
    return s;
}

/* ---- manifest ---- */

static char *resolve(const char *base, const char *p) {
    return p[0] == '/' ? dupstr(p) : join(base, p, NULL, NULL);
}

/* A path string, or inline numbers: [rows][17][2] (rows_or_zero > 0 forces the row count; a concept may
 * also be given as [17][2]). */
static rb_status parse_kp(const char *src, const char *id, const char *key, json_t *v, const char *base,
                          int rows_expected, rb_relation_kp_src *k) {
    if (json_is_string(v)) {
        if (!(k->path = resolve(base, json_string_value(v))))
            return RB_ERR_OOM;
        return RB_OK;
    }
    if (!json_is_array(v))
        return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"%s\" must be a path or nested lists of numbers", src, id,
                        key);
    int flat = json_array_size(v) == RB_RELATION_KEYPOINTS && json_is_array(json_array_get(v, 0)) &&
               json_is_number(json_array_get(json_array_get(v, 0), 0));
    int rows = flat ? 1 : (int)json_array_size(v);
    if (rows != rows_expected)
        return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"%s\" has %d keypoint rows, expected %d", src, id, key,
                        rows, rows_expected);
    if (!(k->data = rb_alloc((size_t)rows * RB_RELATION_KEYPOINTS * 2 * sizeof(float), "inline keypoints")))
        return RB_ERR_OOM;
    k->rows = rows;
    for (int r = 0; r < rows; r++) {
        json_t *row = flat ? v : json_array_get(v, (size_t)r);
        if (!json_is_array(row) || json_array_size(row) != RB_RELATION_KEYPOINTS)
            return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"%s\"[%d] is not a list of 17 points", src, id, key,
                            r);
        for (int j = 0; j < RB_RELATION_KEYPOINTS; j++) {
            json_t *pt = json_array_get(row, (size_t)j);
            if (!json_is_array(pt) || json_array_size(pt) != 2 || !json_is_number(json_array_get(pt, 0)) ||
                !json_is_number(json_array_get(pt, 1)))
                return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"%s\"[%d][%d] is not an [x, y] pair of numbers",
                                src, id, key, r, j);
            for (int c = 0; c < 2; c++)
                k->data[(r * RB_RELATION_KEYPOINTS + j) * 2 + c] = (float)json_number_value(json_array_get(pt, (size_t)c));
        }
    }
    return RB_OK;
}

static rb_status path_list(const char *src, const char *id, const char *key, json_t *v, const char *base, int n,
                           char **dst) {
    if (!json_is_array(v) || (int)json_array_size(v) != n)
        return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"%s\" must be a list of %d paths (one per concept)", src,
                        id, key, n);
    for (int k = 0; k < n; k++) {
        json_t *e = json_array_get(v, (size_t)k);
        if (!json_is_string(e))
            return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"%s\"[%d] is not a string", src, id, key, k);
        if (!(dst[k] = resolve(base, json_string_value(e))))
            return RB_ERR_OOM;
    }
    return RB_OK;
}

static rb_status fill_manifest_item(rb_relation_dataset *ds, rb_relation_item *it, json_t *o, const char *src,
                                    const char *base, int index) {
    char idbuf[32];
    json_t *id = json_is_object(o) ? json_object_get(o, "id") : NULL;
    if (id && !json_is_string(id))
        return rb_error(RB_ERR_FORMAT, "%s: samples[%d]: \"id\" must be a string", src, index);
    snprintf(idbuf, sizeof idbuf, "%d", index);
    if (!(it->id = dupstr(id ? json_string_value(id) : idbuf)))
        return RB_ERR_OOM;
    if (!json_is_object(o))
        return rb_error(RB_ERR_FORMAT, "%s: samples[%d] is not an object", src, index);
    json_t *concepts = json_object_get(o, "concepts");
    if (!json_is_array(concepts) || json_array_size(concepts) < 1 ||
        json_array_size(concepts) > RB_RELATION_MAX_ENTITIES)
        return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"concepts\" must list 1 or 2 image paths", src, it->id);
    it->n = (int)json_array_size(concepts);
    RB_TRY(path_list(src, it->id, "concepts", concepts, base, it->n, it->concept_paths));
    RB_TRY(path_list(src, it->id, "masks", json_object_get(o, "masks"), base, it->n, it->mask_paths));
    json_t *motion = json_object_get(o, "motion");
    if (!json_is_string(motion))
        return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"motion\" (target image path) is missing", src, it->id);
    if (!(it->motion_path = resolve(base, json_string_value(motion))))
        return RB_ERR_OOM;
    json_t *mk = json_object_get(o, "motion_keypoints"), *ck = json_object_get(o, "concept_keypoints");
    if (!mk || !ck)
        return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"motion_keypoints\" and \"concept_keypoints\" are required",
                        src, it->id);
    RB_TRY(parse_kp(src, it->id, "motion_keypoints", mk, base, it->n, &it->motion_kp));
    if (!json_is_array(ck) || (int)json_array_size(ck) != it->n)
        return rb_error(RB_ERR_FORMAT, "%s: sample \"%s\": \"concept_keypoints\" must have one entry per concept (%d)",
                        src, it->id, it->n);
    for (int k = 0; k < it->n; k++)
        RB_TRY(parse_kp(src, it->id, "concept_keypoints", json_array_get(ck, (size_t)k), base, 1, &it->concept_kp[k]));
    return parse_text(ds, it, o, src);
}

static rb_status open_manifest(rb_relation_dataset *ds, const char *path) {
    char *text = NULL, *base = NULL;
    json_t *m = NULL;
    size_t tlen = 0;
    rb_status s = rb_read_file(path, MAX_JSON_BYTES, &text, &tlen);
    if (s != RB_OK)
        return rb_error_prefix(s, "relation manifest");
    json_error_t je;
    m = json_loads(text, 0, &je);
    rb_free(text);
    if (!m)
        return rb_error(RB_ERR_FORMAT, "%s: malformed JSON at line %d: %s", path, je.line, je.text);
    json_t *fmt = json_object_get(m, "format"), *samples = json_object_get(m, "samples"), *root = json_object_get(m, "root");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), "relbooth.relation-data"))
        s = rb_error(RB_ERR_FORMAT, "%s: \"format\" must be \"relbooth.relation-data\"", path);
    else if (!json_is_integer(json_object_get(m, "version")) || json_integer_value(json_object_get(m, "version")) != 1)
        s = rb_error(RB_ERR_UNSUPPORTED, "%s: \"version\" must be 1", path);
    else if (!json_is_array(samples) || json_array_size(samples) == 0)
        s = rb_error(RB_ERR_FORMAT, "%s: \"samples\" must be a non-empty list", path);
    else if (root && !json_is_string(root))
        s = rb_error(RB_ERR_FORMAT, "%s: \"root\" must be a string", path);
    if (s != RB_OK)
        goto done;
    /* relative paths: against "root" (itself relative to the manifest's folder) or the manifest's folder */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    else
        snprintf(dir, sizeof dir, ".");
    if (!(base = root ? resolve(dir, json_string_value(root)) : dupstr(dir))) {
        s = RB_ERR_OOM;
        goto done;
    }
    size_t n = json_array_size(samples);
    if (!(ds->items = rb_calloc(n * sizeof *ds->items, "relation items"))) {
        s = rb_error(RB_ERR_OOM, "relation data: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n && s == RB_OK; i++) {
        ds->n_items = (int)i + 1;
        s = fill_manifest_item(ds, &ds->items[i], json_array_get(samples, i), path, base, (int)i);
    }
    for (int i = 0; i < ds->n_items && s == RB_OK; i++)
        for (int j = 0; j < i && s == RB_OK; j++)
            if (!strcmp(ds->items[i].id, ds->items[j].id))
                s = rb_error(RB_ERR_FORMAT, "%s: sample id \"%s\" appears twice", path, ds->items[i].id);
done:
    rb_free(base);
    json_decref(m);
    return s;
}

static rb_status check_item_files(const rb_relation_dataset *ds, const rb_relation_item *it) {
    const char *p[2 + 3 * RB_RELATION_MAX_ENTITIES];
    int n = 0;
    p[n++] = it->motion_path;
    p[n++] = it->motion_kp.path;
    for (int k = 0; k < it->n; k++) {
        p[n++] = it->concept_paths[k];
        p[n++] = it->mask_paths[k];
        p[n++] = it->concept_kp[k].path;
    }
    for (int i = 0; i < n; i++)
        if (p[i] && !is_file(p[i]))
            return rb_error(RB_ERR_IO, "relation data %s: sample \"%s\": missing file %s", ds->source, it->id, p[i]);
    return RB_OK;
}

rb_status rb_relation_dataset_open(rb_relation_dataset *ds, const char *root_or_manifest,
                                   const rb_relation_data_options *opt) {
    if (!ds || !root_or_manifest)
        return rb_error(RB_ERR_INVALID, "relation data: NULL argument");
    memset(ds, 0, sizeof *ds);
    if (opt)
        ds->opt = *opt;
    else
        rb_relation_data_options_init(&ds->opt);
    const rb_relation_data_options *o = &ds->opt;
    if (o->size < 2 || o->size > 8192 || o->mask_res < 1 || o->mask_res > o->size || o->clip_resize < 0 ||
        !(o->crop_p >= 0 && o->crop_p <= 1) || o->expect_size < 0)
        return rb_error(RB_ERR_INVALID, "relation data: bad options (size %d, mask_res %d, clip_resize %d, crop_p %g)",
                        o->size, o->mask_res, o->clip_resize, o->crop_p);
    if (!o->rng.random != !o->rng.randint)
        return rb_error(RB_ERR_INVALID, "relation data: rng needs both random and randint (or neither)");
    ds->rng_state = o->seed;
    if (!(ds->source = dupstr(root_or_manifest)))
        return rb_error(RB_ERR_OOM, "relation data: out of memory");
    ds->is_manifest = !is_dir(root_or_manifest);
    rb_status s = ds->is_manifest ? open_manifest(ds, root_or_manifest) : open_folder(ds, root_or_manifest);
    for (int i = 0; s == RB_OK && o->check_files && i < ds->n_items; i++)
        s = check_item_files(ds, &ds->items[i]);
    if (s != RB_OK)
        rb_relation_dataset_close(ds);
    return s;
}

/* ---- sample loading ---- */

#define SERR(st, ...) rb_error_prefix(rb_error(st, __VA_ARGS__), "relation data: sample \"%s\"", it->id)

/* keypoints [rows, 17, 2] into dst (f32): from a torch file or inline; checked for shape, dtype, finiteness
 * and the [0, 1] range. */
static rb_status load_kp(const rb_relation_item *it, const rb_relation_kp_src *k, int rows, float *dst,
                         const char *what) {
    size_t cnt = (size_t)rows * RB_RELATION_KEYPOINTS * 2;
    const char *name = k->path ? k->path : what;
    if (k->data) {
        memcpy(dst, k->data, cnt * sizeof(float));
    } else {
        rb_torchfile f;
        rb_status s = rb_torch_open(&f, k->path);
        if (s != RB_OK)
            return rb_error_prefix(s, "relation data: sample \"%s\"", it->id);
        char shp[64] = "";
        if (f.n != 1) {
            rb_torch_close(&f);
            return SERR(RB_ERR_FORMAT, "%s: holds %d tensors, expected one keypoint tensor", name, f.n);
        }
        const rb_tensor *t = &f.entries[0].t;
        if (!rb_dtypes[t->dtype].is_float || t->ndim != 3 || t->shape[0] != rows ||
            t->shape[1] != RB_RELATION_KEYPOINTS || t->shape[2] != 2) {
            rb_shape_str(t, shp, sizeof shp);
            const char *dt = rb_dtype_name(t->dtype); /* a static string: valid after close */
            rb_torch_close(&f);
            return SERR(RB_ERR_FORMAT, "%s: keypoints are %s %s, expected a float tensor [%d, 17, 2]", name, dt, shp,
                        rows);
        }
        for (size_t i = 0; i < cnt; i++)
            dst[i] = (float)rb_tensor_get(t, (int64_t)i);
        rb_torch_close(&f);
    }
    for (size_t i = 0; i < cnt; i++) {
        int r = (int)(i / 34), j = (int)(i / 2 % 17);
        if (!isfinite(dst[i]))
            return SERR(RB_ERR_FORMAT, "%s: keypoint [%d, %d] %c is %g (not finite)", name, r, j, "xy"[i % 2],
                        (double)dst[i]);
        if (dst[i] < 0.0f || dst[i] > 1.0f)
            return SERR(RB_ERR_FORMAT, "%s: keypoint [%d, %d] %c = %g is outside [0, 1] (keypoints are normalised)",
                        name, r, j, "xy"[i % 2], (double)dst[i]);
    }
    return RB_OK;
}

static rb_status load_img(const rb_relation_dataset *ds, const rb_relation_item *it, const char *path, int channels,
                          rb_image *img) {
    rb_status s = rb_image_load(img, path, channels);
    if (s != RB_OK)
        return rb_error_prefix(s, "relation data: sample \"%s\"", it->id);
    int e = ds->opt.expect_size;
    if (e > 0 && (img->width != e || img->height != e)) {
        int w = img->width, h = img->height;
        rb_image_free(img);
        return SERR(RB_ERR_FORMAT, "%s: image is %dx%d, expected %dx%d (expect_size)", path, w, h, e, e);
    }
    return RB_OK;
}

/* data_utils.RandomResizeCrop on one image (and its masks), into S x S canvases (zero outside the paste).
 * img: [h, w, c] u8; masks: nm images [h, w] u8. canvas: [S, S, c]; mcanvas[k]: [S, S]. */
static rb_status resize_crop_paste(rb_relation_dataset *ds, const rb_relation_item *it, const rb_image *img,
                                   const rb_image *masks, int nm, uint8_t *canvas, uint8_t **mcanvas, int slot,
                                   rb_relation_sample *out) {
    const int S = ds->opt.size, w = img->width, h = img->height;
    /* 1. F.resize(img, S): short edge -> S, long = int(S * long / short) */
    int w1 = w <= h ? S : (int)((double)S * w / h), h1 = w <= h ? (int)((double)S * h / w) : S;
    /* 2. the crop window [x0, x0 + cw) x [y0, y0 + ch) of the w1 x h1 image */
    int x0 = 0, y0 = 0, cw = w1, ch = h1;
    if (draw_random(ds) < ds->opt.crop_p) {
        if (h1 > w1) { /* portrait: keep rows 0 .. w + crop_pos - 1 (top anchored, as the reference does) */
            int pos;
            RB_TRY(draw_randint(ds, 0, h1 - w1, &pos, it->id));
            ch = w1 + pos;
        } else if (w1 != S || h1 != S) { /* PairRandomCrop (x then y) / RandomCrop (torch RNG: y then x) */
            int a, b;
            RB_TRY(draw_randint(ds, 0, nm ? w1 - S : h1 - S, &a, it->id));
            RB_TRY(draw_randint(ds, 0, nm ? h1 - S : w1 - S, &b, it->id));
            x0 = nm ? a : b;
            y0 = nm ? b : a;
            cw = ch = S;
        } else if (nm) { /* square with masks: PairRandomCrop still draws randint(0, 0) twice */
            int a;
            RB_TRY(draw_randint(ds, 0, 0, &a, it->id));
            RB_TRY(draw_randint(ds, 0, 0, &a, it->id));
        }
    }
    /* 3. F.resize(size=S-1, max_size=S) */
    int sh = cw <= ch ? cw : ch, lg = cw <= ch ? ch : cw;
    int ns = S - 1, nl = (int)((double)(S - 1) * lg / sh);
    if (nl > S) {
        ns = (int)((double)S * ns / nl);
        nl = S;
    }
    int w3 = cw <= ch ? ns : nl, h3 = cw <= ch ? nl : ns;
    if (w3 < 1 || h3 < 1)
        return SERR(RB_ERR_FORMAT, "image %dx%d is too elongated for a %d canvas", w, h, S);
    /* 4. paste offsets: y first */
    int py, px;
    RB_TRY(draw_randint(ds, 0, S - h3, &py, it->id));
    RB_TRY(draw_randint(ds, 0, S - w3, &px, it->id));
    out->paste_y[slot] = py, out->paste_x[slot] = px, out->pasted_h[slot] = h3, out->pasted_w[slot] = w3;

    size_t big = (size_t)cw * ch * (size_t)img->channels, small = (size_t)w3 * h3 * (size_t)img->channels;
    uint8_t *t1 = rb_alloc(big, "resize crop"), *t2 = rb_alloc(small, "resize crop");
    rb_status s = t1 && t2 ? RB_OK : rb_error(RB_ERR_OOM, "relation data: out of memory");
    for (int k = -1; k < nm && s == RB_OK; k++) {
        const rb_image *src = k < 0 ? img : &masks[k];
        int C = src->channels;
        s = rb_pil_resize_window(t1, w1, h1, x0, y0, cw, ch, src->data, w, h, C, RB_RESAMPLE_BILINEAR);
        if (s == RB_OK)
            s = rb_pil_resize(t2, w3, h3, t1, cw, ch, C, RB_RESAMPLE_BILINEAR);
        uint8_t *dst = k < 0 ? canvas : mcanvas[k];
        if (s == RB_OK) {
            memset(dst, 0, (size_t)S * S * (size_t)C);
            for (int y = 0; y < h3; y++)
                memcpy(dst + ((size_t)(py + y) * S + px) * C, t2 + (size_t)y * w3 * C, (size_t)w3 * C);
        }
    }
    rb_free(t1);
    rb_free(t2);
    return s;
}

/* ToTensor + Normalize(0.5, 0.5) of an S x S x 3 canvas into [3, S, S] (float32 arithmetic as torch). */
static void to_tensor(float *dst, const uint8_t *src, int S) {
    size_t hw = (size_t)S * S;
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < hw; i++)
            dst[c * hw + i] = ((float)src[i * 3 + c] / 255.0f - 0.5f) / 0.5f;
}

/* cv2.resize(mask / 255.0 (float64), (R, R)) with INTER_LINEAR: float coefficients, double sums. */
static void cv2_linear(float *dst, const uint8_t *m, int S, int R, double *row0, double *row1, unsigned char *rmask) {
    double scale = (double)S / R;
    for (int dy = 0; dy < R; dy++) {
        float fy = (float)((dy + 0.5) * scale - 0.5);
        int sy = (int)floorf(fy);
        fy -= (float)sy;
        if (sy < 0)
            sy = 0, fy = 0;
        if (sy >= S - 1)
            sy = S - 1, fy = 0;
        int sy1 = sy + 1 < S ? sy + 1 : S - 1;
        double *rows[2] = {row0, row1};
        int ys[2] = {sy, sy1};
        for (int r = 0; r < 2; r++)
            for (int dx = 0; dx < R; dx++) {
                float fx = (float)((dx + 0.5) * scale - 0.5);
                int sx = (int)floorf(fx);
                fx -= (float)sx;
                if (sx < 0)
                    sx = 0, fx = 0;
                if (sx >= S - 1)
                    sx = S - 1, fx = 0;
                int sx1 = sx + 1 < S ? sx + 1 : S - 1;
                const uint8_t *p = m + (size_t)ys[r] * S;
                rows[r][dx] = (p[sx] / 255.0) * (double)(1.0f - fx) + (p[sx1] / 255.0) * (double)fx;
            }
        for (int dx = 0; dx < R; dx++) {
            double v = row0[dx] * (double)(1.0f - fy) + row1[dx] * (double)fy;
            dst[(size_t)dy * R + dx] = (float)v;
            rmask[(size_t)dy * R + dx] = v >= 0.5;
        }
    }
}

void rb_relation_sample_free(rb_relation_sample *s) {
    if (!s)
        return;
    rb_tensor *t[] = {&s->image,       &s->concept_images_for_vae, &s->concept_images, &s->keypoints,
                      &s->mask_values, &s->masks,                  &s->object_segmaps, &s->bboxes};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        if (t[i]->data)
            rb_tensor_free(t[i]);
    memset(s, 0, sizeof *s);
}

static rb_status check_masks(const rb_relation_dataset *ds, const rb_relation_item *it, const rb_image *motion,
                             const rb_image *masks) {
    for (int k = 0; k < it->n; k++) {
        const rb_image *m = &masks[k];
        if (m->width != motion->width || m->height != motion->height)
            return SERR(RB_ERR_FORMAT, "%s: mask is %dx%d but the motion image is %dx%d", it->mask_paths[k], m->width,
                        m->height, motion->width, motion->height);
        if (ds->opt.allow_soft_masks)
            continue;
        size_t n = (size_t)m->width * m->height, bad = 0, first = 0;
        for (size_t i = 0; i < n; i++)
            if (m->data[i] != 0 && m->data[i] != 255 && bad++ == 0)
                first = i;
        if (bad)
            return SERR(RB_ERR_FORMAT,
                        "%s: mask is not binary: %zu pixels are neither 0 nor 255 (first %u at x %zu, y %zu); "
                        "set allow_soft_masks to accept it",
                        it->mask_paths[k], bad, m->data[first], first % (size_t)m->width, first / (size_t)m->width);
    }
    return RB_OK;
}

rb_status rb_relation_sample_load(rb_relation_dataset *ds, int index, rb_relation_sample *out) {
    if (!ds || !out)
        return rb_error(RB_ERR_INVALID, "relation data: NULL argument");
    memset(out, 0, sizeof *out);
    if (index < 0 || index >= ds->n_items)
        return rb_error(RB_ERR_INVALID, "relation data %s: index %d out of range (%d samples)", ds->source, index,
                        ds->n_items);
    const rb_relation_item *it = &ds->items[index];
    const int n = it->n, S = ds->opt.size, R = ds->opt.mask_res;
    rb_image concepts[RB_RELATION_MAX_ENTITIES] = {0}, masks[RB_RELATION_MAX_ENTITIES] = {0}, motion = {0};
    uint8_t *canvas = NULL, *mcanvas[RB_RELATION_MAX_ENTITIES] = {0}, *rmask = NULL;
    double *rows = NULL;
    rb_status s;
    out->item = it;

    /* keypoints first: cheap, and the most likely to be wrong */
    int64_t kshape[3] = {2 * n, RB_RELATION_KEYPOINTS, 2};
    if ((s = rb_tensor_alloc(&out->keypoints, RB_F32, 3, kshape, "keypoints")) != RB_OK)
        goto fail;
    float *kp = out->keypoints.data;
    if ((s = load_kp(it, &it->motion_kp, n, kp, "motion_keypoints")) != RB_OK)
        goto fail;
    for (int k = 0; k < n; k++)
        if ((s = load_kp(it, &it->concept_kp[k], 1, kp + (size_t)(n + k) * 34, "concept_keypoints")) != RB_OK)
            goto fail;

    for (int k = 0; k < n; k++)
        if ((s = load_img(ds, it, it->concept_paths[k], 3, &concepts[k])) != RB_OK)
            goto fail;
    if ((s = load_img(ds, it, it->motion_path, 3, &motion)) != RB_OK)
        goto fail;
    for (int k = 0; k < n; k++)
        if ((s = rb_image_load(&masks[k], it->mask_paths[k], 1)) != RB_OK) {
            s = rb_error_prefix(s, "relation data: sample \"%s\"", it->id);
            goto fail;
        }
    if ((s = check_masks(ds, it, &motion, masks)) != RB_OK)
        goto fail;
    out->original_size[0] = motion.height;
    out->original_size[1] = motion.width;

    int64_t ishape[4] = {n, 3, S, S}, mshape[3] = {n, R, R}, bshape[2] = {n, 4};
    if ((s = rb_tensor_alloc(&out->image, RB_F32, 3, ishape + 1, "image")) != RB_OK ||
        (s = rb_tensor_alloc(&out->concept_images_for_vae, RB_F32, 4, ishape, "concept images")) != RB_OK ||
        (s = rb_tensor_alloc(&out->mask_values, RB_F32, 3, mshape, "mask values")) != RB_OK ||
        (s = rb_tensor_alloc(&out->masks, RB_F32, 3, mshape, "masks")) != RB_OK ||
        (s = rb_tensor_alloc(&out->object_segmaps, RB_F32, 2, mshape + 1, "object segmaps")) != RB_OK ||
        (s = rb_tensor_alloc(&out->bboxes, RB_F32, 2, bshape, "bboxes")) != RB_OK)
        goto fail;
    canvas = rb_alloc((size_t)S * S * 3, "canvas");
    rmask = rb_alloc((size_t)R * R, "mask");
    rows = rb_alloc((size_t)2 * R * sizeof(double), "mask rows");
    for (int k = 0; k < n; k++)
        mcanvas[k] = rb_alloc((size_t)S * S, "mask canvas");
    if (!canvas || !rmask || !rows || !mcanvas[0] || (n == 2 && !mcanvas[1])) {
        s = rb_error(RB_ERR_OOM, "relation data: out of memory");
        goto fail;
    }

    /* draw order of the reference: each concept, then the motion image with its masks */
    size_t img_elems = (size_t)3 * S * S;
    for (int k = 0; k < n; k++) {
        if ((s = resize_crop_paste(ds, it, &concepts[k], NULL, 0, canvas, NULL, k, out)) != RB_OK)
            goto fail;
        to_tensor((float *)out->concept_images_for_vae.data + k * img_elems, canvas, S);
    }
    if ((s = resize_crop_paste(ds, it, &motion, masks, n, canvas, mcanvas, n, out)) != RB_OK)
        goto fail;
    to_tensor(out->image.data, canvas, S);

    float *mv = out->mask_values.data, *mb = out->masks.data, *seg = out->object_segmaps.data,
          *bb = out->bboxes.data;
    memset(seg, 0, (size_t)R * R * sizeof(float));
    for (int k = 0; k < n; k++) {
        cv2_linear(mv + (size_t)k * R * R, mcanvas[k], S, R, rows, rows + R, rmask);
        int x1 = R, y1 = R, x2 = -1, y2 = -1;
        for (int y = 0; y < R; y++)
            for (int x = 0; x < R; x++) {
                int on = rmask[(size_t)y * R + x];
                mb[(size_t)k * R * R + (size_t)y * R + x] = (float)on;
                if (on) {
                    seg[(size_t)y * R + x] = 1.0f;
                    x1 = x < x1 ? x : x1, x2 = x > x2 ? x : x2;
                    y1 = y < y1 ? y : y1, y2 = y > y2 ? y : y2;
                }
            }
        float *b = bb + 4 * k;
        if (x2 < 0) /* mask2bbox of an empty mask: (0, 0, 0, 0) */
            b[0] = b[1] = b[2] = b[3] = 0.0f;
        else
            b[0] = (float)x1 / R, b[1] = (float)y1 / R, b[2] = (float)x2 / R, b[3] = (float)y2 / R;
    }

    if (ds->opt.clip_resize > 0) { /* CLIPImageProcessor()(concept.convert("RGB").resize((512, 512))) */
        rb_preprocess_config cfg;
        rb_preprocess_config_init(&cfg, RB_PREPROCESS_CLIP);
        int ch = 0, cw = 0;
        if ((s = rb_preprocess_output_size(&cfg, ds->opt.clip_resize, ds->opt.clip_resize, &ch, &cw)) != RB_OK)
            goto fail;
        int64_t cshape[4] = {n, 3, ch, cw};
        if ((s = rb_tensor_alloc(&out->concept_images, RB_F32, 4, cshape, "clip concept images")) != RB_OK)
            goto fail;
        for (int k = 0; k < n; k++) {
            rb_image r;
            if ((s = rb_image_resize(&r, &concepts[k], ds->opt.clip_resize, ds->opt.clip_resize,
                                     RB_RESAMPLE_BICUBIC)) != RB_OK)
                goto fail;
            s = rb_image_preprocess(&r, &cfg, (float *)out->concept_images.data + (size_t)k * 3 * ch * cw);
            rb_image_free(&r);
            if (s != RB_OK)
                goto fail;
        }
    }
    goto done;
fail:
    rb_relation_sample_free(out);
done:
    for (int k = 0; k < RB_RELATION_MAX_ENTITIES; k++) {
        rb_image_free(&concepts[k]);
        rb_image_free(&masks[k]);
        rb_free(mcanvas[k]);
    }
    rb_image_free(&motion);
    rb_free(canvas);
    rb_free(rmask);
    rb_free(rows);
    return s;
}
