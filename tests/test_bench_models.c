/* `relbooth bench unet|vae|text|open` end to end on tiny configs (--tiny: the full-size runs take
 * seconds to minutes and gigabytes, see docs/bench.md): runs the built binary (build/relbooth, next
 * to this test's folder), checks exit codes, that --json prints one valid object with sane values,
 * and properties of the FLOP counts (linear in the batch, the text count against the formula). */
#include <jansson.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static char bin[4096];
static char out[1 << 16], err[4096];

/* Runs `relbooth bench <args>`; returns the exit status, stdout in out, stderr in err. */
static int run(const char *args) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s bench %s", bin, args);
    return t_run_capture(cmd, out, sizeof out, err, sizeof err);
}

static double num(json_t *j, const char *key) {
    json_t *v = json_object_get(j, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

/* runs args, parses stdout as one JSON object with the common keys; NULL on failure (CHECKs say why) */
static json_t *run_json(const char *args, const char *bench) {
    int rc = run(args);
    CHECK(rc == 0, "%s: exit %d: %s", args, rc, err);
    if (rc != 0)
        return NULL;
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    CHECK(j && json_is_object(j), "%s: not one JSON object (%s): %s", args, je.text, out);
    if (!j || !json_is_object(j))
        return json_decref(j), NULL;
    CHECK(!strcmp(json_string_value(json_object_get(j, "bench")), bench), "%s: bench name", args);
    double s = num(j, "seconds"), rss = num(j, "peak_rss_mib");
    CHECK(s > 0 && s < 60, "%s: seconds %g", args, s);
    CHECK(rss > 1 && rss < 4096, "%s: peak_rss_mib %g", args, rss);
    return j;
}

static void check_compute(json_t *j, const char *what) {
    double gf = num(j, "gflop"), eff = num(j, "efficiency"), peak = num(j, "peak_gflops");
    CHECK(gf > 0, "%s: gflop %g", what, gf);
    CHECK(peak > 0, "%s: peak %g", what, peak);
    /* efficiency = gflop / seconds / peak (as printed, rounded) */
    CHECK(fabs(eff - gf / num(j, "seconds") / peak) <= 1e-3 + 0.02 * eff, "%s: efficiency %g", what, eff);
}

static void t_unet(void) {
    json_t *a = run_json("unet --arch tiny --latent 8 --batch 1  -r 1 --json", "unet");
    json_t *b = run_json("unet --arch tiny --latent 8 --batch 2 --dtype f32  -r 1 --json", "unet");
    if (a && b) {
        check_compute(a, "unet");
        check_compute(b, "unet f32");
        CHECK(!strcmp(json_string_value(json_object_get(b, "dtype")), "f32"), "dtype");
        /* every product is per sample: FLOPs are exactly linear in the batch */
        double g1 = num(a, "gflop"), g2 = num(b, "gflop");
        CHECK(fabs(g2 - 2 * g1) <= 0.011 + 1e-3 * g2, "batch 2 %g vs 2 x batch 1 %g", g2, g1);
        CHECK(num(a, "weights_mib") > 1 && num(a, "weights_mib") < 64, "weights_mib %g", num(a, "weights_mib"));
    }
    json_decref(a), json_decref(b);
}

static void t_vae(void) {
    json_t *j = run_json("vae --decode --tiny --size 64 -r 1 --json", "vae_decode");
    if (j) {
        check_compute(j, "vae");
        CHECK(num(j, "size") == 64, "size");
    }
    json_decref(j);
}

/* tiny encoders (77 tokens): 2 T layers (4D^2 + 2DF + 2TD) each, + 2 D P for bigG's projection */
static void check_text(json_t *j) {
    check_compute(j, "text");
    double T = 77, want = 2 * T * 2 * (4 * 64 * 64 + 2 * 64 * 128 + 2 * T * 64) +
                          2 * T * 3 * (4 * 64 * 64 + 2 * 64 * 256 + 2 * T * 64) + 2 * 64 * 32;
    CHECK(fabs(num(j, "gflop") - want * 1e-9) < 0.006, "text gflop %g, want %g", num(j, "gflop"), want * 1e-9);
}

static void t_text(void) {
    CHECK(run("text --tiny --tokenizer /nonexistent-dir --json") == 2 && strstr(err, "nonexistent-dir"),
          "a missing tokenizer folder given explicitly fails: %s", err);
    CHECK(run("text --tiny --json stray") == 1, "stray argument rejected");
    /* no vocab found: the tokenizer part is skipped, reported as null */
    json_t *j;
    setenv("RELBOOTH_GOLDEN", "/nonexistent-golden", 1);
    j = run_json("text --tiny -r 1 --json", "text");
    unsetenv("RELBOOTH_GOLDEN");
    if (j) {
        check_text(j);
        CHECK(json_is_null(json_object_get(j, "tokenizer_s")), "no vocab: tokenizer_s null");
    }
    json_decref(j);
}

static void t_text_tokenizer(void) {
    const char *tok = t_golden_path("clip_tokenizer");
    if (!tok)
        return;
    char args[4300];
    snprintf(args, sizeof args, "text --tiny -r 1 --json --tokenizer %s", tok);
    json_t *j = run_json(args, "text");
    if (j) {
        check_text(j);
        double t = num(j, "tokenizer_s");
        CHECK(t > 0 && t < 1, "tokenizer_s %g", t);
    }
    json_decref(j);
}

static void t_open(void) {
    json_t *j = run_json("open --synthetic --tiny --json", "open");
    if (j) {
        CHECK(num(j, "tensors") > 400, "tensors %g", num(j, "tensors")); /* every UNet parameter */
        CHECK(num(j, "gib") > 0.001, "gib %g", num(j, "gib"));
        CHECK(num(j, "cold_open_s") > 0 && num(j, "warm_open_s") > 0, "open times");
    }
    json_decref(j);
}

static void t_open_file(void) {
    const char *f = t_golden_path("unet_sdxl/io.safetensors");
    if (!f)
        return;
    char args[4300];
    snprintf(args, sizeof args, "open %s --json", f);
    json_t *j = run_json(args, "open");
    if (j)
        CHECK(num(j, "tensors") >= 1, "tensors %g", num(j, "tensors"));
    json_decref(j);
}

static void t_usage(void) {
    CHECK(run("unet --help") == 0 && strstr(out, "usage"), "help");
    CHECK(run("unet --arch sd15") == 1 && strstr(err, "--arch"), "unknown arch: %s", err);
    CHECK(run("unet --latent 7") == 1, "latent not a multiple of 8");
    CHECK(run("vae --dtype f16") == 1, "dtype");
    CHECK(run("open") == 1, "open needs FILE or --synthetic");
    CHECK(run("open /nonexistent.safetensors") == 2 && strstr(err, "nonexistent"), "missing file: %s", err);
    CHECK(run("nosuch") == 1 && strstr(err, "unet"), "unknown suite lists the model suites");
}

int main(int argc, char **argv) {
    (void)argc;
    t_beside_self(argv[0], "../relbooth", bin, sizeof bin);
    if (access(bin, X_OK) != 0) {
        printf("FAIL t_binary (%s not found)\n", bin);
        return 1;
    }
    RUN(t_usage);
    RUN(t_unet);
    RUN(t_vae);
    RUN(t_text);
    RUN(t_text_tokenizer);
    RUN(t_open);
    RUN(t_open_file);
    return t_done();
}
