/* PyTorch checkpoint reader: the golden keypoints_pickle files against their io.safetensors
 * (bit-exact) and tensor_meta.json (strides, offsets), real training checkpoints, and hostile
 * inputs crafted here (foreign globals, truncation, absurd zip sizes, views outside storages). */
#include <jansson.h>
#include <stdint.h>
#include <unistd.h>

#include "harness.h"
#include "io/pickle.h"
#include "io/safetensors.h"
#include "io/torchfile.h"
#include "io/zip.h"

static const char *resolve(const char *path) {
    static char buf[2][4096];
    static int which;
    which ^= 1;
    return t_resolve(path, buf[which], sizeof buf[which]);
}

/* ---- a tiny zip writer for crafted archives (stored records; crc left 0: the reader ignores it) ---- */

typedef struct {
    const char *name;
    const void *data;
    size_t len;
    uint16_t method;
    uint32_t declared; /* 0: len */
} zrec;

static void put16(uint8_t *p, unsigned v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, v & 0xffff), put16(p + 2, v >> 16); }

static size_t make_zip(uint8_t *out, const zrec *r, int n) {
    size_t pos = 0, offs[16];
    for (int i = 0; i < n; i++) {
        uint8_t *h = out + pos;
        memset(h, 0, 30);
        put32(h, 0x04034b50);
        put16(h + 8, r[i].method);
        uint32_t sz = r[i].declared ? r[i].declared : (uint32_t)r[i].len;
        put32(h + 18, sz), put32(h + 22, sz);
        put16(h + 26, (unsigned)strlen(r[i].name));
        memcpy(h + 30, r[i].name, strlen(r[i].name));
        offs[i] = pos;
        pos += 30 + strlen(r[i].name);
        memcpy(out + pos, r[i].data, r[i].len);
        pos += r[i].len;
    }
    size_t cd = pos;
    for (int i = 0; i < n; i++) {
        uint8_t *h = out + pos;
        memset(h, 0, 46);
        put32(h, 0x02014b50);
        put16(h + 10, r[i].method);
        uint32_t sz = r[i].declared ? r[i].declared : (uint32_t)r[i].len;
        put32(h + 20, sz), put32(h + 24, sz);
        put16(h + 28, (unsigned)strlen(r[i].name));
        put32(h + 42, (uint32_t)offs[i]);
        memcpy(h + 46, r[i].name, strlen(r[i].name));
        pos += 46 + strlen(r[i].name);
    }
    uint8_t *e = out + pos;
    memset(e, 0, 22);
    put32(e, 0x06054b50);
    put16(e + 8, (unsigned)n), put16(e + 10, (unsigned)n);
    put32(e + 12, (uint32_t)(pos - cd)), put32(e + 16, (uint32_t)cd);
    return pos + 22;
}

/* A pickle of _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', 4), offset, (size,), (1,), False, {}) */
static size_t tensor_pickle(uint8_t *out, int offset, int size) {
    const char a[] = "\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n" "((X\x07\x00\x00\x00storage"
                     "ctorch\nFloatStorage\n" "X\x01\x00\x00\x00" "0" "X\x03\x00\x00\x00" "cpu" "K\x04tQK";
    size_t n = sizeof a - 1;
    memcpy(out, a, n);
    out[n++] = (uint8_t)offset;
    out[n++] = 'K';
    out[n++] = (uint8_t)size;
    const char b[] = "\x85K\x01\x85\x89" "ccollections\nOrderedDict\n)Rt" "R.";
    memcpy(out + n, b, sizeof b - 1);
    return n + sizeof b - 1;
}

static rb_status open_zip_pickle(rb_torchfile *f, const uint8_t *pkl, size_t pn, const float *st, size_t st_bytes,
                                 uint8_t *zbuf) {
    zrec r[2] = {{"arch/data.pkl", pkl, pn, 0, 0}, {"arch/data/0", st, st_bytes, 0, 0}};
    size_t zn = make_zip(zbuf, r, 2);
    return rb_torch_open_mem(f, zbuf, zn, "crafted.pt");
}

static int bits_equal(const rb_tensor *a, const rb_tensor *b) {
    int64_t n = rb_numel(a);
    for (int64_t i = 0; i < n; i++) {
        if (a->dtype == RB_I64 || b->dtype == RB_I64) {
            if (a->dtype != b->dtype || rb_tensor_get(a, i) != rb_tensor_get(b, i))
                return 0;
            continue;
        }
        float x = (float)rb_tensor_get(a, i), y = (float)rb_tensor_get(b, i);
        if (memcmp(&x, &y, 4))
            return 0;
    }
    return 1;
}

static const char *files[] = {"concept_keyposes_one.pth", "motion_keyposes.pth", "checkpoint_state_dict_module_fp16.pt",
                              "legacy_format.pth", "ms_adapter.bin"};

static void t_golden_keypoints(void) {
    const char *dir = t_golden_path("keypoints_pickle");
    if (!dir)
        return;
    char d[2048], p[4200];
    snprintf(d, sizeof d, "%.2000s", dir);
    snprintf(p, sizeof p, "%s/io.safetensors", d);
    rb_safetensors io;
    REQUIRE(rb_st_open(&io, p) == RB_OK, "%s", rb_last_error());
    snprintf(p, sizeof p, "%s/tensor_meta.json", d);
    json_error_t je;
    json_t *meta = json_load_file(p, 0, &je);
    CHECK(meta, "tensor_meta.json: %s", je.text);
    int matched = 0;
    for (size_t fi = 0; fi < sizeof files / sizeof *files; fi++) {
        snprintf(p, sizeof p, "%s/%s", d, files[fi]);
        rb_torchfile f;
        rb_status st = rb_torch_open(&f, resolve(p));
        CHECK(st == RB_OK, "%s: %s", files[fi], rb_last_error());
        if (st != RB_OK)
            continue;
        CHECK(f.n > 0, "%s: no tensors", files[fi]);
        int expect = 0;
        size_t fl = strlen(files[fi]);
        for (int i = 0; i < io.n; i++)
            expect += !strncmp(io.entries[i].name, files[fi], fl) &&
                      (io.entries[i].name[fl] == 0 || io.entries[i].name[fl] == '.');
        CHECK(expect == f.n, "%s: %d tensors, io.safetensors has %d", files[fi], f.n, expect);
        for (int i = 0; i < f.n; i++) {
            char key[1024];
            const rb_torch_entry *e = &f.entries[i];
            snprintf(key, sizeof key, "%s%s%s", files[fi], e->name[0] ? "." : "", e->name);
            const rb_tensor *ref = rb_st_get(&io, key);
            CHECK(ref, "%s missing from io.safetensors", key);
            if (!ref)
                continue;
            matched++;
            CHECK(rb_same_shape(ref, &e->t), "%s: shape differs", key);
            if (rb_same_shape(ref, &e->t))
                CHECK(bits_equal(&e->t, ref), "%s: values differ", key);
            json_t *m = meta ? json_object_get(meta, key) : NULL;
            CHECK(m, "%s missing from tensor_meta.json", key);
            if (!m)
                continue;
            const char *dt = json_string_value(json_object_get(m, "dtype"));
            const char *want = e->t.dtype == RB_F32 ? "float32" : e->t.dtype == RB_F16 ? "float16"
                               : e->t.dtype == RB_I64 ? "int64" : "?";
            CHECK(dt && !strcmp(dt, want), "%s: dtype %s, expected %s", key, want, dt ? dt : "?");
            json_t *js = json_object_get(m, "stride");
            CHECK(json_array_size(js) == (size_t)e->t.ndim, "%s: rank", key);
            for (int k = 0; k < e->t.ndim && k < (int)json_array_size(js); k++)
                CHECK(json_integer_value(json_array_get(js, (size_t)k)) == e->t.stride[k], "%s: stride[%d]", key, k);
            CHECK(json_integer_value(json_object_get(m, "storage_offset")) == e->storage_offset, "%s: offset %lld", key,
                  (long long)e->storage_offset);
            CHECK(json_integer_value(json_object_get(m, "storage_numel")) == e->storage_numel, "%s: storage numel", key);
            CHECK(json_is_true(json_object_get(m, "is_parameter")) == e->is_param, "%s: is_parameter", key);
        }
        if (fi == 1) { /* the view: offset 34 into 102 floats, records under keyposes/ */
            CHECK(f.n == 1 && f.entries[0].storage_offset == 34 && f.entries[0].storage_numel == 102, "motion view");
            CHECK(f.prefix && !strcmp(f.prefix, "keyposes/"), "prefix %s", f.prefix ? f.prefix : "(null)");
        }
        if (fi == 3)
            CHECK(f.format == RB_TORCH_LEGACY, "legacy format not detected");
        rb_torch_close(&f);
    }
    CHECK(matched == io.n, "matched %d of %d io tensors", matched, io.n);
    json_decref(meta);
    rb_st_close(&io);
}

static void t_scalars_and_shared_storage(void) {
    const char *p = t_golden_path("keypoints_pickle/checkpoint_state_dict_module_fp16.pt");
    if (!p)
        return;
    rb_torchfile f;
    REQUIRE(rb_torch_open(&f, p) == RB_OK, "%s", rb_last_error());
    const rb_torch_scalar *ep = rb_torch_scalar_get(&f, "epoch"), *nm = rb_torch_scalar_get(&f, "name");
    CHECK(ep && ep->kind == RB_TS_INT && ep->i == 6, "epoch");
    CHECK(nm && nm->kind == RB_TS_STR && !strcmp(nm->s, "tiny-clipself"), "name");
    const rb_tensor *tr = rb_torch_get(&f, "state_dict.module.extra.transposed"),
                    *ra = rb_torch_get(&f, "state_dict.module.extra.row_view_a"),
                    *ls = rb_torch_get(&f, "state_dict.module.logit_scale");
    REQUIRE(tr && ra && ls, "views missing");
    /* three views of one storage: element 4 of the storage is row_view_a[0] and transposed[0][1] */
    CHECK((const char *)ra->data == (const char *)tr->data + 4 * 2, "views do not share the storage");
    CHECK(tr->stride[0] == 1 && tr->stride[1] == 4 && !rb_is_contiguous(tr), "transposed strides");
    CHECK(ls->ndim == 0 && rb_numel(ls) == 1 && ls->dtype == RB_F16, "0-dim tensor");
    rb_torch_close(&f);
}

static void t_training_checkpoints(void) {
    /* counts, first/last keys and sums from an independent Python (zipfile + pickle) reader */
    static const struct {
        const char *file, *first, *last;
        int n, s0, s1;
        double sum_first, sum_last;
    } c[] = {
        {"local_tokens/open_clip_state_dict.pt", "positional_embedding", "ln_final.bias", 62, 77, 32,
         2.325541314930888, -0.553390447050333},
        {"local_tokens/open_clip_epoch_6_module.pt", "state_dict.module.positional_embedding",
         "state_dict.module.ln_final.bias", 62, 77, 32, 2.325541314930888, -0.553390447050333},
        {"pipeline_dreamrelation/local_image_encoder/epoch_6.pt", "state_dict.module.positional_embedding",
         "state_dict.module.ln_final.bias", 50, 77, 16, 2.2856346302723978, 0.3105618107947521},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        const char *p = t_golden_path(c[i].file);
        if (!p)
            return;
        rb_torchfile f;
        rb_status st = rb_torch_open(&f, resolve(p));
        CHECK(st == RB_OK, "%s", rb_last_error());
        if (st != RB_OK)
            continue;
        CHECK(f.n == c[i].n, "%s: %d tensors", c[i].file, f.n);
        const rb_tensor *a = rb_torch_get(&f, c[i].first), *b = rb_torch_get(&f, c[i].last);
        CHECK(a && a->ndim == 2 && a->shape[0] == c[i].s0 && a->shape[1] == c[i].s1, "%s: %s", c[i].file, c[i].first);
        CHECK(b && b->ndim == 1 && b->shape[0] == c[i].s1, "%s: %s", c[i].file, c[i].last);
        double sa = 0, sb = 0;
        for (int64_t k = 0; a && k < rb_numel(a); k++)
            sa += rb_tensor_get(a, k);
        for (int64_t k = 0; b && k < rb_numel(b); k++)
            sb += rb_tensor_get(b, k);
        CHECK(fabs(sa - c[i].sum_first) < 1e-9 && fabs(sb - c[i].sum_last) < 1e-9, "%s: sums %.17g %.17g", c[i].file,
              sa, sb);
        rb_torch_close(&f);
    }
}

static void expect_refused(const char *pk, size_t n, const char *needle) {
    rb_pk_pool pool = {0};
    rb_pk_value *v;
    rb_status st = rb_pickle_load(&pool, (const uint8_t *)pk, n, "evil.pkl", &v, NULL);
    CHECK(st != RB_OK, "%s accepted", needle);
    CHECK(strstr(rb_last_error(), needle) && strstr(rb_last_error(), "evil.pkl"), "message: %s", rb_last_error());
    rb_pk_pool_free(&pool);
}

static void t_foreign_globals(void) {
    /* os.system('ls') the protocol-0/2 way, builtins.eval via STACK_GLOBAL, posix.system */
    static const char a[] = "\x80\x02" "cos\nsystem\nq\x00X\x02\x00\x00\x00ls\x85R.";
    static const char b[] = "\x80\x04\x8c\x08" "builtins\x8c\x04" "eval\x93\x8c\x04" "1+1\x85R.";
    static const char c[] = "\x80\x02" "cposix\nsystem\n(X\x02\x00\x00\x00idtR.";
    static const char d[] = "\x80\x02" "ctorch._utils\n_rebuild_tensor\n)R.";
    expect_refused(a, sizeof a - 1, "os.system");
    expect_refused(b, sizeof b - 1, "builtins.eval");
    expect_refused(c, sizeof c - 1, "posix.system");
    expect_refused(d, sizeof d - 1, "torch._utils._rebuild_tensor");
    /* and through a whole checkpoint */
    static uint8_t zbuf[4096];
    rb_torchfile f;
    float s[4] = {1, 2, 3, 4};
    CHECK(open_zip_pickle(&f, (const uint8_t *)a, sizeof a - 1, s, sizeof s, zbuf) != RB_OK, "zip with os.system");
    CHECK(strstr(rb_last_error(), "crafted.pt") && strstr(rb_last_error(), "os.system"), "%s", rb_last_error());
}

static void t_crafted_views(void) {
    static uint8_t pk[512], zbuf[4096];
    float s[4] = {1, 2, 3, 4};
    rb_torchfile f;
    /* positive control: storage of 4 floats, view [2:4] */
    size_t n = tensor_pickle(pk, 2, 2);
    REQUIRE(open_zip_pickle(&f, pk, n, s, sizeof s, zbuf) == RB_OK, "%s", rb_last_error());
    REQUIRE(f.n == 1 && f.entries[0].t.shape[0] == 2, "crafted tensor");
    CHECK(rb_tensor_get(&f.entries[0].t, 0) == 3 && rb_tensor_get(&f.entries[0].t, 1) == 4, "values");
    CHECK(!strcmp(f.prefix, "arch/"), "prefix");
    rb_torch_close(&f);
    /* offset 3 + 2 elements runs past the 4-element storage */
    n = tensor_pickle(pk, 3, 2);
    CHECK(open_zip_pickle(&f, pk, n, s, sizeof s, zbuf) == RB_ERR_FORMAT, "view past the storage accepted");
    CHECK(strstr(rb_last_error(), "outside storage"), "%s", rb_last_error());
    /* offset beyond the storage with an empty view */
    n = tensor_pickle(pk, 9, 0);
    CHECK(open_zip_pickle(&f, pk, n, s, sizeof s, zbuf) == RB_ERR_FORMAT, "offset beyond storage accepted");
    /* record smaller than the declared storage */
    n = tensor_pickle(pk, 0, 2);
    CHECK(open_zip_pickle(&f, pk, n, s, 12, zbuf) == RB_ERR_FORMAT, "short storage record accepted");
    CHECK(strstr(rb_last_error(), "has 12 bytes"), "%s", rb_last_error());
    /* truncated pickle: every prefix fails cleanly */
    n = tensor_pickle(pk, 2, 2);
    for (size_t k = 0; k < n; k++) {
        rb_pk_pool pool = {0};
        rb_pk_value *v;
        CHECK(rb_pickle_load(&pool, pk, k, "cut.pkl", &v, NULL) != RB_OK, "prefix of %zu bytes accepted", k);
        rb_pk_pool_free(&pool);
    }
    /* a dict that contains itself */
    static const char cyc[] = "\x80\x02}q\x00X\x01\x00\x00\x00" "ah\x00s.";
    CHECK(open_zip_pickle(&f, (const uint8_t *)cyc, sizeof cyc - 1, s, sizeof s, zbuf) == RB_ERR_FORMAT, "cycle");
    CHECK(strstr(rb_last_error(), "nested deeper"), "%s", rb_last_error());
}

static void t_zip_hostile(void) {
    static uint8_t pk[512], zbuf[4096];
    float s[4] = {1, 2, 3, 4};
    size_t n = tensor_pickle(pk, 0, 4);
    rb_torchfile f;
    /* a storage record declaring ~4 GB */
    zrec r[2] = {{"a/data.pkl", pk, n, 0, 0}, {"a/data/0", s, sizeof s, 0, 0xfffffff0u}};
    size_t zn = make_zip(zbuf, r, 2);
    CHECK(rb_torch_open_mem(&f, zbuf, zn, "absurd.pt") == RB_ERR_FORMAT, "absurd size accepted");
    CHECK(strstr(rb_last_error(), "absurd.pt") && strstr(rb_last_error(), "declares"), "%s", rb_last_error());
    /* a compressed (deflate) storage record is refused, not inflated */
    zrec c[2] = {{"a/data.pkl", pk, n, 0, 0}, {"a/data/0", s, sizeof s, 8, 0}};
    zn = make_zip(zbuf, c, 2);
    CHECK(rb_torch_open_mem(&f, zbuf, zn, "deflate.pt") == RB_ERR_UNSUPPORTED, "compressed record accepted");
    CHECK(strstr(rb_last_error(), "compressed"), "%s", rb_last_error());
    /* no data.pkl; the file name must not be used to guess the prefix */
    zrec m[1] = {{"a/data/0", s, sizeof s, 0, 0}};
    zn = make_zip(zbuf, m, 1);
    CHECK(rb_torch_open_mem(&f, zbuf, zn, "a.pt") == RB_ERR_FORMAT, "zip without data.pkl accepted");
    /* truncated archives: every prefix fails cleanly */
    zn = make_zip(zbuf, r, 1);
    for (size_t k = 0; k < zn; k++) {
        CHECK(rb_torch_open_mem(&f, zbuf, k, "cut.pt") != RB_OK, "prefix of %zu bytes accepted", k);
    }
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    *n = b ? fread(b, 1, (size_t)sz, f) : 0;
    fclose(f);
    return b;
}

/* Every truncation and every single-byte corruption of two real files: never a crash (run under
 * SAN=-fsanitize=address,undefined to also catch silent overreads), and truncations always fail. */
static void t_corruptions(void) {
    static const char *rel[] = {"keypoints_pickle/legacy_format.pth", "keypoints_pickle/concept_keyposes_one.pth"};
    for (int r = 0; r < 2; r++) {
        const char *p = t_golden_path(rel[r]);
        if (!p)
            return;
        size_t n = 0;
        uint8_t *b = slurp(p, &n);
        REQUIRE(b && n > 100, "read %s", p);
        int bad = 0, ok_after_flip = 0;
        for (size_t k = 0; k < n; k++) {
            rb_torchfile f;
            if (rb_torch_open_mem(&f, b, k, "cut") == RB_OK) {
                bad++;
                rb_torch_close(&f);
            }
        }
        CHECK(bad == 0, "%s: %d truncations accepted", rel[r], bad);
        for (size_t k = 0; k < n; k++) {
            uint8_t old = b[k];
            b[k] ^= 0xff;
            rb_torchfile f;
            if (rb_torch_open_mem(&f, b, n, "flip") == RB_OK) {
                ok_after_flip++;
                rb_torch_close(&f);
            }
            b[k] = old;
        }
        free(b);
        /* zip: bytes in padding and unchecked fields (crc, times) may flip harmlessly */
        CHECK(ok_after_flip < (int)n, "%s: corruption never detected", rel[r]);
    }
}

int main(void) {
    RUN(t_golden_keypoints);
    RUN(t_scalars_and_shared_storage);
    RUN(t_training_checkpoints);
    RUN(t_foreign_globals);
    RUN(t_crafted_views);
    RUN(t_zip_hostile);
    RUN(t_corruptions);
    return t_done();
}
