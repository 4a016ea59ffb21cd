/* Bad-input matrix: hostile files generated here at run time, fed to the built CLI (build/relbooth,
 * found as <dir of this test>/../relbooth) and to the library entry points. Every case asserts the
 * documented exit status / rb_status, a one-line message naming the problem, no signal, and for
 * writers that no partial or temporary file is left behind. Crashing inputs found by the fuzzers
 * (tests/data/regress/<target>/) are replayed through the same entry points. docs/security.md. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "pipelines/dr_config.h"
#include "io/image.h"
#include "io/pickle.h"
#include "io/safetensors.h"
#include "io/torchfile.h"
#include "sched/scheduler.h"
#include "text/clip_tokenizer.h"

static char bin[4096], regress_dir[4096];

/* ---------------------------------------------------------------- hostile file builders */

static const char *tpath(const char *name) {
    static char buf[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", t_tmpdir(), name);
    return buf[k];
}

static void put_file(const char *name, const void *data, size_t n) {
    FILE *f = fopen(tpath(name), "wb");
    if (f) {
        fwrite(data, 1, n, f);
        fclose(f);
    }
}

/* 8-byte little-endian header length (or `hlen` when non-zero), the JSON header, then data bytes. */
static size_t st_make(uint8_t *out, const char *json, uint64_t hlen, const void *data, size_t dn) {
    size_t jn = strlen(json);
    uint64_t h = hlen ? hlen : jn;
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(h >> (8 * i));
    memcpy(out + 8, json, jn);
    memcpy(out + 8 + jn, data, dn);
    return 8 + jn + dn;
}

static const float two[2] = {1.5f, -2.0f};
#define ST_OK "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}"

/* A tiny zip with stored records (crc left 0; the reader does not check it). */
static void put16(uint8_t *p, unsigned v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, v & 0xffff), put16(p + 2, v >> 16); }
static size_t zip_make(uint8_t *out, const char *const *names, const void *const *data, const size_t *len, int n) {
    size_t pos = 0, offs[8];
    for (int i = 0; i < n; i++) {
        uint8_t *h = out + pos;
        size_t nl = strlen(names[i]);
        memset(h, 0, 30);
        put32(h, 0x04034b50), put32(h + 18, (uint32_t)len[i]), put32(h + 22, (uint32_t)len[i]), put16(h + 26, (unsigned)nl);
        memcpy(h + 30, names[i], nl);
        offs[i] = pos;
        pos += 30 + nl;
        memcpy(out + pos, data[i], len[i]);
        pos += len[i];
    }
    size_t cd = pos;
    for (int i = 0; i < n; i++) {
        uint8_t *h = out + pos;
        size_t nl = strlen(names[i]);
        memset(h, 0, 46);
        put32(h, 0x02014b50), put32(h + 20, (uint32_t)len[i]), put32(h + 24, (uint32_t)len[i]);
        put16(h + 28, (unsigned)nl), put32(h + 42, (uint32_t)offs[i]);
        memcpy(h + 46, names[i], nl);
        pos += 46 + nl;
    }
    uint8_t *e = out + pos;
    memset(e, 0, 22);
    put32(e, 0x06054b50), put16(e + 8, (unsigned)n), put16(e + 10, (unsigned)n);
    put32(e + 12, (uint32_t)(pos - cd)), put32(e + 16, (uint32_t)cd);
    return pos + 22;
}

/* torch.save zip of one pickle and one 4-float storage "0". */
static size_t torch_zip(uint8_t *out, const char *pkl, size_t pn) {
    static const float s[4] = {1, 2, 3, 4};
    const char *names[2] = {"ck/data.pkl", "ck/data/0"};
    const void *data[2] = {pkl, s};
    size_t len[2] = {pn, sizeof s};
    return zip_make(out, names, data, len, 2);
}

/* pickles: a tensor over ('storage', FloatStorage, '0', 'cpu', NUMEL) of shape (2,) */
#define PK_TENSOR(numel)                                                                                         \
    "\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n" "((X\x07\x00\x00\x00storage" "ctorch\nFloatStorage\n"        \
    "X\x01\x00\x00\x00" "0" "X\x03\x00\x00\x00" "cpu" numel "tQK\x00K\x02\x85K\x01\x85\x89"                      \
    "ccollections\nOrderedDict\n)Rt" "R."
static const char pk_ok[] = PK_TENSOR("K\x04");
static const char pk_huge[] = PK_TENSOR("\x8a\x06\x00\x00\x00\x00\x00\x01"); /* LONG1: 2^40 elements */
static const char pk_system[] = "\x80\x02" "cposix\nsystem\n(X\x02\x00\x00\x00idtR.";
static const char pk_eval[] = "\x80\x04\x8c\x08" "builtins\x8c\x04" "eval\x93\x8c\x04" "1+1\x85R.";

static uint32_t crc32_of(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = c >> 1 ^ (0xedb88320u & (0u - (c & 1)));
    }
    return ~c;
}

/* A valid 64x48 RGB PNG written by rb_png_write (with an open budget), read back into *n bytes. */
static uint8_t png_buf[1 << 16];
static size_t png_n;
static int make_png(void) {
    static uint8_t px[64 * 48 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)(i * 7 + (i >> 5));
    rb_image img = {.width = 64, .height = 48, .channels = 3, .data = px};
    if (rb_png_write(tpath("ok.png"), &img, 0, NULL, NULL) != RB_OK)
        return 0;
    FILE *f = fopen(tpath("ok.png"), "rb");
    if (!f)
        return 0;
    png_n = fread(png_buf, 1, sizeof png_buf, f);
    fclose(f);
    return png_n > 33;
}

/* The same PNG with the IHDR claiming w x h (CRC fixed so that only the size is wrong). */
static void png_resized(uint8_t *out, uint32_t w, uint32_t h) {
    memcpy(out, png_buf, png_n);
    for (int i = 0; i < 4; i++)
        out[16 + i] = (uint8_t)(w >> (24 - 8 * i)), out[20 + i] = (uint8_t)(h >> (24 - 8 * i));
    uint32_t c = crc32_of(out + 12, 17);
    for (int i = 0; i < 4; i++)
        out[29 + i] = (uint8_t)(c >> (24 - 8 * i));
}

/* Files the CLI cases name: created once. */
static int setup_files(void) {
    static uint8_t b[1 << 16];
    if (!make_png())
        return 0;
    size_t n = st_make(b, ST_OK, 0, two, sizeof two);
    put_file("ok.safetensors", b, n);
    put_file("truncated.safetensors", b, n - 3);
    n = st_make(b, "{\"a\":{\"dtype\":\"F99\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, two, sizeof two);
    put_file("dtype.safetensors", b, n);
    n = st_make(b, ST_OK, 4096, two, sizeof two);
    put_file("hugeheader.safetensors", b, n);
    n = torch_zip(b, pk_system, sizeof pk_system - 1);
    put_file("system.pt", b, n);
    n = torch_zip(b, pk_huge, sizeof pk_huge - 1);
    put_file("hugestorage.pt", b, n);
    png_resized(b, 100000, 100000);
    put_file("huge.png", b, png_n);
    put_file("truncated.png", png_buf, 20);
    /* a U8 byte then 4096 F32 at offset 1: the reader copies misaligned tensors (16 KiB from rb_alloc) */
    static uint8_t unal[1 + 4 * 4096];
    n = st_make(b, "{\"p\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                   "\"w\":{\"dtype\":\"F32\",\"shape\":[4096],\"data_offsets\":[1,16385]}}", 0, unal, sizeof unal);
    put_file("unaligned.safetensors", b, n);
    put_file("empty.bin", "", 0);
    static const char junk[] = "\x01\x02\x03 not a model at all";
    put_file("garbage.bin", junk, sizeof junk - 1);
    mkdir(tpath("adir"), 0755);
    return 1;
}

/* ---------------------------------------------------------------- CLI matrix */

typedef struct {
    const char *name;
    const char *env;      /* "NAME=value" or NULL */
    const char *args[6];  /* "@x" is <tmpdir>/x */
    int want_exit;        /* cli.h: 1 usage, 2 bad input or failure */
    const char *want_err; /* substring of the first stderr line */
    int usage_follows;    /* 1: the error line may be followed by the command's usage text */
} cli_case;

static const cli_case cli_cases[] = {
    {"info: missing file", NULL, {"info", "@nope.safetensors"}, 2, "cannot open", 0},
    {"info: a directory", NULL, {"info", "@adir"}, 2, "unrecognised file type", 0},
    {"info: empty file", NULL, {"info", "@empty.bin"}, 2, "unrecognised file type", 0},
    {"info: unknown bytes", NULL, {"info", "@garbage.bin"}, 2, "unrecognised file type", 0},
    {"info: truncated safetensors", NULL, {"info", "@truncated.safetensors"}, 2, "truncated.safetensors", 0},
    {"info: header length beyond the file", NULL, {"info", "@hugeheader.safetensors", "--json"}, 2, "header length", 0},
    {"info: unknown dtype", NULL, {"info", "@dtype.safetensors"}, 2, "unknown dtype", 0},
    {"info: foreign pickle global", NULL, {"info", "@system.pt"}, 2, "posix.system", 0},
    {"info: storage beyond the record", NULL, {"info", "@hugestorage.pt", "--json"}, 2, "hugestorage.pt", 0},
    {"info: PNG over the pixel limit", NULL, {"info", "@huge.png"}, 2, "exceeds the limit", 0},
    {"info: truncated PNG", NULL, {"info", "@truncated.png"}, 2, "truncated.png", 0},
    {"info: memory budget", "RELBOOTH_MEM_LIMIT=8K", {"info", "@unaligned.safetensors"}, 2, "unaligned.safetensors", 0},
    {"info: unknown option", NULL, {"info", "--frobnicate", "@ok.safetensors"}, 1, "unknown option", 1},
    {"info: two files", NULL, {"info", "@ok.safetensors", "@ok.png"}, 1, "one file at a time", 1},
    {"bench: unknown suite", NULL, {"bench", "everything"}, 1, "unknown suite", 0},
    {"bench: zero threads", NULL, {"bench", "ops", "-t", "0"}, 1, "must be positive", 0},
    {"bench: too many reps", NULL, {"bench", "ops", "--reps", "5000"}, 1, "must be positive", 0},
    {"unknown command", NULL, {"frobnicate"}, 1, "unknown command", 1},
};

static char err_text[8192];

/* Runs bin with args; returns the exit status, or 128 + signal (never expected). */
static int run_cli(const cli_case *c) {
    char *argv[8], store[6][1024];
    argv[0] = bin;
    int k = 1;
    for (int i = 0; i < 6 && c->args[i]; i++, k++) {
        snprintf(store[i], sizeof store[i], "%s", c->args[i][0] == '@' ? tpath(c->args[i] + 1) : c->args[i]);
        argv[k] = store[i];
    }
    argv[k] = NULL;
    const char *errp = tpath("cli.err");
    pid_t pid = fork();
    if (pid == 0) {
        int o = open("/dev/null", O_WRONLY), e = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (o < 0 || e < 0)
            _exit(99);
        dup2(o, 1), dup2(e, 2);
        unsetenv("RELBOOTH_MEM_LIMIT");
        if (c->env)
            putenv((char *)c->env);
        execv(bin, argv);
        _exit(98);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid)
        return -1;
    err_text[0] = 0;
    FILE *f = fopen(errp, "rb");
    if (f) {
        err_text[fread(err_text, 1, sizeof err_text - 1, f)] = 0;
        fclose(f);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

static void t_cli_matrix(void) {
    struct stat sb;
    if (stat(bin, &sb) != 0) {
        t_skip("%s not built", bin);
        return;
    }
    REQUIRE(setup_files(), "cannot create the hostile files in %s", t_tmpdir());
    for (size_t i = 0; i < sizeof cli_cases / sizeof *cli_cases; i++) {
        const cli_case *c = &cli_cases[i];
        int rc = run_cli(c);
        const char *nl = strchr(err_text, '\n');
        size_t first = nl ? (size_t)(nl - err_text) : strlen(err_text);
        char line[1024];
        snprintf(line, sizeof line, "%.*s", (int)(first < 1000 ? first : 1000), err_text);
        CHECK(rc == c->want_exit, "%s: exit %d, want %d (stderr: %s)", c->name, rc, c->want_exit, err_text);
        CHECK(rc < 128, "%s: killed by signal %d", c->name, rc - 128);
        CHECK(nl && strstr(line, c->want_err) && !strncmp(line, "relbooth", 8), "%s: first stderr line '%s'",
              c->name, line);
        if (c->usage_follows)
            CHECK(nl && (nl[1] == 0 || !strncmp(nl + 1, "usage:", 6)), "%s: after the error line: %s", c->name, nl);
        else
            CHECK(nl && nl[1] == 0, "%s: more than one stderr line:\n%s", c->name, err_text);
    }
}

/* ---------------------------------------------------------------- library matrix */

static size_t saved_limit;
static void budget(size_t bytes) {
    saved_limit = rb_get_mem_limit();
    rb_set_mem_limit(bytes);
}
static void budget_restore(void) { rb_set_mem_limit(saved_limit); }

static rb_status st_mem(const char *json, uint64_t hlen, const void *data, size_t dn, size_t cut) {
    static uint8_t b[4096];
    size_t n = st_make(b, json, hlen, data, dn);
    rb_safetensors f;
    rb_status s = rb_st_open_mem(&f, b, n - cut, "hostile.safetensors");
    if (s == RB_OK)
        rb_st_close(&f);
    return s;
}

static rb_status l_st_truncated(void) { return st_mem(ST_OK, 0, two, sizeof two, 1); }
static rb_status l_st_header_len(void) { return st_mem(ST_OK, 200, two, sizeof two, 0); }
static rb_status l_st_header_max(void) { return st_mem(ST_OK, UINT64_MAX, two, sizeof two, 0); }
static rb_status l_st_dtype(void) {
    return st_mem("{\"a\":{\"dtype\":\"Q7\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, two, sizeof two, 0);
}
static rb_status l_st_shape_bytes(void) {
    return st_mem("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 0, two, sizeof two, 0);
}
static rb_status l_st_shape_overflow(void) {
    return st_mem("{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}", 0, two,
                  sizeof two, 0);
}
static rb_status l_st_offsets_far(void) {
    return st_mem("{\"a\":{\"dtype\":\"F32\",\"shape\":[274877906944],\"data_offsets\":[0,1099511627776]}}", 0, two,
                  sizeof two, 0);
}
static rb_status l_st_rank(void) {
    return st_mem("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 0, two, sizeof two, 0);
}
static rb_status l_st_negative(void) {
    return st_mem("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 0, two, sizeof two, 0);
}
static rb_status l_st_overlap(void) {
    return st_mem("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                  0, two, sizeof two, 0);
}
static rb_status l_st_budget(void) {
    budget(16);
    rb_status s = st_mem(ST_OK, 0, two, sizeof two, 0);
    budget_restore();
    return s;
}

static rb_status torch_mem(const char *pk, size_t pn, size_t cut) {
    static uint8_t b[4096];
    size_t n = torch_zip(b, pk, pn);
    rb_torchfile f;
    rb_status s = rb_torch_open_mem(&f, b, n - cut, "hostile.pt");
    if (s == RB_OK)
        rb_torch_close(&f);
    return s;
}
static rb_status l_torch_system(void) { return torch_mem(pk_system, sizeof pk_system - 1, 0); }
static rb_status l_torch_storage(void) { return torch_mem(pk_huge, sizeof pk_huge - 1, 0); }
static rb_status l_torch_truncated(void) { return torch_mem(pk_ok, sizeof pk_ok - 1, 40); }
static rb_status l_pickle_eval(void) {
    rb_pk_pool pool = {0};
    rb_pk_value *v;
    rb_status s = rb_pickle_load(&pool, (const uint8_t *)pk_eval, sizeof pk_eval - 1, "hostile.pkl", &v, NULL);
    rb_pk_pool_free(&pool);
    return s;
}
static rb_status l_pickle_truncated(void) {
    rb_pk_pool pool = {0};
    rb_pk_value *v;
    rb_status s = rb_pickle_load(&pool, (const uint8_t *)pk_ok, sizeof pk_ok - 10, "hostile.pkl", &v, NULL);
    rb_pk_pool_free(&pool);
    return s;
}

static rb_status img_decode(const uint8_t *b, size_t n, int want) {
    rb_image img;
    rb_status s = rb_image_decode(&img, b, n, want, "hostile.png");
    if (s == RB_OK)
        rb_image_free(&img);
    else if (img.data || img.width)
        return RB_ERR_INTERNAL; /* documented: img zeroed on error */
    return s;
}
static rb_status l_img_truncated(void) { return img_decode(png_buf, png_n / 2, 3); }
static rb_status l_img_pixels(void) {
    static uint8_t b[1 << 16];
    png_resized(b, 1u << 20, 1u << 20);
    return img_decode(b, png_n, 3);
}
static rb_status l_img_budget(void) {
    budget(1024);
    rb_status s = img_decode(png_buf, png_n, 4);
    budget_restore();
    return s;
}
static rb_status l_img_empty(void) { return img_decode(png_buf, 0, 0); }
static rb_status l_img_channels(void) { return img_decode(png_buf, png_n, 2); }
static rb_status l_img_dir(void) {
    rb_image img;
    return rb_image_load(&img, t_tmpdir(), 3);
}

static rb_status sched_cfg(const char *json) {
    put_file("scheduler_config.json", json, strlen(json));
    rb_sched_config c;
    return rb_sched_config_load(&c, tpath("scheduler_config.json"));
}
static rb_status l_sched_steps(void) { return sched_cfg("{\"num_train_timesteps\": 1000000000}"); }
static rb_status l_sched_nan(void) { return sched_cfg("{\"beta_start\": NaN}"); }
static rb_status l_sched_beta(void) { return sched_cfg("{\"beta_start\": 0.5, \"beta_end\": 2.0}"); }
static rb_status l_sched_inf(void) { return sched_cfg("{\"beta_end\": 1e999}"); }

static rb_status tok_dir(const char *vocab, const char *merges) {
    mkdir(tpath("tok"), 0755);
    put_file("tok/vocab.json", vocab, strlen(vocab));
    put_file("tok/merges.txt", merges, strlen(merges));
    const char *sp = "{\"pad_token\": \"<|endoftext|>\"}";
    put_file("tok/special_tokens_map.json", sp, strlen(sp));
    rb_clip_tokenizer *t = NULL;
    rb_status s = rb_clip_tokenizer_load(&t, tpath("tok"));
    rb_clip_tokenizer_free(t);
    return s;
}
static rb_status l_tok_ids(void) {
    return tok_dir("{\"<|startoftext|>\": 0, \"<|endoftext|>\": 0}", "#version: 0.2\n");
}
static rb_status l_tok_merges(void) {
    return tok_dir("{\"<|startoftext|>\": 0, \"<|endoftext|>\": 1}", "#version: 0.2\nabc\n");
}

/* Writers: the target folder must hold exactly `keep` afterwards (no temporary or partial file). */
static int leftovers(const char *dir, const char *keep) {
    DIR *d = opendir(dir);
    int bad = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.' && (!keep || strcmp(e->d_name, keep)))
            bad++;
    if (d)
        closedir(d);
    return bad;
}

static rb_status st_write_two(const char *path) {
    static float big[1 << 16];
    rb_tensor t = rb_tensor_wrap(big, RB_F32, 1, (int64_t[]){1 << 16});
    const rb_tensor *ts[1] = {&t};
    const char *names[1] = {"w"};
    return rb_st_write(path, 1, names, ts, 0, NULL, NULL);
}
static rb_status png_write_big(const char *path) {
    static uint8_t px[256 * 256 * 3];
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < sizeof px; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5; /* xorshift noise: does not compress */
        px[i] = (uint8_t)x;
    }
    rb_image img = {.width = 256, .height = 256, .channels = 3, .data = px};
    return rb_png_write(path, &img, 0, NULL, NULL);
}

/* RLIMIT_FSIZE below the output size: the write fails with EFBIG (SIGXFSZ ignored, as a host
 * program that wants errors would do); the old file must survive and no temporary remain. */
static rb_status full_disk(rb_status (*w)(const char *), const char *dirname) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", tpath(dirname));
    mkdir(dir, 0755);
    char path[1100];
    snprintf(path, sizeof path, "%s/out", dir);
    FILE *f = fopen(path, "wb");
    if (!f)
        return RB_ERR_INTERNAL;
    fputs("old", f);
    fclose(f);
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 4096;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &lim);
    rb_status s = w(path);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", rb_last_error());
    struct stat sb;
    if (leftovers(dir, "out") || stat(path, &sb) != 0 || sb.st_size != 3)
        s = RB_ERR_INTERNAL; /* partial output left behind or the old file damaged */
    rb_error(s, "%s", msg); /* keep the writer's message for the checks */
    return s;
}
static rb_status l_st_full(void) { return full_disk(st_write_two, "full_st"); }
static rb_status l_png_full(void) { return full_disk(png_write_big, "full_png"); }

/* Output folder that cannot exist (its parent is a regular file; root ignores permission bits). */
static rb_status unwritable(rb_status (*w)(const char *)) {
    char path[1024];
    snprintf(path, sizeof path, "%s/sub/out", tpath("empty.bin"));
    rb_status s = w(path);
    struct stat sb;
    if (stat(path, &sb) == 0)
        s = RB_ERR_INTERNAL;
    return s;
}
static rb_status l_st_unwritable(void) { return unwritable(st_write_two); }
static rb_status l_png_unwritable(void) { return unwritable(png_write_big); }
static rb_status l_st_write_dtype(void) {
    rb_tensor t = rb_tensor_wrap((void *)two, (rb_dtype)999, 1, (int64_t[]){2});
    const rb_tensor *ts[1] = {&t};
    const char *names[1] = {"w"};
    rb_status s = rb_st_write(tpath("bad_dtype.safetensors"), 1, names, ts, 0, NULL, NULL);
    struct stat sb;
    return stat(tpath("bad_dtype.safetensors"), &sb) == 0 ? RB_ERR_INTERNAL : s;
}

/* Wrong shapes and dtypes handed to tensor calls (what a model loader does with a checkpoint whose
 * tensor has the right name but the wrong shape). */
static rb_status l_reshape(void) {
    rb_tensor t = rb_tensor_wrap((void *)two, RB_F32, 1, (int64_t[]){2}), out;
    return rb_view_reshape(&out, &t, 2, (int64_t[]){3, 1});
}
static rb_status l_copy_shapes(void) {
    float dst[3];
    rb_tensor a = rb_tensor_wrap(dst, RB_F32, 1, (int64_t[]){3}), b = rb_tensor_wrap((void *)two, RB_F32, 1, (int64_t[]){2});
    return rb_tensor_copy(&a, &b);
}
static rb_status l_alloc_huge(void) {
    rb_tensor t;
    rb_status s = rb_tensor_alloc(&t, RB_F32, 3, (int64_t[]){1 << 20, 1 << 20, 1 << 20}, "hostile shape");
    if (s == RB_OK)
        rb_tensor_free(&t);
    return s;
}
static rb_status l_alloc_dtype(void) {
    rb_tensor t;
    rb_status s = rb_tensor_alloc(&t, (rb_dtype)77, 1, (int64_t[]){2}, "hostile dtype");
    if (s == RB_OK)
        rb_tensor_free(&t);
    return s;
}

typedef struct {
    const char *name;
    rb_status (*fn)(void);
    rb_status want;
    const char *want_msg; /* substring of rb_last_error() */
} lib_case;

static const lib_case lib_cases[] = {
    {"safetensors: truncated data", l_st_truncated, RB_ERR_FORMAT, "outside"},
    {"safetensors: header length beyond the file", l_st_header_len, RB_ERR_FORMAT, "exceeds the file size"},
    {"safetensors: header length 2^64-1", l_st_header_max, RB_ERR_FORMAT, "limit"},
    {"safetensors: unknown dtype", l_st_dtype, RB_ERR_UNSUPPORTED, "unknown dtype"},
    {"safetensors: shape vs data_offsets", l_st_shape_bytes, RB_ERR_FORMAT, "needs"},
    {"safetensors: shape overflows size_t", l_st_shape_overflow, RB_ERR_FORMAT, "overflows"},
    {"safetensors: 1 TiB declared in a tiny file", l_st_offsets_far, RB_ERR_FORMAT, "outside"},
    {"safetensors: 6 dimensions", l_st_rank, RB_ERR_UNSUPPORTED, "dimensions"},
    {"safetensors: negative dimension", l_st_negative, RB_ERR_FORMAT, "non-negative"},
    {"safetensors: overlapping tensors", l_st_overlap, RB_ERR_FORMAT, "overlap"},
    {"safetensors: memory budget", l_st_budget, RB_ERR_OOM, "hostile.safetensors"},
    {"torch: foreign global posix.system", l_torch_system, RB_ERR_FORMAT, "posix.system"},
    {"torch: storage of 2^40 elements", l_torch_storage, RB_ERR_FORMAT, "hostile.pt"},
    {"torch: truncated zip", l_torch_truncated, RB_ERR_FORMAT, "hostile.pt"},
    {"pickle: builtins.eval", l_pickle_eval, RB_ERR_FORMAT, "builtins.eval"},
    {"pickle: truncated", l_pickle_truncated, RB_ERR_FORMAT, "hostile.pkl"},
    {"image: truncated PNG", l_img_truncated, RB_ERR_FORMAT, "hostile.png"},
    {"image: 2^40 pixels declared", l_img_pixels, RB_ERR_FORMAT, "exceeds the limit"},
    {"image: memory budget", l_img_budget, RB_ERR_OOM, ""},
    {"image: empty", l_img_empty, RB_ERR_FORMAT, "empty"},
    {"image: 2 channels requested", l_img_channels, RB_ERR_INVALID, "want_channels"},
    {"image: a directory", l_img_dir, RB_ERR_IO, "directory"},
    {"scheduler config: num_train_timesteps 1e9", l_sched_steps, RB_ERR_FORMAT, "out of range"},
    {"scheduler config: NaN literal", l_sched_nan, RB_ERR_FORMAT, "scheduler_config.json"},
    {"scheduler config: beta_end 2", l_sched_beta, RB_ERR_FORMAT, "beta"},
    {"scheduler config: beta_end 1e999", l_sched_inf, RB_ERR_FORMAT, "scheduler_config.json"},
    {"tokenizer: repeated vocab id", l_tok_ids, RB_ERR_FORMAT, "repeated id"},
    {"tokenizer: malformed merge", l_tok_merges, RB_ERR_FORMAT, "merge"},
    {"rb_st_write: full disk (RLIMIT_FSIZE)", l_st_full, RB_ERR_IO, "out"},
    {"rb_png_write: full disk (RLIMIT_FSIZE)", l_png_full, RB_ERR_IO, "out"},
    {"rb_st_write: unwritable folder", l_st_unwritable, RB_ERR_IO, "sub/out"},
    {"rb_png_write: unwritable folder", l_png_unwritable, RB_ERR_IO, "sub/out"},
    {"rb_st_write: invalid dtype", l_st_write_dtype, RB_ERR_INVALID, "bad_dtype.safetensors"},
    {"tensor: reshape to the wrong element count", l_reshape, RB_ERR_INVALID, "do not fit"},
    {"tensor: copy between different shapes", l_copy_shapes, RB_ERR_INVALID, "shapes differ"},
    {"tensor: 2^60 elements", l_alloc_huge, RB_ERR_OOM, "hostile shape"},
    {"tensor: invalid dtype", l_alloc_dtype, RB_ERR_INVALID, "invalid dtype"},
};

static void t_library_matrix(void) {
    REQUIRE(setup_files(), "cannot create the hostile files in %s", t_tmpdir());
    for (size_t i = 0; i < sizeof lib_cases / sizeof *lib_cases; i++) {
        const lib_case *c = &lib_cases[i];
        rb_clear_error();
        rb_status s = c->fn();
        const char *msg = rb_last_error();
        CHECK(s == c->want, "%s: %s (%d), want %s: %s", c->name, rb_status_str(s), (int)s, rb_status_str(c->want), msg);
        CHECK(msg[0] && !strchr(msg, '\n') && strstr(msg, c->want_msg), "%s: message '%s' (want one line with '%s')",
              c->name, msg, c->want_msg);
    }
}

/* ---------------------------------------------------------------- fuzzer regressions */

/* Replays every file under tests/data/regress/<target>/ through the target's entry point: each
 * once crashed a fuzzer and must now fail (or succeed) cleanly with a one-line message. */
static int replay(const char *target, const uint8_t *b, size_t n, const char *name) {
    rb_status s;
    if (!strcmp(target, "fuzz_safetensors")) {
        rb_safetensors f;
        if ((s = rb_st_open_mem(&f, b, n, name)) == RB_OK)
            rb_st_close(&f);
    } else if (!strcmp(target, "fuzz_torch")) {
        rb_torchfile f;
        if ((s = rb_torch_open_mem(&f, b, n, name)) == RB_OK)
            rb_torch_close(&f);
    } else if (!strcmp(target, "fuzz_pickle")) {
        rb_pk_pool pool = {0};
        rb_pk_value *v;
        s = rb_pickle_load(&pool, b, n, name, &v, NULL);
        rb_pk_pool_free(&pool);
    } else if (!strcmp(target, "fuzz_image")) {
        static const int wants[4] = {0, 1, 3, 4};
        rb_image img;
        if ((s = rb_image_decode(&img, b, n, wants[n % 4], name)) == RB_OK)
            rb_image_free(&img);
    } else if (!strcmp(target, "fuzz_sched_config")) {
        put_file("regress.json", b, n);
        rb_sched_config c;
        s = rb_sched_config_load(&c, tpath("regress.json"));
        rb_scheduler *sc = calloc(1, sizeof *sc);
        if (s == RB_OK && sc && (s = rb_sched_init(sc, &c, (rb_sampler)(n % RB_SAMPLER_COUNT))) == RB_OK &&
            (s = rb_sched_set_timesteps(sc, 1 + (int)(n % 50))) == RB_OK) {
            float x[4] = {0.5f, -1.f, 2.f, 0.f}, eps[4] = {0.1f, 0.2f, -0.3f, 0.f}, noise[4] = {1, 0, -1, 0}, in[4];
            for (int i = 0; i < sc->n_steps && s == RB_OK; i++) {
                rb_sched_scale_input(sc, i, x, in, 4);
                s = rb_sched_step(sc, i, eps, x, noise, NULL, 4);
            }
        }
        if (sc)
            rb_sched_free(sc);
        free(sc);
    } else if (!strcmp(target, "fuzz_yaml_config")) {
        put_file("regress.yaml", b, n);
        static rb_dr_config store;
        rb_gen_params p;
        rb_gen_params_init(&p);
        s = rb_dr_config_load(tpath("regress.yaml"), &store, &p);
        for (int i = 0; s == RB_OK && i < p.n_subjects; i++) /* an accepted box is a finite float */
            for (int k = 0; k < 4; k++)
                if (!isfinite(p.subjects[i].box[k]))
                    return 0;
    } else {
        return -1;
    }
    return s == RB_OK || (rb_last_error()[0] && !strchr(rb_last_error(), '\n'));
}

static void t_regressions(void) {
    DIR *top = opendir(regress_dir);
    if (!top) {
        t_skip("no %s", regress_dir);
        return;
    }
    int n = 0;
    struct dirent *t;
    while ((t = readdir(top))) {
        if (t->d_name[0] == '.')
            continue;
        char sub[4400];
        snprintf(sub, sizeof sub, "%s/%s", regress_dir, t->d_name);
        DIR *d = opendir(sub);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char p[4700];
            snprintf(p, sizeof p, "%s/%s", sub, e->d_name);
            FILE *f = fopen(p, "rb");
            static uint8_t b[1 << 20];
            size_t len = f ? fread(b, 1, sizeof b, f) : 0;
            if (f)
                fclose(f);
            rb_clear_error();
            int ok = replay(t->d_name, b, len, e->d_name);
            CHECK(ok == 1, "%s/%s: %s", t->d_name, e->d_name, ok < 0 ? "unknown target folder" : rb_last_error());
            n++;
        }
        if (d)
            closedir(d);
    }
    closedir(top);
    CHECK(n > 0, "no regression inputs under %s", regress_dir);
}

int main(int argc, char **argv) {
    const char *self = argc > 0 ? argv[0] : "./test_badinput";
    t_beside_self(self, "../relbooth", bin, sizeof bin);
    /* build/tests/ -> repository root: ../../tests/data/regress, or REL from the working directory */
    t_beside_self(self, "../../tests/data/regress", regress_dir, sizeof regress_dir);
    RUN(t_library_matrix);
    RUN(t_cli_matrix);
    RUN(t_regressions);
    return t_done();
}
