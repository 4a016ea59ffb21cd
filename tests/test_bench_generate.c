/* `relbooth bench generate --tiny` end to end (the demo's tiny model set written to a temporary folder,
 * rb_generate with two subjects and without, each in its own process): runs the built binary
 * (build/relbooth), parses --json and checks the figures against each other and against FLOP counts
 * worked out here by hand for the tiny UNet; --keep writes once and reuses; the temporary folder is
 * removed; bad options are usage errors. */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "harness.h"

static char bin[4096];
static char out[1 << 16], err[1 << 14];

static int run(const char *env, const char *args) {
    char cmd[12288];
    snprintf(cmd, sizeof cmd, "%s %s bench generate %s", env, bin, args);
    return t_run_capture(cmd, out, sizeof out, err, sizeof err);
}

static double num(json_t *j, const char *key) {
    json_t *v = json_object_get(j, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static int n_entries(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (d)
        closedir(d);
    return n;
}

/* The masked image attention's extra FLOPs in the demo's tiny UNet at 64x64 (8x8 latent): its 17
 * attn2 (block_out 8/16/32, transformer layers 1/1/2, cross_attention_dim X = 36) are 5 at C = 16 on
 * 4x4 (down 1: 2 x 1, up 1: 3 x 1) and 12 at C = 32 on 2x2 (down 2: 2 x 2, mid 2, up 0: 3 x 2); each
 * adds to_k_ip, to_v_ip (2 x 2 I X C) and q k_ip^T, P v_ip (2 x 2 N I C) per CFG row, I = 4 + 16 n. */
static double tiny_masked_flops(int n_subjects) {
    double I = 4 + 16.0 * n_subjects, X = 36, f = 0;
    f += 5 * (4 * I * X * 16 + 4 * 16 * I * 16);
    f += 12 * (4 * I * X * 32 + 4 * 4 * I * 32);
    return 2 * f; /* uncond + cond rows */
}

static void t_json(void) {
    char env[4200], tmp[4096];
    snprintf(tmp, sizeof tmp, "%s/tmp", t_tmpdir());
    REQUIRE(mkdir(tmp, 0755) == 0, "mkdir %s", tmp);
    snprintf(env, sizeof env, "TMPDIR=%s", tmp);
    REQUIRE(run(env, "--tiny --size 64 --steps 2 --subjects 2 -t 1 --json") == 0, "exit status (stderr: %s)", err);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    REQUIRE(j && json_is_object(j), "JSON: %s (%s)", je.text, out);
    CHECK(n_entries(tmp) == 0, "the temporary model set is removed (%d entries left in %s)", n_entries(tmp), tmp);
    static const char *const keys[] = {"seconds", "step_s", "plain_step_s", "masked_overhead", "text_s", "image_s",
                                       "unet_load_s", "denoise_s", "decode_s", "gflop_step", "efficiency",
                                       "peak_rss_mib", "load1", "size", "subjects", "steps", "threads"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        CHECK(isfinite(num(j, keys[i])), "key %s is a number", keys[i]);
    CHECK(!strcmp(json_string_value(json_object_get(j, "dtype")), "bf16"), "bf16 compute by default");
    CHECK(num(j, "size") == 64 && num(j, "subjects") == 2 && num(j, "steps") == 2 && num(j, "threads") == 1, "echo");
    CHECK(json_is_false(json_object_get(j, "local_tokens")), "local tokens off by default");
    /* timings: positive; the denoising time is the first step + the later ones (step_s is their mean);
     * the stages add up to the total */
    double step = num(j, "step_s"), first = num(j, "first_step_s"), den = num(j, "denoise_s"), tot = num(j, "seconds");
    const char *parts[] = {"text_s", "image_s", "unet_load_s", "denoise_s", "decode_s"};
    double sum = 0;
    for (int i = 0; i < 5; i++) {
        CHECK(num(j, parts[i]) >= 0, "%s %g", parts[i], num(j, parts[i]));
        sum += num(j, parts[i]);
    }
    CHECK(step > 0 && num(j, "plain_step_s") > 0 && num(j, "image_s") > 0, "step %g, plain %g, image %g", step,
          num(j, "plain_step_s"), num(j, "image_s"));
    CHECK(first > 0 && num(j, "plain_first_step_s") > 0, "first steps %g, %g", first, num(j, "plain_first_step_s"));
    CHECK(den >= first + step && den <= first + step + 2e-3 + 0.05 * den, "denoise %g = first step %g + step %g", den,
          first, step);
    CHECK(tot >= sum - 5e-3 && tot <= sum + 0.05 + 0.05 * tot, "total %g vs stages %g", tot, sum);
    double over = num(j, "masked_overhead"), want = step / num(j, "plain_step_s") - 1;
    CHECK(isfinite(over) && fabs(over - want) < 1e-3 * (1 + fabs(want)), "overhead %g vs %g", over, want);
    /* FLOPs: the subject run adds exactly the masked image attention's products */
    double extra = (num(j, "gflop_step") - num(j, "plain_gflop_step")) * 1e9;
    CHECK(num(j, "plain_gflop_step") > 0 && fabs(extra - tiny_masked_flops(2)) < 2e3, "masked FLOPs %g vs %g", extra,
          tiny_masked_flops(2));
    double eff = num(j, "efficiency");
    CHECK(eff > 0 && eff < 1.5, "efficiency %g", eff);
    CHECK(fabs(eff - num(j, "gflop_step") / step / num(j, "peak_gflops")) < 0.02 * eff + 1e-3, "efficiency definition");
    /* memory: each run's own peak; every stage's peak below it */
    double rss = num(j, "peak_rss_mib");
    CHECK(rss > 1 && num(j, "plain_peak_rss_mib") > 1, "peak RSS %g / %g", rss, num(j, "plain_peak_rss_mib"));
    json_t *st = json_object_get(j, "stage_peak_rss_mib");
    const char *stages[] = {"text", "image", "unet_load", "denoise", "decode"};
    for (int i = 0; i < 5; i++) {
        double v = num(st, stages[i]);
        CHECK(v > 0 && v <= rss + 1, "stage %s peak %g (run %g)", stages[i], v, rss);
    }
    json_decref(j);
}

static void t_keep_and_plain(void) {
    char dir[4200], args[4400];
    snprintf(dir, sizeof dir, "%s/kept", t_tmpdir());
    snprintf(args, sizeof args, "--tiny --size 64 --steps 1 --subjects 1 -t 1 --json --keep %s", dir);
    REQUIRE(run("", args) == 0, "first --keep run (stderr: %s)", err);
    json_t *a = json_loads(out, 0, NULL);
    REQUIRE(run("", args) == 0, "second --keep run (stderr: %s)", err);
    json_t *b = json_loads(out, 0, NULL);
    REQUIRE(a && b, "JSON");
    CHECK(json_is_false(json_object_get(a, "models_reused")) && json_is_true(json_object_get(b, "models_reused")),
          "written once, then reused");
    CHECK(n_entries(dir) > 3, "--keep leaves the set in place");
    double extra = (num(b, "gflop_step") - num(b, "plain_gflop_step")) * 1e9;
    CHECK(fabs(extra - tiny_masked_flops(1)) < 2e3, "one subject: masked FLOPs %g vs %g", extra, tiny_masked_flops(1));
    json_decref(a);
    json_decref(b);
    /* --subjects 0: both runs are plain SDXL */
    snprintf(args, sizeof args, "--tiny --size 64 --steps 1 --subjects 0 -t 1 --json --keep %s", dir);
    REQUIRE(run("", args) == 0, "--subjects 0 (stderr: %s)", err);
    json_t *c = json_loads(out, 0, NULL);
    REQUIRE(c, "JSON");
    CHECK(num(c, "gflop_step") == num(c, "plain_gflop_step") && num(c, "image_s") == 0, "no subjects: no image stage");
    json_decref(c);
}

static void t_usage(void) {
    CHECK(run("", "--tiny --subjects 9") == 1, "too many subjects: usage error");
    CHECK(run("", "--tiny --size 100") == 1, "size not a multiple of 64");
    CHECK(run("", "--tiny --local") == 1, "--local not available yet");
    CHECK(run("", "--tiny --steps") == 1, "missing value");
    CHECK(run("", "--help") == 0 && strstr(out, "bench generate"), "--help");
}

int main(int argc, char **argv) {
    (void)argc;
    t_beside_self(argv[0], "../relbooth", bin, sizeof bin);
    RUN(t_json);
    RUN(t_keep_and_plain);
    RUN(t_usage);
    return t_done();
}
