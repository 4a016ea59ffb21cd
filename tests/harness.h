/* Minimal test harness: each tests/test_*.c is one program; each test prints one line
 * "PASS|FAIL|SKIP <file>:<test> [detail]" and tests/run.sh adds them up.
 *
 *   static void t_parse(void) { CHECK(x == 3, "x = %d", x); }
 *   int main(void) { RUN(t_parse); return t_done(); }
 */
#ifndef RB_TEST_HARNESS_H
#define RB_TEST_HARNESS_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int t_failed_total, t_cur_failed, t_cur_skipped;
static char t_skip_reason[256];

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        if (!(cond)) {                                                      \
            t_cur_failed++;                                                 \
            fprintf(stderr, "  %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                   \
            fprintf(stderr, "\n");                                          \
        }                                                                   \
    } while (0)

/* CHECK that stops the test (for preconditions whose failure would crash what follows). */
#define REQUIRE(cond, ...)            \
    do {                              \
        int t_before_ = t_cur_failed; \
        CHECK(cond, __VA_ARGS__);     \
        if (t_cur_failed != t_before_) \
            return;                   \
    } while (0)

static inline void t_skip(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t_skip_reason, sizeof t_skip_reason, fmt, ap);
    va_end(ap);
    t_cur_skipped = 1;
}

#define RUN(fn) t_run(#fn, fn)
static inline void t_run(const char *name, void (*fn)(void)) {
    t_cur_failed = 0;
    t_cur_skipped = 0;
    fn();
    const char *file = strrchr(__FILE__, '/');
    (void)file;
    if (t_cur_failed) {
        printf("FAIL %s\n", name);
        t_failed_total++;
    } else if (t_cur_skipped) {
        printf("SKIP %s (%s)\n", name, t_skip_reason);
    } else {
        printf("PASS %s\n", name);
    }
    fflush(stdout);
}

static inline int t_done(void) { return t_failed_total ? 1 : 0; }

/* The golden folder (RELBOOTH_GOLDEN, default ../shared/golden) or NULL when absent. */
static inline const char *t_golden(void) {
    const char *g = getenv("RELBOOTH_GOLDEN");
    if (!g || !*g)
        g = "../shared/golden";
    struct stat st;
    return stat(g, &st) == 0 && S_ISDIR(st.st_mode) ? g : NULL;
}

/* The golden tree holds relative symlinks that some checkouts turn into small text files holding
 * the target ("../ms_diffusion/ms_adapter.bin"). t_resolve follows such stubs in every component of
 * `path` (tests only: the library treats files as what they are). Returns out. */
static inline const char *t_resolve(const char *path, char *out, size_t cap) {
    char cur[4096] = "";
    const char *p = path;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        size_t k = strlen(cur);
        snprintf(cur + k, sizeof cur - k, "%s%.*s", (k || *path == '/') ? "/" : "", (int)n, p);
        for (int hop = 0; hop < 4; hop++) {
            struct stat sb;
            if (stat(cur, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size > 300)
                break;
            FILE *f = fopen(cur, "rb");
            char target[320] = {0};
            size_t got = f ? fread(target, 1, sizeof target - 1, f) : 0;
            if (f)
                fclose(f);
            if (got < 3 || strncmp(target, "../", 3) || memchr(target, '\n', got))
                break;
            char next[4096];
            const char *dir_end = strrchr(cur, '/');
            snprintf(next, sizeof next, "%.*s/%s", dir_end ? (int)(dir_end - cur) : 1, dir_end ? cur : ".", target);
            if (stat(next, &sb) != 0)
                break;
            snprintf(cur, sizeof cur, "%s", next);
        }
        p += n;
        while (*p == '/')
            p++;
    }
    snprintf(out, cap, "%s", cur);
    return out;
}

/* "<golden>/<rel>" (link stubs followed) in a static buffer, or NULL (and the test marked skipped)
 * when the golden folder is absent. */
static inline const char *t_golden_path(const char *rel) {
    static char buf[2][4096];
    static int which;
    char joined[8192];
    const char *g = t_golden();
    if (!g) {
        t_skip("golden folder not found (set RELBOOTH_GOLDEN)");
        return NULL;
    }
    snprintf(joined, sizeof joined, "%s/%s", g, rel);
    which ^= 1;
    return t_resolve(joined, buf[which], sizeof buf[which]);
}

/* max |a - b| over n floats, and whether it is within atol + rtol * |b| everywhere. */
static inline int t_allclose(const float *a, const float *b, size_t n, float atol, float rtol, double *maxdiff) {
    double m = 0;
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= atol + rtol * fabs((double)b[i])))
            ok = 0;
        if (d > m || d != d)
            m = d;
    }
    if (maxdiff)
        *maxdiff = m;
    return ok;
}

/* A temporary directory for the test's outputs (removed by the runner's build dir clean). */
static inline const char *t_tmpdir(void) {
    static char dir[256];
    if (!dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/relbooth-test-XXXXXX", base ? base : "/tmp");
        if (!mkdtemp(dir))
            snprintf(dir, sizeof dir, "/tmp");
    }
    return dir;
}

/* "<folder of argv0>/<rel>" in out: the test programs live in build/tests/, so
 * t_beside_self(argv[0], "../relbooth", ...) is the CLI built with them. Returns out. */
static inline const char *t_beside_self(const char *argv0, const char *rel, char *out, size_t cap) {
    const char *slash = strrchr(argv0, '/');
    if (!slash)
        snprintf(out, cap, "./%s", rel);
    else
        snprintf(out, cap, "%.*s/%s", slash == argv0 ? 1 : (int)(slash - argv0), argv0, rel);
    return out;
}

/* The first executable `name` in a PATH folder, in out; "" when there is none. Returns out. */
static inline const char *t_find_on_path(const char *name, char *out, size_t cap) {
    out[0] = 0;
    for (const char *d = getenv("PATH"); d && *d && !out[0];) {
        size_t n = strcspn(d, ":");
        snprintf(out, cap, "%.*s/%s", (int)n, d, name);
        if (access(out, X_OK) != 0)
            out[0] = 0;
        d += n + (d[n] == ':');
    }
    return out;
}

/* Runs `cmd` (a shell command line) with stdout and stderr captured into out / err (NUL-terminated,
 * truncated to the buffers); returns the exit status, or 128 when it died by a signal. */
static inline int t_run_capture(const char *cmd, char *out, size_t out_cap, char *err, size_t err_cap) {
    char o[512], e[512], full[40000];
    snprintf(o, sizeof o, "%s/capture.out", t_tmpdir());
    snprintf(e, sizeof e, "%s/capture.err", t_tmpdir());
    snprintf(full, sizeof full, "%s >%s 2>%s", cmd, o, e);
    int st = system(full);
    char *bufs[2] = {out, err};
    const char *paths[2] = {o, e};
    size_t caps[2] = {out_cap, err_cap};
    for (int i = 0; i < 2; i++) {
        bufs[i][0] = 0;
        FILE *f = fopen(paths[i], "rb");
        if (f) {
            bufs[i][fread(bufs[i], 1, caps[i] - 1, f)] = 0;
            fclose(f);
        }
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Small file helpers for tests that build folders at run time: whole-file copy, text write, and text
 * read (malloc'd, NUL-terminated; NULL when unreadable). */
static inline void t_copy_file(const char *src, const char *dst) {
    FILE *a = fopen(src, "rb"), *b = fopen(dst, "wb");
    char buf[65536];
    size_t n;
    while (a && b && (n = fread(buf, 1, sizeof buf, a)) > 0)
        fwrite(buf, 1, n, b);
    if (a)
        fclose(a);
    if (b)
        fclose(b);
}

static inline void t_write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static inline char *t_read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s)
        s[fread(s, 1, (size_t)n, f)] = 0;
    fclose(f);
    return s;
}

#endif
