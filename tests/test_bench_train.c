/* `relbooth bench train` end to end on the hidden --tiny UNet (the golden unet_sdxl sizes, random
 * weights): runs the built binary (build/relbooth, next to this test's folder), parses --json and
 * checks the step's figures against each other: the total is the sum of its parts, the loss is the
 * official recipe's mse + 0.1 kml + 1e-3 cal, the recomputing run (default, with in-block CAL) gives
 * the same losses and LoRA gradient norm as the fully taped one (--no-recompute) in f32, gradients reach
 * the LoRA, and bad options are usage errors. */
#include <jansson.h>
#include <math.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static char bin[4096];
static char out[1 << 16], err[1 << 14];

/* Runs `relbooth bench train <args>`; returns the exit status, stdout in out, stderr in err. */
static int run(const char *args) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s bench train %s", bin, args);
    return t_run_capture(cmd, out, sizeof out, err, sizeof err);
}

static double num(json_t *j, const char *key) {
    json_t *v = json_object_get(j, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

/* tiny UNet attn2 count: down 1 + 2 blocks of 1 and 2 layers (x2 resnets), up 2 + 1 (x3), mid 2 */
#define TINY_ATTN2 (2 * 1 + 2 * 2 + 3 * 2 + 3 * 1 + 2)

static void t_json(void) {
    REQUIRE(run("--tiny --size 128 --json --warmup 0 -t 1") == 0, "exit status (stderr: %s)", err);
    json_error_t je;
    json_t *a = json_loads(out, 0, &je);
    REQUIRE(a && json_is_object(a), "JSON: %s (%s)", je.text, out);
    REQUIRE(run("--tiny --size 128 --json --warmup 0 --no-cal -t 1") == 0, "exit status --no-cal (stderr: %s)", err);
    json_t *b = json_loads(out, 0, &je);
    REQUIRE(b && json_is_object(b), "JSON --no-cal: %s (%s)", je.text, out);
    CHECK(!strcmp(json_string_value(json_object_get(a, "suite")), "train"), "suite");
    CHECK(num(a, "size") == 128 && num(a, "batch") == 1, "size %g batch %g", num(a, "size"), num(a, "batch"));
    CHECK(json_is_true(json_object_get(a, "recompute")) && json_is_true(json_object_get(b, "recompute")),
          "blocks recomputed with and without CAL");
    CHECK(!strcmp(json_string_value(json_object_get(a, "matmul_dtype")), "bf16"), "bf16 forward by default");
    json_t *runs[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        json_t *j = runs[i];
        double sec = num(j, "seconds"), parts = num(j, "forward_s") + num(j, "backward_s") + num(j, "optimizer_s");
        CHECK(sec > 0 && fabs(sec - parts) < 2e-3 + 1e-3 * sec, "seconds %g vs parts %g", sec, parts);
        CHECK(num(j, "peak_rss_mib") > num(j, "weights_mib") && num(j, "weights_mib") > 0, "rss %g weights %g",
              num(j, "peak_rss_mib"), num(j, "weights_mib"));
        CHECK(num(j, "lora_params") == TINY_ATTN2 * 4 * 2, "LoRA tensors %g", num(j, "lora_params"));
        double g = num(j, "grad_norm");
        CHECK(isfinite(g) && g > 0, "grad norm %g", g);
        CHECK(isfinite(num(j, "kml")) && num(j, "kml") > 0, "KML on at t = 200");
    }
    /* official recipe: loss = mse + 0.1 kml + 1e-3 cal; at 128 px (16x16 latent) every attn2 stores a map */
    double la = num(a, "mse") + 0.1 * num(a, "kml") + 1e-3 * num(a, "cal_loss");
    CHECK(fabs(num(a, "loss") - la) < 1e-4 * fabs(la), "loss %g vs %g", num(a, "loss"), la);
    CHECK(num(a, "cal_maps") == TINY_ATTN2 && isfinite(num(a, "cal_loss")), "CAL maps %g", num(a, "cal_maps"));
    CHECK(json_is_null(json_object_get(b, "cal_loss")) && num(b, "cal_maps") == 0, "no CAL with --no-cal");
    double lb = num(b, "mse") + 0.1 * num(b, "kml");
    CHECK(fabs(num(b, "loss") - lb) < 1e-4 * fabs(lb), "loss --no-cal %g vs %g", num(b, "loss"), lb);
    /* same inputs and weights (no warm-up step, so no AdamW update yet): with f32 matmuls, recomputing the
     * transformer blocks (with in-block CAL) must not change the losses or the gradients. (In bf16 mode the
     * fully taped forward runs the first blocks' self-attention, which needs no gradient, in bf16, so those
     * differ slightly.) */
    REQUIRE(run("--tiny --size 128 --json --warmup 0 --f32 -t 1") == 0, "exit status --f32 (stderr: %s)", err);
    json_t *c = json_loads(out, 0, &je);
    REQUIRE(run("--tiny --size 128 --json --warmup 0 --f32 --no-recompute -t 1") == 0, "exit status (stderr: %s)", err);
    json_t *d = json_loads(out, 0, &je);
    REQUIRE(c && d, "JSON --f32");
    CHECK(!strcmp(json_string_value(json_object_get(c, "matmul_dtype")), "f32"), "--f32");
    CHECK(json_is_false(json_object_get(d, "recompute")), "--no-recompute");
    const char *keys[5] = {"mse", "kml", "cal_loss", "loss", "grad_norm"};
    for (int i = 0; i < 5; i++) {
        double vc = num(c, keys[i]), vd = num(d, keys[i]), va = num(a, keys[i]);
        CHECK(fabs(vc - vd) <= 1e-6 * fabs(vc), "%s f32: %g (recompute) vs %g (taped)", keys[i], vc, vd);
        /* bf16 products vs f32 (L_cal, a difference of nearly equal means, is left out) */
        CHECK(i == 2 || fabs(va - vc) < 1e-2 * fabs(vc), "%s bf16 %g vs f32 %g", keys[i], va, vc);
    }
    json_decref(c);
    json_decref(d);
    json_decref(a);
    json_decref(b);
}

static void t_text_and_usage(void) {
    CHECK(run("--tiny --size 64 --warmup 0 -t 1") == 0 && strstr(out, "train step") && strstr(out, "peak RSS"),
          "text output: %s %s", out, err);
    CHECK(run("--tiny --size 100") == 1, "size not a multiple of 64");
    CHECK(run("--tiny --frobnicate") == 1, "unknown option");
    CHECK(run("--tiny -r 0") == 1, "zero reps");
    CHECK(run("--help") == 0 && strstr(out, "usage"), "help");
}

int main(int argc, char **argv) {
    (void)argc;
    t_beside_self(argv[0], "../relbooth", bin, sizeof bin);
    if (access(bin, X_OK) != 0) {
        printf("FAIL t_binary (%s not found)\n", bin);
        return 1;
    }
    RUN(t_json);
    RUN(t_text_and_usage);
    return t_done();
}
