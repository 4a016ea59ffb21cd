/* RelationLoRA training data: golden relation_data (official layout -> KeypointsDataset tensors), our JSON
 * manifest, the predicate fallback and the validation errors. */
/* scratch paths are built from 4 KiB buffers; truncation would only make a test fail */
#pragma GCC diagnostic ignored "-Wformat-truncation"
#include <errno.h>
#include <jansson.h>
#include <unistd.h>

#include "core/mem.h"
#include "core/status.h"
#include "harness.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "pipelines/relation_data.h"

/* ---- scripted rng: replays expected/items.json "rng_calls" and checks each call's arguments ---- */

typedef struct script {
    json_t *calls;
    size_t next;
    int mismatches;
} script;

static double s_random(void *u) {
    script *s = u;
    json_t *c = json_array_get(s->calls, s->next++);
    if (!c || strcmp(json_string_value(json_object_get(c, "call")), "random()")) {
        s->mismatches++;
        return 0.99;
    }
    return json_number_value(json_object_get(c, "value"));
}
static int64_t s_randint(void *u, int64_t a, int64_t b) {
    script *s = u;
    json_t *c = json_array_get(s->calls, s->next++);
    char want[64];
    snprintf(want, sizeof want, "randint(%lld, %lld)", (long long)a, (long long)b);
    if (!c || strcmp(json_string_value(json_object_get(c, "call")), want)) {
        fprintf(stderr, "  rng call %zu: got %s, script has %s\n", s->next - 1, want,
                c ? json_string_value(json_object_get(c, "call")) : "(end)");
        s->mismatches++;
        return a;
    }
    return json_integer_value(json_object_get(c, "value"));
}

static json_t *items_json(void) {
    const char *p = t_golden_path("relation_data/expected/items.json");
    return p ? json_load_file(p, 0, NULL) : NULL;
}

/* compares a sample with the golden tensors and pngs of id `id` */
static void check_against_golden(const rb_relation_sample *s, const char *id, const rb_safetensors *io) {
    char key[128], rel[256];
    const int S = 1024;
    /* images: (png / 255 - 0.5) / 0.5 exactly */
    for (int k = -1; k < 2; k++) {
        if (k < 0)
            snprintf(rel, sizeof rel, "relation_data/expected/%s/images_uint8.png", id);
        else
            snprintf(rel, sizeof rel, "relation_data/expected/%s/concept_images_for_vae_%d_uint8.png", id, k);
        rb_image png;
        const char *p = t_golden_path(rel);
        if (!p || rb_image_load(&png, p, 3) != RB_OK) {
            CHECK(0, "cannot load %s", rel);
            continue;
        }
        CHECK(png.width == S && png.height == S, "%s size", rel);
        const float *got = k < 0 ? s->image.data : (const float *)s->concept_images_for_vae.data + (size_t)k * 3 * S * S;
        size_t bad = 0;
        for (int c = 0; c < 3; c++)
            for (size_t i = 0; i < (size_t)S * S; i++) {
                float want = ((float)png.data[i * 3 + c] / 255.0f - 0.5f) / 0.5f;
                bad += got[(size_t)c * S * S + i] != want;
            }
        CHECK(bad == 0, "%s: %zu values differ", rel, bad);
        rb_image_free(&png);
    }
    static const char *names[] = {"keypoints", "mask_values_128", "masks_128", "object_segmaps", "bboxes",
                                  "concept_images"};
    const rb_tensor *mine[] = {&s->keypoints, &s->mask_values, &s->masks, &s->object_segmaps, &s->bboxes,
                               &s->concept_images};
    for (int i = 0; i < 6; i++) {
        snprintf(key, sizeof key, "%s.%s", id, names[i]);
        const rb_tensor *g = rb_st_get(io, key);
        if (!g) {
            CHECK(i == 5 && strcmp(id, "0"), "golden %s missing", key); /* concept_images: first id only */
            continue;
        }
        REQUIRE(rb_same_shape(g, mine[i]), "%s shape", key);
        size_t n = (size_t)rb_numel(g);
        double maxd = 0;
        /* everything is exact except the CLIP processor floats (float32 arithmetic, same order) */
        float tol = i == 5 ? 1e-6f : 0.0f;
        int ok = t_allclose(mine[i]->data, g->data, n, tol, 0, &maxd);
        CHECK(ok, "%s: max diff %g", key, maxd);
    }
    snprintf(key, sizeof key, "%s.original_sizes", id);
    const rb_tensor *os = rb_st_get(io, key);
    REQUIRE(os && os->dtype == RB_I64, "%s", key);
    CHECK(((int64_t *)os->data)[0] == s->original_size[0] && ((int64_t *)os->data)[1] == s->original_size[1],
          "original size %lld x %lld", (long long)s->original_size[0], (long long)s->original_size[1]);
    snprintf(key, sizeof key, "%s.crop_top_lefts", id);
    const rb_tensor *ct = rb_st_get(io, key);
    REQUIRE(ct, "%s", key);
    CHECK(((int64_t *)ct->data)[0] == s->crop_top_left[0] && ((int64_t *)ct->data)[1] == s->crop_top_left[1], "crop");
}

/* opens the golden folder (or a manifest) and loads every id with the scripted draws */
static void load_all_golden(const char *source, rb_relation_sample out[2], int *ok) {
    *ok = 0;
    json_t *items = items_json();
    REQUIRE(items, "items.json");
    rb_relation_data_options o;
    rb_relation_data_options_init(&o);
    o.derive_predicate = 1;
    script sc = {0};
    o.rng = (rb_relation_rng){s_random, s_randint, &sc};
    rb_relation_dataset ds;
    rb_status st = rb_relation_dataset_open(&ds, source, &o);
    if (st != RB_OK) {
        json_decref(items);
        REQUIRE(0, "open %s: %s", source, rb_last_error());
    }
    CHECK(rb_relation_dataset_count(&ds) == 2, "count %d", rb_relation_dataset_count(&ds));
    for (int i = 0; i < 2 && i < ds.n_items; i++) {
        const char *id = ds.items[i].id;
        sc.calls = json_object_get(json_object_get(items, id), "rng_calls");
        sc.next = 0;
        sc.mismatches = 0;
        st = rb_relation_sample_load(&ds, i, &out[i]);
        CHECK(st == RB_OK, "load %s: %s", id, rb_last_error());
        CHECK(sc.mismatches == 0 && sc.next == json_array_size(sc.calls), "sample %s: %d rng mismatches, %zu/%zu calls",
              id, sc.mismatches, sc.next, json_array_size(sc.calls));
        out[i].item = NULL; /* the dataset is closed below */
    }
    /* text fields */
    CHECK(!strcmp(ds.items[0].id, "0") && !strcmp(ds.items[1].id, "1"), "ids");
    CHECK(!strcmp(ds.items[0].prompt, "A cat is hugging a dog."), "prompt 0");
    CHECK(!strcmp(ds.items[0].entities[0], "cat") && !strcmp(ds.items[0].entities[1], "dog"), "entities 0");
    CHECK(ds.items[0].n_predicate == 1 && !strcmp(ds.items[0].predicate[0], "hugging") &&
              !ds.items[0].predicate_derived,
          "predicate 0");
    CHECK(!strcmp(ds.items[1].entities[0], "fox") && !strcmp(ds.items[1].entities[1], "rabbit"), "entities 1");
    CHECK(ds.items[1].n_predicate == 1 && ds.items[1].predicate_derived &&
              !strcmp(ds.items[1].predicate[0], "shakes hands with"),
          "derived predicate 1: %s", ds.items[1].n_predicate ? ds.items[1].predicate[0] : "(none)");
    rb_relation_dataset_close(&ds);
    json_decref(items);
    *ok = 1;
}

static void t_golden_folder(void) {
    const char *root = t_golden_path("relation_data/data");
    if (!root)
        return;
    char rootbuf[4096];
    snprintf(rootbuf, sizeof rootbuf, "%s", root);
    const char *iop = t_golden_path("relation_data/io.safetensors");
    rb_safetensors io;
    REQUIRE(iop && rb_st_open(&io, iop) == RB_OK, "io.safetensors: %s", rb_last_error());
    rb_relation_sample s[2] = {0};
    int ok;
    load_all_golden(rootbuf, s, &ok);
    if (ok) {
        check_against_golden(&s[0], "0", &io);
        check_against_golden(&s[1], "1", &io);
        /* recorded draws: sample 1's concept 1 is 48x64 -> cropped, pasted 933 wide at x 45 */
        CHECK(s[1].pasted_w[1] == 933 && s[1].pasted_h[1] == 1024 && s[1].paste_x[1] == 45, "paste of 1/concept1");
        CHECK(s[1].pasted_w[2] == 1024 && s[1].pasted_h[2] == 682 && s[1].paste_y[2] == 171, "paste of 1/motion");
    }
    rb_relation_sample_free(&s[0]);
    rb_relation_sample_free(&s[1]);
    rb_st_close(&io);
}

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    fputs(text, f);
    return fclose(f) == 0;
}

/* A manifest of the golden data: sample 0 with inline keypoints (values from io.safetensors) and
 * absolute paths, sample 1 with "root" relative paths and keypoint files. */
static int write_manifest(const char *path, const char *data_root, const rb_safetensors *io) {
    json_t *m = json_object(), *samples = json_array();
    json_object_set_new(m, "format", json_string("relbooth.relation-data"));
    json_object_set_new(m, "version", json_integer(1));
    json_object_set_new(m, "root", json_string(data_root));
    const char *ents[2][2] = {{"cat", "dog"}, {"fox", "rabbit"}};
    const char *prompts[2] = {"A cat is hugging a dog.", "A fox shakes hands with a rabbit."};
    for (int i = 0; i < 2; i++) {
        json_t *o = json_object();
        char id[4], b[512];
        snprintf(id, sizeof id, "%d", i);
        json_object_set_new(o, "id", json_string(id));
        json_object_set_new(o, "prompt", json_string(prompts[i]));
        json_object_set_new(o, "entities", json_pack("[ss]", ents[i][0], ents[i][1]));
        if (i == 0)
            json_object_set_new(o, "predicate", json_pack("[s]", "hugging"));
        json_t *concepts = json_array(), *masks = json_array();
        for (int k = 0; k < 2; k++) {
            snprintf(b, sizeof b, "%s/videos/%d/concept%d.png", i == 0 ? data_root : ".", i, k);
            json_array_append_new(concepts, json_string(i == 0 ? b : b + 2));
            snprintf(b, sizeof b, "%s/masks/%d/motion%d.png", i == 0 ? data_root : ".", i, k);
            json_array_append_new(masks, json_string(i == 0 ? b : b + 2));
        }
        json_object_set_new(o, "concepts", concepts);
        json_object_set_new(o, "masks", masks);
        snprintf(b, sizeof b, "videos/%d/motion.png", i);
        json_object_set_new(o, "motion", json_string(b));
        if (i == 0) { /* inline: motion [2][17][2], concepts [17][2] and [1][17][2] */
            const rb_tensor *kp = rb_st_get(io, "0.keypoints");
            if (!kp)
                return 0;
            const float *v = kp->data;
            json_t *rows[4];
            for (int r = 0; r < 4; r++) {
                rows[r] = json_array();
                for (int j = 0; j < 17; j++)
                    json_array_append_new(rows[r], json_pack("[ff]", (double)v[(r * 17 + j) * 2],
                                                             (double)v[(r * 17 + j) * 2 + 1]));
            }
            json_object_set_new(o, "motion_keypoints", json_pack("[oo]", rows[0], rows[1]));
            json_object_set_new(o, "concept_keypoints", json_pack("[o[o]]", rows[2], rows[3]));
        } else {
            json_object_set_new(o, "motion_keypoints", json_string("videos/1/motion_keyposes.pth"));
            json_object_set_new(o, "concept_keypoints",
                                json_pack("[ss]", "videos/1/concept_keyposes_one.pth", "videos/1/concept_keyposes_two.pth"));
        }
        json_array_append_new(samples, o);
    }
    json_object_set_new(m, "samples", samples);
    int ok = json_dump_file(m, path, JSON_INDENT(1)) == 0;
    json_decref(m);
    return ok;
}

static int same_tensor(const rb_tensor *a, const rb_tensor *b) {
    return rb_same_shape(a, b) && a->dtype == b->dtype && !memcmp(a->data, b->data, rb_nbytes(a));
}

static void t_manifest_matches_folder(void) {
    const char *root = t_golden_path("relation_data/data");
    if (!root)
        return;
    char rootbuf[4096], mpath[512];
    snprintf(rootbuf, sizeof rootbuf, "%s", root);
    if (rootbuf[0] != '/') { /* the manifest holds absolute paths for sample 0 */
        char cwd[2048], tmp[4096];
        REQUIRE(getcwd(cwd, sizeof cwd), "getcwd");
        snprintf(tmp, sizeof tmp, "%s/%s", cwd, rootbuf);
        snprintf(rootbuf, sizeof rootbuf, "%s", tmp);
    }
    rb_safetensors io;
    REQUIRE(rb_st_open(&io, t_golden_path("relation_data/io.safetensors")) == RB_OK, "io");
    snprintf(mpath, sizeof mpath, "%s/relation_manifest.json", t_tmpdir());
    int wrote = write_manifest(mpath, rootbuf, &io);
    rb_relation_sample a[2] = {0}, b[2] = {0};
    int oka = 0, okb = 0;
    if (wrote) {
        load_all_golden(rootbuf, a, &oka);
        load_all_golden(mpath, b, &okb);
    }
    CHECK(wrote && oka && okb, "manifest written and both loaded");
    for (int i = 0; oka && okb && i < 2; i++) {
        const rb_tensor *ta[] = {&a[i].image, &a[i].concept_images_for_vae, &a[i].concept_images, &a[i].keypoints,
                                 &a[i].mask_values, &a[i].masks, &a[i].object_segmaps, &a[i].bboxes};
        const rb_tensor *tb[] = {&b[i].image, &b[i].concept_images_for_vae, &b[i].concept_images, &b[i].keypoints,
                                 &b[i].mask_values, &b[i].masks, &b[i].object_segmaps, &b[i].bboxes};
        for (int k = 0; k < 8; k++)
            CHECK(same_tensor(ta[k], tb[k]), "sample %d tensor %d differs between folder and manifest", i, k);
    }
    if (oka && okb)
        check_against_golden(&b[0], "0", &io);
    for (int i = 0; i < 2; i++) {
        rb_relation_sample_free(&a[i]);
        rb_relation_sample_free(&b[i]);
    }
    rb_st_close(&io);
}

static void t_missing_predicate_is_an_error(void) {
    const char *root = t_golden_path("relation_data/data");
    if (!root)
        return;
    rb_relation_dataset ds;
    rb_status s = rb_relation_dataset_open(&ds, root, NULL);
    CHECK(s == RB_ERR_FORMAT, "status %d", (int)s);
    const char *e = rb_last_error();
    CHECK(strstr(e, "sample \"1\"") && strstr(e, "predicate") && strstr(e, "prompts.json"), "message: %s", e);
}

static void t_derive_predicate(void) {
    char out[128];
    char *e1[2] = {"cat", "dog"}, *e2[2] = {"lion", "polar bear"}, *e3[1] = {"dog"}, *e4[2] = {"Wolf", "leopard"};
    REQUIRE(rb_relation_derive_predicate("A cat is hugging a dog.", 2, e1, out, sizeof out) == RB_OK, "%s",
            rb_last_error());
    CHECK(!strcmp(out, "is hugging"), "%s", out);
    REQUIRE(rb_relation_derive_predicate("A lion and a polar bear hug.", 2, e2, out, sizeof out) == RB_OK, "-");
    CHECK(!strcmp(out, "hug"), "%s", out); /* "and a" between is trimmed away: the words after */
    REQUIRE(rb_relation_derive_predicate("A lion, a polar bear hug.", 2, e2, out, sizeof out) == RB_OK, "-");
    CHECK(!strcmp(out, "hug"), "%s", out); /* nothing between: the words after the last entity */
    REQUIRE(rb_relation_derive_predicate("A dog jumping over the fence!", 1, e3, out, sizeof out) == RB_OK, "-");
    CHECK(!strcmp(out, "jumping over the fence"), "%s", out);
    REQUIRE(rb_relation_derive_predicate("a wolf shakes hands with a leopard", 2, e4, out, sizeof out) == RB_OK, "-");
    CHECK(!strcmp(out, "shakes hands with"), "%s", out);
    CHECK(rb_relation_derive_predicate("A cat and a dog", 2, e1, out, sizeof out) == RB_ERR_INVALID, "only 'and'");
    CHECK(rb_relation_derive_predicate("A cat, a dog.", 2, e1, out, sizeof out) == RB_ERR_INVALID, "no words");
    CHECK(rb_relation_derive_predicate("A dog hugs a cat.", 2, e1, out, sizeof out) == RB_ERR_INVALID, "order");
    CHECK(rb_relation_derive_predicate("A cats hugs a dog.", 2, e1, out, sizeof out) == RB_ERR_INVALID, "whole words");
}

/* ---- bad input: a scratch copy of the layout built from symlinks, mutated per case ---- */

static char g_data[4096];

static int mk(const char *fmt, const char *a) {
    char p[4096];
    snprintf(p, sizeof p, fmt, t_tmpdir(), a);
    return mkdir(p, 0755) == 0 || errno == EEXIST;
}

/* root = <tmp>/<name> holding videos/0 and masks/0 as links to the golden files (except `skip`), and
 * prompts.json with `prompts`. */
static const char *scratch(const char *name, const char *skip, const char *prompts) {
    static char root[4096];
    snprintf(root, sizeof root, "%s/%s", t_tmpdir(), name);
    mk("%s/%s", name);
    char p[4096], q[4096];
    snprintf(p, sizeof p, "%s/videos", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/masks", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/videos/0", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/masks/0", root);
    mkdir(p, 0755);
    static const char *files[] = {"videos/0/concept0.png",       "videos/0/concept1.png",
                                  "videos/0/motion.png",         "videos/0/concept_keyposes_one.pth",
                                  "videos/0/concept_keyposes_two.pth", "videos/0/motion_keyposes.pth",
                                  "masks/0/motion0.png",         "masks/0/motion1.png"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(p, sizeof p, "%s/%s", root, files[i]);
        unlink(p);
        if (skip && !strcmp(skip, files[i]))
            continue;
        snprintf(q, sizeof q, "%s/%s", g_data, files[i]);
        if (symlink(q, p) != 0)
            return NULL;
    }
    snprintf(p, sizeof p, "%s/prompts.json", root);
    return write_text(p, prompts) ? root : NULL;
}

#define GOOD_PROMPTS "{\"0\": {\"prompt\": \"A cat is hugging a dog.\", \"entities\": [\"cat\", \"dog\"], \"predicate\": [\"hugging\"]}}"

static rb_status open_load(const char *root, const rb_relation_data_options *o) {
    rb_relation_dataset ds;
    rb_status s = rb_relation_dataset_open(&ds, root, o);
    if (s != RB_OK)
        return s;
    rb_relation_sample smp;
    s = rb_relation_sample_load(&ds, 0, &smp);
    rb_relation_sample_free(&smp);
    rb_relation_dataset_close(&ds);
    return s;
}

#define EXPECT_ERR(expr, want_status, sub1, sub2)                                                        \
    do {                                                                                                 \
        rb_status s_ = (expr);                                                                           \
        const char *e_ = rb_last_error();                                                                \
        CHECK(s_ == (want_status) && strstr(e_, sub1) && strstr(e_, sub2), "status %d, message: %s", (int)s_, e_); \
    } while (0)

static void t_bad_inputs(void) {
    const char *g = t_golden_path("relation_data/data");
    if (!g)
        return;
    if (g[0] != '/') {
        char cwd[2048];
        REQUIRE(getcwd(cwd, sizeof cwd), "getcwd");
        snprintf(g_data, sizeof g_data, "%s/%s", cwd, g);
    } else {
        snprintf(g_data, sizeof g_data, "%s", g);
    }
    const char *r;
    /* the unmodified scratch copy loads */
    REQUIRE((r = scratch("ok", NULL, GOOD_PROMPTS)), "scratch");
    CHECK(open_load(r, NULL) == RB_OK, "%s", rb_last_error());

    REQUIRE((r = scratch("missing", "videos/0/motion.png", GOOD_PROMPTS)), "scratch");
    EXPECT_ERR(open_load(r, NULL), RB_ERR_IO, "sample \"0\"", "missing/videos/0/motion.png");

    REQUIRE((r = scratch("malformed", NULL, "{\"0\": {\"prompt\": \"x\",, }")), "scratch");
    EXPECT_ERR(open_load(r, NULL), RB_ERR_FORMAT, "prompts.json", "malformed JSON");

    REQUIRE((r = scratch("noentry", NULL, "{\"7\": {}}")), "scratch");
    EXPECT_ERR(open_load(r, NULL), RB_ERR_FORMAT, "no entry for sample \"0\"", "prompts.json");

    REQUIRE((r = scratch("noprompt", NULL, "{\"0\": {\"entities\": [\"cat\", \"dog\"], \"predicate\": [\"h\"]}}")), "-");
    EXPECT_ERR(open_load(r, NULL), RB_ERR_FORMAT, "sample \"0\"", "\"prompt\" is missing");

    REQUIRE((r = scratch("ents", NULL,
                         "{\"0\": {\"prompt\": \"A cat.\", \"entities\": [\"cat\"], \"predicate\": [\"h\"]}}")), "-");
    EXPECT_ERR(open_load(r, NULL), RB_ERR_FORMAT, "sample \"0\"", "1 entities for 2 concept images");

    REQUIRE((r = scratch("ents3", NULL,
                         "{\"0\": {\"prompt\": \"A.\", \"entities\": [\"a\", \"b\", \"c\"], \"predicate\": [\"h\"]}}")), "-");
    EXPECT_ERR(open_load(r, NULL), RB_ERR_FORMAT, "sample \"0\"", "3 values");

    /* official images are 1024x1024: expect_size catches the 64x64 golden ones */
    rb_relation_data_options o;
    rb_relation_data_options_init(&o);
    o.expect_size = 1024;
    REQUIRE((r = scratch("size", NULL, GOOD_PROMPTS)), "-");
    EXPECT_ERR(open_load(r, &o), RB_ERR_FORMAT, "sample \"0\"", "concept0.png: image is 64x64, expected 1024x1024");

    /* a soft (non-binary) mask, then a mask of the wrong size */
    char p[4096];
    uint8_t px[64 * 64];
    for (int i = 0; i < 64 * 64; i++)
        px[i] = i < 2000 ? 0 : (i < 2100 ? 128 : 255);
    rb_image m = {.width = 64, .height = 64, .channels = 1, .data = px};
    REQUIRE((r = scratch("soft", "masks/0/motion1.png", GOOD_PROMPTS)), "-");
    snprintf(p, sizeof p, "%s/masks/0/motion1.png", r);
    REQUIRE(rb_png_write(p, &m, 0, NULL, NULL) == RB_OK, "%s", rb_last_error());
    EXPECT_ERR(open_load(r, NULL), RB_ERR_FORMAT, "motion1.png: mask is not binary: 100 pixels", "(first 128 at x 16, y 31)");
    o.expect_size = 0;
    o.allow_soft_masks = 1;
    CHECK(open_load(r, &o) == RB_OK, "soft mask allowed: %s", rb_last_error());
    m.width = m.height = 32;
    REQUIRE(rb_png_write(p, &m, 0, NULL, NULL) == RB_OK, "-");
    EXPECT_ERR(open_load(r, &o), RB_ERR_FORMAT, "mask is 32x32", "motion image is 64x64");

    /* keypoints: swapped files (wrong shape), a NaN patched into a copy, out of range */
    REQUIRE((r = scratch("kpshape", "videos/0/concept_keyposes_one.pth", GOOD_PROMPTS)), "-");
    char q[4096];
    snprintf(p, sizeof p, "%s/videos/0/concept_keyposes_one.pth", r);
    snprintf(q, sizeof q, "%s/videos/0/motion_keyposes.pth", g_data);
    REQUIRE(symlink(q, p) == 0, "symlink");
    EXPECT_ERR(open_load(r, NULL), RB_ERR_FORMAT, "concept_keyposes_one.pth: keypoints are f32 [2, 17, 2]",
               "expected a float tensor [1, 17, 2]");

    snprintf(q, sizeof q, "%s/videos/0/concept_keyposes_one.pth", g_data);
    char *bytes = NULL;
    size_t len = 0;
    FILE *f = fopen(q, "rb");
    REQUIRE(f, "open %s", q);
    bytes = malloc(4096);
    len = fread(bytes, 1, 4096, f);
    fclose(f);
    rb_safetensors io;
    REQUIRE(rb_st_open(&io, t_golden_path("relation_data/io.safetensors")) == RB_OK, "io");
    const float *kp = rb_st_get(&io, "0.keypoints")->data; /* row 2 = concept_keyposes_one */
    char *hit = memmem(bytes, len, kp + 2 * 34, 34 * sizeof(float));
    for (int which = 0; which < 2 && hit; which++) {
        float bad = which == 0 ? NAN : 1.25f;
        char *cp = malloc(len);
        memcpy(cp, bytes, len);
        memcpy(cp + (hit - bytes) + 5 * sizeof(float), &bad, sizeof bad); /* point 2, y */
        unlink(p);
        f = fopen(p, "wb");
        fwrite(cp, 1, len, f);
        fclose(f);
        free(cp);
        EXPECT_ERR(open_load(r, NULL), RB_ERR_FORMAT, "concept_keyposes_one.pth: keypoint [0, 2] y",
                   which == 0 ? "not finite" : "outside [0, 1]");
    }
    CHECK(hit != NULL, "keypoint bytes found in the .pth");
    free(bytes);
    rb_st_close(&io);

    /* manifest: inline keypoints out of range, wrong row count, unknown format */
    snprintf(p, sizeof p, "%s/m_bad.json", t_tmpdir());
    char text[8192];
    char pts[2048] = "", bad_pts[2048] = "";
    for (int j = 0; j < 17; j++) {
        size_t k = strlen(pts), kb = strlen(bad_pts);
        snprintf(pts + k, sizeof pts - k, "%s[0.5, 0.5]", j ? "," : "");
        snprintf(bad_pts + kb, sizeof bad_pts - kb, "%s[%s, 0.5]", j ? "," : "", j == 3 ? "-0.25" : "0.5");
    }
    snprintf(text, sizeof text,
             "{\"format\": \"relbooth.relation-data\", \"version\": 1, \"root\": \"%s\", \"samples\": [{\"id\": \"s7\","
             " \"prompt\": \"A cat is hugging a dog.\", \"entities\": [\"cat\", \"dog\"], \"predicate\": \"hugging\","
             " \"motion\": \"videos/0/motion.png\", \"concepts\": [\"videos/0/concept0.png\", \"videos/0/concept1.png\"],"
             " \"masks\": [\"masks/0/motion0.png\", \"masks/0/motion1.png\"],"
             " \"motion_keypoints\": [[%s], [%s]], \"concept_keypoints\": [[%s], [%s]]}]}",
             g_data, pts, pts, pts, bad_pts);
    REQUIRE(write_text(p, text), "write");
    EXPECT_ERR(open_load(p, NULL), RB_ERR_FORMAT, "sample \"s7\"", "keypoint [0, 3] x = -0.25 is outside [0, 1]");
    snprintf(text, sizeof text,
             "{\"format\": \"relbooth.relation-data\", \"version\": 1, \"root\": \"%s\", \"samples\": [{\"id\": \"s8\","
             " \"prompt\": \"p\", \"entities\": [\"cat\", \"dog\"], \"predicate\": \"h\","
             " \"motion\": \"videos/0/motion.png\", \"concepts\": [\"videos/0/concept0.png\", \"videos/0/concept1.png\"],"
             " \"masks\": [\"masks/0/motion0.png\", \"masks/0/motion1.png\"],"
             " \"motion_keypoints\": [[%s]], \"concept_keypoints\": [[%s], [%s]]}]}",
             g_data, pts, pts, pts);
    REQUIRE(write_text(p, text), "write");
    EXPECT_ERR(open_load(p, NULL), RB_ERR_FORMAT, "sample \"s8\"", "has 1 keypoint rows, expected 2");
    REQUIRE(write_text(p, "{\"format\": \"other\", \"version\": 1, \"samples\": []}"), "write");
    EXPECT_ERR(open_load(p, NULL), RB_ERR_FORMAT, "m_bad.json", "\"format\" must be");
}

/* The single-subject layout (concept.png, concept_keyposes.pth, masks/<id>/motion.png, "entity"),
 * built from sample 0's files: its tensors equal the first entity of a two-subject manifest sample with
 * the same draws. */
static void t_single_subject(void) {
    const char *g = t_golden_path("relation_data/data");
    if (!g)
        return;
    char d[4096], p[4096], q[4096];
    if (g[0] != '/') {
        char cwd[2048];
        REQUIRE(getcwd(cwd, sizeof cwd), "getcwd");
        snprintf(d, sizeof d, "%s/%s", cwd, g);
    } else {
        snprintf(d, sizeof d, "%s", g);
    }
    const char *T = t_tmpdir();
    const char *dirs[] = {"single", "single/videos", "single/videos/a", "single/masks", "single/masks/a"};
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s/%s", T, dirs[i]);
        mkdir(p, 0755);
    }
    const char *links[][2] = {{"videos/a/concept.png", "videos/0/concept0.png"},
                              {"videos/a/concept_keyposes.pth", "videos/0/concept_keyposes_one.pth"},
                              {"videos/a/motion.png", "videos/0/motion.png"},
                              {"masks/a/motion.png", "masks/0/motion0.png"}};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/single/%s", T, links[i][0]);
        snprintf(q, sizeof q, "%s/%s", d, links[i][1]);
        unlink(p);
        REQUIRE(symlink(q, p) == 0, "symlink");
    }
    /* a (1, 17, 2) motion keypoint file: the concept file will do for shape purposes */
    snprintf(p, sizeof p, "%s/single/videos/a/motion_keyposes.pth", T);
    snprintf(q, sizeof q, "%s/videos/0/concept_keyposes_two.pth", d);
    unlink(p);
    REQUIRE(symlink(q, p) == 0, "symlink");
    snprintf(p, sizeof p, "%s/single/prompts.json", T);
    REQUIRE(write_text(p, "{\"a\": {\"prompt\": \"A cat jumps.\", \"entity\": \"cat\"}}"), "write");
    snprintf(p, sizeof p, "%s/single", T);

    rb_relation_data_options o;
    rb_relation_data_options_init(&o);
    o.seed = 7;
    rb_relation_dataset ds;
    EXPECT_ERR(rb_relation_dataset_open(&ds, p, &o), RB_ERR_FORMAT, "sample \"a\"", "no \"predicate\"");
    o.derive_predicate = 1;
    REQUIRE(rb_relation_dataset_open(&ds, p, &o) == RB_OK, "%s", rb_last_error());
    CHECK(ds.items[0].n == 1 && !strcmp(ds.items[0].entities[0], "cat") && !strcmp(ds.items[0].predicate[0], "jumps"),
          "single item");
    rb_relation_sample s;
    rb_status st = rb_relation_sample_load(&ds, 0, &s);
    CHECK(st == RB_OK, "%s", rb_last_error());
    if (st == RB_OK) {
        CHECK(s.keypoints.shape[0] == 2 && s.masks.shape[0] == 1 && s.concept_images_for_vae.shape[0] == 1 &&
                  s.bboxes.shape[0] == 1 && s.concept_images.shape[0] == 1,
              "single shapes");
        /* keypoints = cat(motion (= concept_two file), concept (= concept_one file)) */
        rb_safetensors io;
        REQUIRE(rb_st_open(&io, t_golden_path("relation_data/io.safetensors")) == RB_OK, "io");
        const float *kp = rb_st_get(&io, "0.keypoints")->data, *got = s.keypoints.data;
        CHECK(!memcmp(got, kp + 3 * 34, 34 * sizeof(float)) && !memcmp(got + 34, kp + 2 * 34, 34 * sizeof(float)),
              "single keypoints");
        /* segmap is the one mask; bbox from it */
        CHECK(!memcmp(s.object_segmaps.data, s.masks.data, 128 * 128 * sizeof(float)), "segmap = mask");
        rb_st_close(&io);
        /* the draws are recorded and within range */
        CHECK(s.paste_y[0] >= 0 && s.paste_y[0] <= 1 && s.pasted_w[1] == 1023, "paste");
    }
    rb_relation_sample_free(&s);
    rb_relation_dataset_close(&ds);
}

int main(void) {
    RUN(t_golden_folder);
    RUN(t_manifest_matches_folder);
    RUN(t_missing_predicate_is_an_error);
    RUN(t_derive_predicate);
    RUN(t_bad_inputs);
    RUN(t_single_subject);
    return t_done();
}
