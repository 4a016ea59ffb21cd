/* Data-parallel runs over MPI (src/core/dist.h, src/pipelines/eval_dist.c): tests/mpi_worker checks
 * every dist call alone (no MPI, and an OpenMPI singleton) and under `mpirun -np 2` and `-np 3` (the sums
 * bit-exact against a rank-order sum computed by every rank); then `relbooth eval --images` on the
 * golden tiny CLIP/DINO gives byte-identical metrics.json / cases.csv / report.html from one process and
 * from 2 ranks, a 2-rank rerun recomputes nothing, a single process resumes from a rank log left by an
 * interrupted 2-rank run, and a rank that fails is reported by rank 0 without a hang.
 * mpirun runs on loopback only (shared memory between local ranks); skipped when it is not on PATH. */
#pragma GCC diagnostic ignored "-Wformat-truncation"

#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static char build[4096], mpirun[4096], bench[4096], out_err[8192], clip[4096], dino[4096], tok[4096];
static int have_bench;

#define MPIRUN_ARGS                                                                                       \
    "--oversubscribe --bind-to none --mca btl self,vader --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo"

/* Commands that start MPI run without LeakSanitizer under `make sanitize`: OpenMPI keeps thousands of
 * allocations until exit, many in plugins it has unloaded (no library name to suppress them by). The
 * run without MPI keeps leak checking on; ASan's other checks stay on everywhere. */
#define NO_LSAN "env ASAN_OPTIONS=\"$ASAN_OPTIONS:detect_leaks=0\" "

static int same_file(const char *a, const char *b) {
    char *x = t_read_text(a), *y = t_read_text(b);
    int same = x && y && !strcmp(x, y);
    free(x), free(y);
    return same;
}

static int count_of(const char *s, const char *what) {
    int n = 0;
    for (const char *p = s; p && (p = strstr(p, what)); p += strlen(what))
        n++;
    return n;
}

/* Runs a shell command (under `timeout`, so a hang fails instead of blocking); stdout is returned
 * (malloc'd), stderr kept in out_err; *rc the exit status. */
static char *run(const char *cmd, int *rc) {
    char o[4096], e[4096], full[32768];
    snprintf(o, sizeof o, "%s/cmd.out", t_tmpdir());
    snprintf(e, sizeof e, "%s/cmd.err", t_tmpdir());
    snprintf(full, sizeof full, "timeout 120 %s >%s 2>%s", cmd, o, e);
    int st = system(full);
    *rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    char *err = t_read_text(e);
    snprintf(out_err, sizeof out_err, "%s", err ? err : "");
    free(err);
    char *out = t_read_text(o);
    return out ? out : calloc(1, 1);
}

static void t_world_of_one(void) {
    int rc;
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "env -u OMPI_COMM_WORLD_SIZE -u PMIX_RANK -u PMI_RANK RELBOOTH_MPI= %s/tests/mpi_worker 1",
             build);
    char *out = run(cmd, &rc);
    CHECK(rc == 0 && strstr(out, "rank 0/1 ok (mpi off)"), "without MPI: rc %d: %s%s", rc, out, out_err);
    free(out);
    if (!mpirun[0]) {
        t_skip("mpirun not on PATH (apt-get install openmpi-bin)");
        return;
    }
    snprintf(cmd, sizeof cmd, NO_LSAN "RELBOOTH_MPI=1 %s/tests/mpi_worker 1", build);
    out = run(cmd, &rc);
    CHECK(rc == 0 && strstr(out, "rank 0/1 ok (mpi on)"), "singleton: rc %d: %s%s", rc, out, out_err);
    free(out);
}

static void t_collectives(void) {
    if (!mpirun[0]) {
        t_skip("mpirun not on PATH (apt-get install openmpi-bin)");
        return;
    }
    for (int np = 2; np <= 3; np++) {
        int rc;
        char cmd[8192];
        snprintf(cmd, sizeof cmd, NO_LSAN "%s -np %d " MPIRUN_ARGS " %s/tests/mpi_worker %d", mpirun, np, build, np);
        char *out = run(cmd, &rc);
        int ok = rc == 0 && !strstr(out, "FAIL");
        for (int r = 0; r < np; r++) {
            char want[64];
            snprintf(want, sizeof want, "rank %d/%d ok (mpi on)", r, np);
            ok &= strstr(out, want) != NULL;
        }
        CHECK(ok, "mpirun -np %d: rc %d: %s%s", np, rc, out, out_err);
        free(out);
    }
}

/* bench/: refs (golden images), a manifest of 3 cases, images/ with 5 scored images (cases 0 and 2 go
 * to rank 0, case 1 to rank 1). */
static void make_bench(void) {
    const char *src[5] = {"clip_metrics/images/ref0_256x192_rgb.png", "clip_metrics/images/ref1_160x200_rgb.png",
                          "clip_vision/images/img0_300x200_rgb.png", "clip_vision/images/img1_180x240_rgba.png",
                          "clip_vision/images/img2_224x224_rgb.png"};
    const char *dst[5] = {"refs/cat.png", "refs/dog.png", "images/hug_1.png", "images/ride_1.png", "images/sit_7.png"};
    char p[8192];
    snprintf(bench, sizeof bench, "%s/bench", t_tmpdir());
    mkdir(bench, 0755);
    snprintf(p, sizeof p, "%s/refs", bench), mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/images", bench), mkdir(p, 0755);
    for (int i = 0; i < 5; i++) {
        const char *g = t_golden_path(src[i]);
        if (!g)
            return;
        snprintf(p, sizeof p, "%s/%s", bench, dst[i]);
        t_copy_file(g, p);
    }
    char a[8192];
    snprintf(a, sizeof a, "%s/images/hug_1.png", bench), snprintf(p, sizeof p, "%s/images/hug_2.png", bench);
    t_copy_file(a, p);
    snprintf(a, sizeof a, "%s/refs/dog.png", bench), snprintf(p, sizeof p, "%s/images/sit_1.png", bench);
    t_copy_file(a, p);
    snprintf(p, sizeof p, "%s/manifest.json", bench);
    t_write_text(p, "{\"root\": \"refs\",\n"
                  " \"subjects\": [{\"name\": \"cat\", \"images\": [\"cat.png\"]},\n"
                  "              {\"name\": \"dog\", \"images\": [\"dog.png\", \"cat.png\"]}],\n"
                  " \"cases\": [{\"id\": \"hug\", \"prompt\": \"A {} is hugging a {}.\", \"subjects\": [\"cat\", \"dog\"]},\n"
                  "           {\"id\": \"ride\", \"prompt\": \"A {} is riding a horse.\", \"subjects\": [\"dog\"]},\n"
                  "           {\"id\": \"sit\", \"prompt\": \"A {} is sitting on a chair.\", \"subjects\": [\"cat\"]}]}\n");
    have_bench = 1;
}

/* `relbooth eval` over bench/images into OUT, under mpirun -np NP (0: a plain process). */
static char *eval(int np, const char *out, const char *images, int *rc) {
    char cmd[16384], pre[8192] = "";
    if (np)
        snprintf(pre, sizeof pre, NO_LSAN "%s -np %d " MPIRUN_ARGS " ", mpirun, np);
    snprintf(cmd, sizeof cmd,
             "env OMP_NUM_THREADS=1 %s%s/relbooth eval %s/manifest.json -o %s/%s --images %s --clip %s --dino %s "
             "--clip-tokenizer %s -q",
             pre, build, bench, t_tmpdir(), out, images, clip, dino, tok);
    return run(cmd, rc);
}

static int outputs_equal(const char *a, const char *b) {
    const char *files[3] = {"metrics.json", "cases.csv", "report.html"};
    int same = 1;
    for (int i = 0; i < 3; i++) {
        char x[8192], y[8192];
        snprintf(x, sizeof x, "%s/%s/%s", t_tmpdir(), a, files[i]);
        snprintf(y, sizeof y, "%s/%s/%s", t_tmpdir(), b, files[i]);
        if (!same_file(x, y)) {
            printf("# %s differs between %s and %s\n", files[i], a, b);
            same = 0;
        }
    }
    return same;
}

static int exists(const char *out, const char *name) {
    char p[8192];
    snprintf(p, sizeof p, "%s/%s/%s", t_tmpdir(), out, name);
    return access(p, F_OK) == 0;
}

static void t_eval_sharded(void) {
    if (!mpirun[0] || !have_bench) {
        t_skip(!mpirun[0] ? "mpirun not on PATH (apt-get install openmpi-bin)" : "golden folder not found");
        return;
    }
    char images[8192], p[8192], q[8192];
    snprintf(images, sizeof images, "%s/images", bench);
    int rc;
    char *o1 = eval(0, "one", images, &rc);
    REQUIRE(rc == 0 && strstr(o1, "3 cases, 5 images (0 generated, 5 scored now)"), "1 process: rc %d: %s%s", rc,
            o1, out_err);
    char *o2 = eval(2, "two", images, &rc);
    /* the first two lines (counts, means); the third names the output folder */
    const char *end1 = strchr(o1, '\n') ? strchr(strchr(o1, '\n') + 1, '\n') : NULL;
    CHECK(rc == 0 && count_of(o2, "5 images") == 1 && end1 && !strncmp(o1, o2, (size_t)(end1 - o1)),
          "2 ranks print what 1 process does, once: rc %d: %s%s", rc, o2, out_err);
    CHECK(outputs_equal("one", "two"), "2 ranks write the same metrics.json, cases.csv, report.html");
    snprintf(p, sizeof p, "%s/two/results.jsonl", t_tmpdir());
    char *log = t_read_text(p);
    CHECK(log && count_of(log, "\n") == 6 && count_of(log, "\"case\": \"ride\"") + count_of(log, "\"case\":\"ride\"") == 1,
          "results.jsonl: header + 5 images: %s", log ? log : "(none)");
    CHECK(!exists("two", "results.rank0.jsonl") && !exists("two", "results.rank1.jsonl"), "rank logs merged");
    free(o2);
    /* a 2-rank rerun computes nothing */
    o2 = eval(2, "two", images, &rc);
    CHECK(rc == 0 && strstr(o2, "(0 generated, 0 scored now)"), "rerun: rc %d: %s%s", rc, o2, out_err);
    CHECK(outputs_equal("one", "two"), "rerun outputs unchanged");
    free(o2);
    /* an interrupted 2-rank run left rank 1's log (its one image and half a line): one process resumes */
    snprintf(p, sizeof p, "%s/three", t_tmpdir()), mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/three/results.rank1.jsonl", t_tmpdir());
    FILE *f = fopen(p, "wb");
    char *ride = log ? strstr(log, "{\"case\": \"ride\"") : NULL;
    if (!ride && log)
        ride = strstr(log, "{\"case\":\"ride\"");
    if (f && log && ride) {
        fwrite(log, 1, (size_t)(strchr(log, '\n') + 1 - log), f); /* header */
        fwrite(ride, 1, (size_t)(strchr(ride, '\n') + 1 - ride), f);
        fputs("{\"case\": \"hug\", \"seed\": 1, \"ima", f);
    }
    if (f)
        fclose(f);
    o2 = eval(0, "three", images, &rc);
    CHECK(rc == 0 && strstr(o2, "(0 generated, 4 scored now)"), "resume from a rank log: rc %d: %s%s", rc, o2,
          out_err);
    CHECK(outputs_equal("one", "three"), "resumed outputs equal the single run's");
    CHECK(!exists("three", "results.rank1.jsonl"), "rank log folded into results.jsonl");
    snprintf(q, sizeof q, "%s/three/results.jsonl", t_tmpdir());
    char *log3 = t_read_text(q);
    CHECK(log3 && count_of(log3, "\n") == 6, "results.jsonl: header + 5: %s", log3 ? log3 : "");
    free(log3), free(o2), free(log), free(o1);
}

/* Rank 1's image does not decode: rank 0 says so (exit status 2), nothing hangs, rank 0's scores stay
 * in its log for a rerun. */
static void t_eval_rank_fails(void) {
    if (!mpirun[0] || !have_bench) {
        t_skip(!mpirun[0] ? "mpirun not on PATH (apt-get install openmpi-bin)" : "golden folder not found");
        return;
    }
    char images[8192], p[8192], q[8192];
    snprintf(images, sizeof images, "%s/bad_images", t_tmpdir());
    mkdir(images, 0755);
    const char *names[5] = {"hug_1.png", "hug_2.png", "ride_1.png", "sit_1.png", "sit_7.png"};
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s/images/%s", bench, names[i]);
        snprintf(q, sizeof q, "%s/%s", images, names[i]);
        if (i == 2)
            t_write_text(q, "not an image");
        else
            t_copy_file(p, q);
    }
    int rc;
    char *o = eval(2, "bad", images, &rc);
    CHECK(rc != 0 && rc != 124 && strstr(out_err, "relbooth eval: rank 1: case ride: image"),
          "rank 0 reports rank 1's failure: rc %d: %s", rc, out_err);
    CHECK(exists("bad", "results.rank0.jsonl") && !exists("bad", "metrics.json"), "rank 0's scores kept in its log");
    snprintf(p, sizeof p, "%s/bad/results.rank0.jsonl", t_tmpdir());
    char *log = t_read_text(p);
    CHECK(log && count_of(log, "\n") == 5, "rank 0 scored hug x2 and sit x2: %s", log ? log : "");
    free(log), free(o);
}

int main(int argc, char **argv) {
    (void)argc;
    t_beside_self(argv[0], "..", build, sizeof build);
    /* mpirun refuses root without these (containers, CI) */
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    t_find_on_path("mpirun", mpirun, sizeof mpirun);
    if (t_golden_path("clip_metrics")) {
        snprintf(clip, sizeof clip, "%s", t_golden_path("clip_metrics"));
        snprintf(dino, sizeof dino, "%s", t_golden_path("dino/vit"));
        snprintf(tok, sizeof tok, "%s", t_golden_path("clip_tokenizer/tokenizer"));
        make_bench();
    }
    RUN(t_world_of_one);
    RUN(t_collectives);
    RUN(t_eval_sharded);
    RUN(t_eval_rank_fails);
    return t_done();
}
