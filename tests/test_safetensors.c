/* safetensors: every golden file read and checked structurally (plus known shapes), write/read
 * round trip of every dtype (incl. a strided input), atomic writes, and hostile headers. */
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <unistd.h>

#include "harness.h"
#include "io/safetensors.h"

static int resolve(const char *path, char *out, size_t cap) {
    struct stat sb;
    t_resolve(path, out, cap);
    return stat(out, &sb) == 0;
}

/* Structural invariants of an opened file: entries ordered by data offset, inside the data area,
 * not overlapping, byte counts consistent, names findable. */
static int check_invariants(const rb_safetensors *f, const char *path) {
    const uint8_t *base = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | base[i];
    const uint8_t *data = base + 8 + hlen, *end = base + f->map_size, *prev = data;
    int ok = 1;
    for (int i = 0; i < f->n; i++) {
        const rb_tensor *t = &f->entries[i].t;
        const uint8_t *p = t->data;
        size_t nb = rb_nbytes(t);
        if ((unsigned)t->dtype >= RB_DTYPE_COUNT || t->ndim > RB_MAX_DIMS || !rb_is_contiguous(t)) {
            fprintf(stderr, "  %s: %s: bad dtype/rank/layout\n", path, f->entries[i].name);
            ok = 0;
        }
        if (f->aligned && (p < base || p >= end)) /* misaligned in the file: read from an aligned copy */
            continue;
        if (nb && (p < prev || p + nb > end)) {
            fprintf(stderr, "  %s: %s: out of order, overlapping or outside the data\n", path, f->entries[i].name);
            ok = 0;
        }
        if (nb)
            prev = p + nb;
        if (rb_st_get(f, f->entries[i].name) != t) {
            fprintf(stderr, "  %s: %s: lookup by name fails\n", path, f->entries[i].name);
            ok = 0;
        }
    }
    return ok;
}

static int n_files, n_bad, n_stubs;

static void walk(const char *dir, int depth) {
    DIR *d = opendir(dir);
    if (!d || depth > 8) {
        if (d)
            closedir(d);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[4096], r[4096];
        snprintf(p, sizeof p, "%.3000s/%.900s", dir, e->d_name);
        struct stat sb;
        if (stat(p, &sb) != 0) /* stat follows real symlinks */
            continue;
        if (S_ISDIR(sb.st_mode)) {
            walk(p, depth + 1);
            continue;
        }
        size_t l = strlen(p);
        if (l < 12 || strcmp(p + l - 12, ".safetensors"))
            continue;
        if (!resolve(p, r, sizeof r)) {
            fprintf(stderr, "  %s: dangling link\n", p);
            n_bad++;
            continue;
        }
        n_stubs += strcmp(p, r) != 0;
        rb_safetensors f;
        if (rb_st_open(&f, r) != RB_OK) {
            fprintf(stderr, "  %s\n", rb_last_error());
            n_bad++;
            continue;
        }
        n_files++;
        n_bad += !check_invariants(&f, p);
        rb_st_close(&f);
    }
    closedir(d);
}

static void t_golden_all(void) {
    const char *g = t_golden_path("");
    if (!g)
        return;
    char root[4096];
    snprintf(root, sizeof root, "%s", g);
    n_files = n_bad = n_stubs = 0;
    walk(root, 0);
    CHECK(n_bad == 0, "%d golden safetensors files failed", n_bad);
    CHECK(n_files >= 50, "only %d safetensors files found", n_files);
    printf("  %d golden safetensors files read (%d through link stubs)\n", n_files, n_stubs);
}

static void t_golden_known(void) {
    static const struct {
        const char *file, *name, *dtype;
        int ndim;
        int64_t shape[5];
    } k[] = {
        {"clip_text_l/io.safetensors", "hidden_states.0", "F32", 3, {4, 77, 16}},
        {"clip_text_l/io.safetensors", "input_ids", "I64", 2, {4, 77}},
        {"unet_sdxl/io.safetensors", "timestep", "F32", 0, {0}},
        {"unet_sdxl/io.safetensors", "intermediate.down_blocks.2", "F32", 4, {2, 32, 4, 4}},
        {"schedulers/io.safetensors", "euler30.timesteps", "F32", 1, {30}},
        {"schedulers/io.safetensors", "dpmpp2m20.model_input", "F32", 5, {20, 1, 4, 8, 8}},
        {"keypoints_pickle/io.safetensors", "motion_keyposes.pth", "F32", 3, {2, 17, 2}},
        {"keypoints_pickle/io.safetensors", "legacy_format.pth.index", "I64", 1, {6}},
    };
    for (size_t i = 0; i < sizeof k / sizeof *k; i++) {
        const char *p = t_golden_path(k[i].file);
        if (!p)
            return;
        rb_safetensors f;
        REQUIRE(rb_st_open(&f, p) == RB_OK, "%s", rb_last_error());
        const rb_tensor *t = rb_st_get(&f, k[i].name);
        CHECK(t, "%s: %s missing", k[i].file, k[i].name);
        if (t) {
            int same = t->ndim == k[i].ndim && !strcmp(rb_dtypes[t->dtype].safetensors, k[i].dtype);
            for (int d = 0; same && d < t->ndim; d++)
                same = t->shape[d] == k[i].shape[d];
            CHECK(same, "%s: %s has the wrong dtype/shape", k[i].file, k[i].name);
        }
        rb_st_close(&f);
    }
}

static uint64_t lcg(uint64_t *s) { return (*s = *s * 6364136223846793005ull + 1442695040888963407ull) >> 33; }

static void t_roundtrip_all_dtypes(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/all.safetensors", t_tmpdir());
    rb_tensor ts[RB_DTYPE_COUNT + 3];
    const rb_tensor *tp[RB_DTYPE_COUNT + 3];
    char names[RB_DTYPE_COUNT + 3][32];
    const char *np[RB_DTYPE_COUNT + 3];
    uint64_t seed = 42;
    int n = 0;
    for (int d = 0; d < RB_DTYPE_COUNT; d++, n++) {
        int64_t shape[3] = {2, 3, 1 + d % 4};
        REQUIRE(rb_tensor_alloc(&ts[n], (rb_dtype)d, 3, shape, "rt") == RB_OK, "alloc");
        uint8_t *b = ts[n].data;
        for (size_t i = 0; i < rb_nbytes(&ts[n]); i++)
            b[i] = d == RB_BOOL ? (uint8_t)(lcg(&seed) & 1) : (uint8_t)lcg(&seed);
        snprintf(names[n], sizeof names[n], "t.%s", rb_dtype_name((rb_dtype)d));
    }
    /* 0-dim, empty, and a transposed (non-contiguous) view of a [3, 4] f32 */
    float scalar = 1.5f, mat[12];
    for (int i = 0; i < 12; i++)
        mat[i] = (float)i;
    ts[n] = rb_tensor_wrap(&scalar, RB_F32, 0, NULL);
    snprintf(names[n++], 32, "scalar");
    int64_t e_shape[2] = {0, 7};
    ts[n] = rb_tensor_wrap(NULL, RB_F16, 2, e_shape);
    snprintf(names[n++], 32, "empty");
    int64_t m_shape[2] = {3, 4};
    rb_tensor m = rb_tensor_wrap(mat, RB_F32, 2, m_shape);
    int perm[2] = {1, 0};
    REQUIRE(rb_view_permute(&ts[n], &m, perm) == RB_OK, "permute");
    snprintf(names[n++], 32, "transposed");
    for (int i = 0; i < n; i++)
        tp[i] = &ts[i], np[i] = names[i];
    const char *mk[2] = {"format", "note"}, *mv[2] = {"pt", "round trip"};
    REQUIRE(rb_st_write(path, n, np, tp, 2, mk, mv) == RB_OK, "%s", rb_last_error());

    rb_safetensors f;
    REQUIRE(rb_st_open(&f, path) == RB_OK, "%s", rb_last_error());
    CHECK(f.n == n, "%d tensors read back, %d written", f.n, n);
    CHECK(check_invariants(&f, path), "invariants");
    const uint8_t *base = f.map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | base[i];
    CHECK(hlen % 8 == 0, "header length %llu", (unsigned long long)hlen);
    size_t last = (size_t)hlen + 7;
    while (last > 8 && base[last] == ' ')
        last--;
    CHECK(base[last] == '}' && hlen + 8 - last <= 8, "header not padded with spaces after the JSON");
    CHECK(rb_st_meta(&f, "note") && !strcmp(rb_st_meta(&f, "note"), "round trip"), "metadata");
    /* file order = given order (entries are listed by data offset) */
    for (int i = 0, k = 0; i < f.n; i++) {
        if (!rb_nbytes(&f.entries[i].t))
            continue;
        while (k < n && !rb_nbytes(&ts[k]))
            k++;
        CHECK(k < n && !strcmp(f.entries[i].name, names[k]), "order: %s at %d", f.entries[i].name, i);
        k++;
    }
    for (int i = 0; i < n; i++) {
        const rb_tensor *r = rb_st_get(&f, names[i]);
        CHECK(r && r->dtype == ts[i].dtype && rb_same_shape(r, &ts[i]), "%s: dtype/shape", names[i]);
        if (!r || i >= RB_DTYPE_COUNT)
            continue;
        CHECK(!memcmp(r->data, ts[i].data, rb_nbytes(r)), "%s: bytes differ", names[i]);
    }
    const rb_tensor *tr = rb_st_get(&f, "transposed");
    REQUIRE(tr && rb_is_contiguous(tr), "transposed");
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++)
            CHECK(((const float *)tr->data)[i * 3 + j] == mat[j * 4 + i], "transposed[%d][%d]", i, j);
    const rb_tensor *sc = rb_st_get(&f, "scalar");
    CHECK(sc && sc->ndim == 0 && *(const float *)sc->data == 1.5f, "scalar");
    rb_st_close(&f);
    for (int d = 0; d < RB_DTYPE_COUNT; d++)
        rb_tensor_free(&ts[d]);
}

static int tmp_files_in(const char *dir) {
    DIR *d = opendir(dir);
    int k = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        k += strstr(e->d_name, ".tmp.") != NULL;
    if (d)
        closedir(d);
    return k;
}

static int file_equals(const char *path, const void *bytes, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    char buf[256];
    size_t got = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return got == n && !memcmp(buf, bytes, n);
}

static void t_atomic_write(void) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/atomic", t_tmpdir());
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/w.safetensors", dir);
    float v[4] = {1, 2, 3, 4};
    int64_t sh[1] = {4};
    rb_tensor t = rb_tensor_wrap(v, RB_F32, 1, sh);
    const rb_tensor *tp[1] = {&t};
    const char *nm[1] = {"w"};
    REQUIRE(rb_st_write(path, 1, nm, tp, 0, NULL, NULL) == RB_OK, "%s", rb_last_error());
    REQUIRE(rb_st_write(path, 1, nm, tp, 0, NULL, NULL) == RB_OK, "overwrite: %s", rb_last_error());
    CHECK(tmp_files_in(dir) == 0, "temporary file left behind");
    uint8_t old[256];
    size_t old_n = 0;
    {
        FILE *f = fopen(path, "rb");
        REQUIRE(f, "reopen");
        old_n = fread(old, 1, sizeof old, f);
        fclose(f);
    }
    /* invalid request: duplicate names -> error, old file untouched */
    const rb_tensor *tp2[2] = {&t, &t};
    const char *nm2[2] = {"w", "w"};
    CHECK(rb_st_write(path, 2, nm2, tp2, 0, NULL, NULL) == RB_ERR_INVALID, "duplicate names accepted");
    CHECK(file_equals(path, old, old_n), "old file clobbered");
    /* a write that fails half-way (file size limit) leaves the old file and no temp file */
    float *big = calloc(1 << 16, sizeof(float));
    int64_t bs[1] = {1 << 16};
    rb_tensor bt = rb_tensor_wrap(big, RB_F32, 1, bs);
    const rb_tensor *bp[1] = {&bt};
    struct rlimit lim, small = {4096, 4096};
    getrlimit(RLIMIT_FSIZE, &lim);
    signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &small) == 0) {
        CHECK(rb_st_write(path, 1, nm, bp, 0, NULL, NULL) == RB_ERR_IO, "write past the size limit succeeded");
        CHECK(strstr(rb_last_error(), path) != NULL, "message: %s", rb_last_error());
        setrlimit(RLIMIT_FSIZE, &lim);
        CHECK(file_equals(path, old, old_n), "old file clobbered by a failed write");
        CHECK(tmp_files_in(dir) == 0, "temporary file left after a failed write");
    }
    free(big);
    /* unwritable folder (not meaningful as root, who may write anyway) */
    if (geteuid() != 0) {
        chmod(dir, 0555);
        CHECK(rb_st_write(path, 1, nm, tp, 0, NULL, NULL) == RB_ERR_IO, "write into a read-only folder");
        chmod(dir, 0755);
        CHECK(file_equals(path, old, old_n), "old file clobbered");
    }
    char nodir[700];
    snprintf(nodir, sizeof nodir, "%s/missing/x.safetensors", dir);
    CHECK(rb_st_write(nodir, 1, nm, tp, 0, NULL, NULL) == RB_ERR_IO, "write into a missing folder");
}

/* ---- hostile headers ---- */

static size_t craft(uint8_t *buf, const char *json, size_t data_bytes, uint64_t declared) {
    size_t j = strlen(json);
    memcpy(buf + 8, json, j);
    while (j % 8) /* pad like the writers do, so data starts 8-aligned */
        buf[8 + j++] = ' ';
    uint64_t len = declared ? declared : j;
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(len >> (8 * i));
    memset(buf + 8 + j, 0, data_bytes);
    return 8 + j + data_bytes;
}

static void expect_bad(const char *json, size_t data, uint64_t declared, rb_status want, const char *needle) {
    static uint8_t buf[4096];
    size_t n = craft(buf, json, data, declared);
    rb_safetensors f;
    rb_status st = rb_st_open_mem(&f, buf, n, "bad.safetensors");
    CHECK(st == want, "%s: status %d, want %d (%s)", json, st, want, rb_last_error());
    CHECK(strstr(rb_last_error(), "bad.safetensors") && strstr(rb_last_error(), needle) &&
              !strchr(rb_last_error(), '\n'),
          "%s: message '%s' lacks '%s'", json, rb_last_error(), needle);
    if (st == RB_OK)
        rb_st_close(&f);
}

static void t_hostile(void) {
    const char *ok = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    static uint8_t buf[4096] __attribute__((aligned(64)));
    size_t n = craft(buf, ok, 8, 0);
    rb_safetensors f;
    REQUIRE(rb_st_open_mem(&f, buf, n, "good") == RB_OK, "control: %s", rb_last_error());
    rb_st_close(&f);
    expect_bad(ok, 8, 5000, RB_ERR_FORMAT, "exceeds the file size");
    expect_bad(ok, 8, 200u << 20, RB_ERR_FORMAT, "100 MB");
    expect_bad("{\"a\":{\"dtype\":\"F32\",", 8, 0, RB_ERR_FORMAT, "invalid JSON");
    expect_bad("[1, 2]", 8, 0, RB_ERR_FORMAT, "not an object");
    expect_bad("{\"a\":{\"dtype\":\"F31\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 0, RB_ERR_UNSUPPORTED, "unknown dtype");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, 0, RB_ERR_FORMAT, "non-negative");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8, 0, RB_ERR_FORMAT, "non-negative");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", 8, 0, RB_ERR_FORMAT, "not a list");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, 0, RB_ERR_UNSUPPORTED,
               "at most 5");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, 0, RB_ERR_FORMAT, "needs 12 bytes");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", 8, 0, RB_ERR_FORMAT, "outside");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, 0, RB_ERR_FORMAT, "outside");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               16, 0, RB_ERR_FORMAT, "overlap");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
               16, 0, RB_ERR_FORMAT, "duplicate");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4611686018427387904],\"data_offsets\":[0,8]}}",
               8, 0, RB_ERR_FORMAT, "overflows");
    expect_bad("{\"__metadata__\":{\"k\":1}}", 0, 0, RB_ERR_FORMAT, "not a string");
    /* truncation of a valid file at every length fails cleanly */
    for (size_t k = 0; k < n; k++) {
        CHECK(rb_st_open_mem(&f, buf, k, "cut.safetensors") == RB_ERR_FORMAT, "prefix of %zu bytes accepted", k);
    }
    /* an unaligned tensor is copied to aligned memory, with the same bytes */
    const char *un = "{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[1,5]}}";
    n = craft(buf, un, 5, 0);
    float one = 1.0f;
    memcpy(buf + n - 4, &one, 4);
    REQUIRE(rb_st_open_mem(&f, buf, n, "unaligned") == RB_OK, "%s", rb_last_error());
    const rb_tensor *a = rb_st_get(&f, "a");
    CHECK(a && (uintptr_t)a->data % 4 == 0 && *(const float *)a->data == 1.0f && f.aligned, "unaligned tensor");
    rb_st_close(&f);
}

int main(void) {
    RUN(t_golden_all);
    RUN(t_golden_known);
    RUN(t_roundtrip_all_dtypes);
    RUN(t_atomic_write);
    RUN(t_hostile);
    return t_done();
}
