/* relbooth generate, the command: the flag spellings of DESIGN.md section 8 (--sdxl, --image-scale, the
 * --subject/--phrase/--box triplets next to the compact IMAGE:PHRASE:BOX form), the --json summary,
 * the PNG parameters chunk, and every kind of bad input (one line on stderr, exit 2, no output file).
 * Runs build/relbooth on golden/pipeline_dreamrelation's tiny models at 64 x 64. */
#include <jansson.h>
#include <math.h>
#include <sys/wait.h>
#include <unistd.h>

#include "golden_models.h"
#include "harness.h"
#include "io/safetensors.h"

/* Paths here are short temporary and golden paths; the fixed buffers are large enough for them. */
#pragma GCC diagnostic ignored "-Wformat-truncation"

/* The golden pipeline folders link their components (as link stubs in some checkouts): make a folder
 * of real symlinks to the resolved components so that the library sees an ordinary diffusers folder.
 * (Copied from tests/test_generate.c.) */
/* a folder of real symlinks to `golden_pipeline`'s components (golden_models.h) */
static const char *pipeline_dir(const char *golden_pipeline) {
    static char dir[4096], name[512];
    snprintf(name, sizeof name, "%s%s", "cli_", strrchr(golden_pipeline, '/') + 1);
    return t_pipeline_dir(golden_pipeline, name, dir, sizeof dir);
}

static char relbooth_bin[4096];
static char out_txt[65536], err_txt[8192];
static int err_lines;

/* Runs `env relbooth generate args`; stdout and stderr are kept in out_txt / err_txt. */
static int run_cli(const char *env, const char *args) {
    char cmd[40000], of[4200], ef[4200];
    snprintf(of, sizeof of, "%s/cli_stdout.txt", t_tmpdir());
    snprintf(ef, sizeof ef, "%s/cli_stderr.txt", t_tmpdir());
    snprintf(cmd, sizeof cmd, "%s %s generate %s >%s 2>%s", env ? env : "", relbooth_bin, args, of, ef);
    int st = system(cmd);
    char *bufs[2] = {out_txt, err_txt};
    size_t caps[2] = {sizeof out_txt, sizeof err_txt};
    const char *files[2] = {of, ef};
    for (int k = 0; k < 2; k++) {
        FILE *f = fopen(files[k], "r");
        size_t got = f ? fread(bufs[k], 1, caps[k] - 1, f) : 0;
        if (f)
            fclose(f);
        bufs[k][got] = 0;
    }
    err_lines = 0;
    for (const char *c = err_txt; *c; c++)
        err_lines += *c == '\n';
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char model[4096], enc[4096], adapter[4096], lora[4096], img0[4200], img1[4200], tmp[4096];

static int setup(void) {
    const char *g = t_golden_path("pipeline_dreamrelation");
    if (!g)
        return 0;
    char gdir[4096], p[8192], r[8192];
    snprintf(gdir, sizeof gdir, "%s", g);
    snprintf(p, sizeof p, "%s/pipeline", gdir);
    t_resolve(p, r, sizeof r);
    const char *m = pipeline_dir(r);
    if (!m)
        return 0;
    snprintf(model, sizeof model, "%s", m);
    snprintf(p, sizeof p, "%s/image_encoder", gdir);
    t_resolve(p, enc, sizeof enc);
    snprintf(p, sizeof p, "%s/ms_adapter.safetensors", gdir);
    t_resolve(p, adapter, sizeof adapter);
    snprintf(p, sizeof p, "%s/pytorch_lora_weights.safetensors", gdir);
    t_resolve(p, lora, sizeof lora);
    snprintf(img0, sizeof img0, "%s/images/img0_300x200_rgb.png", enc);
    snprintf(img1, sizeof img1, "%s/images/img1_180x240_rgba.png", enc);
    snprintf(tmp, sizeof tmp, "%s", t_tmpdir());
    return 1;
}

static long file_size(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    return n;
}

static int same_file(const char *a, const char *b) {
    long n = file_size(a);
    if (n <= 0 || n != file_size(b))
        return 0;
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = 1;
    for (long i = 0; i < n && same; i++)
        same = fgetc(fa) == fgetc(fb);
    fclose(fa);
    fclose(fb);
    return same;
}

static int file_contains(const char *path, const char *needle) {
    static char buf[1 << 20];
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
    if (f)
        fclose(f);
    return n && memmem(buf, n, needle, strlen(needle)) != NULL;
}

#define COMMON "--ms-adapter %s --image-encoder %s --resampler-dim-head 8 -W 64 -H 64"

/* The triplet form with the spellings and --json, against the compact form with the old ones:
 * the same parameters give the same PNG; the summary names it and times its stages. The prompt is over
 * 77 tokens: a warning says how many were dropped. */
static void t_aliases_and_json(void) {
    if (!setup())
        return;
    char args[32768], out_a[4300], out_b[4300], prompt[1200] = "";
    for (int i = 0; i < 90; i++) /* 90 words + BOS/EOS: 92 tokens, 15 dropped */
        strcat(prompt, i ? " cat" : "cat");
    snprintf(out_a, sizeof out_a, "%s/alias_a.png", tmp);
    snprintf(out_b, sizeof out_b, "%s/alias_b.png", tmp);
    snprintf(args, sizeof args,
             "--sdxl %s -p '%s' " COMMON " --subject %s --phrase cat --box 0,0.2,0.55,0.85 --subject %s --phrase dog "
             "--box 0.5,0.25,0.95,0.9 --image-scale 0.7 --steps 2 -s 7 -n 'ugly' --cfg-scale 4 -t 2 -o %s --json",
             model, prompt, adapter, enc, img0, img1, out_a);
    int rc = run_cli(NULL, args);
    REQUIRE(rc == 0, "triplet run: exit %d: %s", rc, err_txt);
    CHECK(err_lines == 1 && strstr(err_txt, "warning") && strstr(err_txt, "92 tokens") && strstr(err_txt, "last 15"),
          "long prompt warning: %s", err_txt);
    json_error_t je;
    json_t *j = json_loads(out_txt, 0, &je);
    REQUIRE(j, "--json output is JSON (%s): %s", je.text, out_txt);
    json_t *outs = json_object_get(j, "outputs"), *sec = json_object_get(j, "seconds");
    CHECK(json_array_size(outs) == 1 && !strcmp(json_string_value(json_array_get(outs, 0)), out_a), "outputs");
    CHECK(json_integer_value(json_object_get(j, "seed")) == 7, "seed");
    CHECK(json_integer_value(json_object_get(j, "unet_steps")) == 2, "unet steps");
    CHECK(json_integer_value(json_object_get(j, "prompt_tokens")) == 92 &&
              json_integer_value(json_object_get(j, "prompt_tokens_dropped")) == 15,
          "token counts");
    double peak = json_number_value(json_object_get(j, "peak_rss_mib"));
    CHECK(peak > 1 && peak < 1 << 20, "peak RSS %g MiB", peak);
    const char *stages[] = {"text", "image", "unet_load", "denoise", "per_step", "decode", "total"};
    double v[7], sum = 0;
    for (int i = 0; i < 7; i++) {
        json_t *x = json_object_get(sec, stages[i]);
        v[i] = json_number_value(x);
        CHECK(json_is_number(x) && v[i] > 0, "seconds.%s = %g", stages[i], v[i]);
    }
    for (int i = 0; i < 6; i++)
        sum += i == 4 ? 0 : v[i];
    CHECK(fabs(v[4] * 2 - v[3]) <= 0.002 + 1e-3 * v[3], "per step %g x 2 vs denoise %g", v[4], v[3]);
    CHECK(sum <= v[6] + 0.01 && sum > 0.5 * v[6], "stages %g within total %g", sum, v[6]);
    json_decref(j);
    CHECK(file_contains(out_a, "parameters") && file_contains(out_a, "Seed: 7") &&
              file_contains(out_a, "Image scale: 0.7") && file_contains(out_a, "Subject 2: dog"),
          "PNG parameters chunk");
    /* the compact form with the old spellings: the same image */
    snprintf(args, sizeof args,
             "-m %s -p '%s' " COMMON " --subject %s:cat:0,0.2,0.55,0.85 --subject %s:dog:0.5,0.25,0.95,0.9 "
             "--scale 0.7 --steps 2 --seed 7 --negative-prompt ugly --cfg-scale 4 -o %s -q",
             model, prompt, adapter, enc, img0, img1, out_b);
    rc = run_cli(NULL, args);
    CHECK(rc == 0 && out_txt[0] == 0, "compact run: exit %d: %s", rc, err_txt);
    CHECK(same_file(out_a, out_b), "triplet and compact forms give the same PNG");
}

/* A bad-input run: exit 2, exactly one line naming `what`, no output file. */
static void expect_bad(const char *env, const char *args, const char *what, const char *label) {
    char out[4300];
    snprintf(out, sizeof out, "%s/bad.png", tmp);
    unlink(out);
    int rc = run_cli(env, args);
    CHECK(rc == 2 && err_lines == 1 && strstr(err_txt, what), "%s: exit %d, %d lines: %s", label, rc, err_lines,
          err_txt);
    CHECK(access(out, F_OK) != 0, "%s: no output file", label);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void t_bad_input(void) {
    if (!setup())
        return;
    char args[32768], base[12000], yaml[4300], fake[4300], y[16384];
    snprintf(base, sizeof base, "--sdxl %s -p 'A cat is hugging a dog.' " COMMON " --steps 1 -o %s/bad.png", model,
             adapter, enc, tmp);
    snprintf(args, sizeof args, "%s --subject %s/none.png --phrase cat --box 0,0,0.5,0.5", base, tmp);
    expect_bad(NULL, args, "none.png", "missing image");
    snprintf(fake, sizeof fake, "%s/not_an_image.png", tmp);
    write_text(fake, "this is not a PNG\n");
    snprintf(args, sizeof args, "%s --subject %s --phrase cat --box 0,0,0.5,0.5", base, fake);
    expect_bad(NULL, args, "subject 1", "unreadable image");
    snprintf(args, sizeof args, "%s --subject %s --phrase cat --box 0,0,1.5,0.5", base, img0);
    expect_bad(NULL, args, "[0, 1]", "box outside [0, 1]");
    snprintf(args, sizeof args, "%s --subject %s --phrase cat --box 0.6,0,0.5,0.5", base, img0);
    expect_bad(NULL, args, "empty", "box with x0 >= x1");
    snprintf(args, sizeof args, "%s --subject %s --phrase '' --box 0,0,0.5,0.5", base, img0);
    expect_bad(NULL, args, "phrase", "empty phrase");
    snprintf(args, sizeof args, "%s --subject %s --phrase cat --subject %s --phrase dog --box 0,0,0.5,0.5", base,
             img0, img1);
    expect_bad(NULL, args, "no --box", "a subject without a box");
    snprintf(args, sizeof args, "%s --phrase cat", base);
    expect_bad(NULL, args, "--subject", "a phrase before any subject");
    /* the YAML config: counts that differ, an unknown field */
    snprintf(yaml, sizeof yaml, "%s/bad.yaml", tmp);
    snprintf(y, sizeof y,
             "prompt: \"A cat is hugging a dog.\"\nimages_path: [\"%s\", \"%s\"]\n"
             "boxes: [[[0.0, 0.2, 0.55, 0.85], [0.5, 0.25, 0.95, 0.9]]]\nphrases: [[\"cat\"]]\n",
             img0, img1);
    write_text(yaml, y);
    snprintf(args, sizeof args, "--sdxl %s --config %s " COMMON " --steps 1 -o %s/bad.png", model, yaml, adapter, enc,
             tmp);
    expect_bad(NULL, args, "2 images but 2 boxes and 1 phrases", "YAML counts");
    snprintf(y, sizeof y,
             "prompt: \"A cat is hugging a dog.\"\nimages_path: [\"%s\"]\nboxes: [[[0.0, 0.2, 0.55, 0.85]]]\n"
             "phrases: [[\"cat\"]]\nguidance_scale: 7\n",
             img0);
    write_text(yaml, y);
    expect_bad(NULL, args, "unknown field 'guidance_scale'", "YAML unknown field");
    /* LoRAs for another architecture: keys nothing matches; UNet modules this UNet does not have */
    char lpath[4300];
    snprintf(lpath, sizeof lpath, "%s/flux_lora.safetensors", tmp);
    float a[4 * 32] = {0}, b[32 * 4] = {0};
    rb_tensor ta = {.dtype = RB_F32, .ndim = 2, .shape = {4, 32}, .stride = {32, 1}, .data = a};
    rb_tensor tb = {.dtype = RB_F32, .ndim = 2, .shape = {32, 4}, .stride = {4, 1}, .data = b};
    const char *fk[] = {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight",
                        "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight"};
    const rb_tensor *ts[] = {&ta, &tb};
    REQUIRE(rb_st_write(lpath, 2, fk, ts, 0, NULL, NULL) == RB_OK, "write LoRA: %s", rb_last_error());
    snprintf(args, sizeof args, "--sdxl %s -p x -W 64 -H 64 --steps 1 --lora %s -o %s/bad.png", model, lpath, tmp);
    expect_bad(NULL, args, "single_transformer_blocks.0.attn.to_q", "LoRA of another architecture");
    snprintf(lpath, sizeof lpath, "%s/flux_kohya.safetensors", tmp);
    const char *kk[] = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
                        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight", "double_blocks.0.img_mod.alpha"};
    REQUIRE(rb_st_write(lpath, 2, kk, ts, 0, NULL, NULL) == RB_OK, "write LoRA: %s", rb_last_error());
    snprintf(args, sizeof args, "--sdxl %s -p x -W 64 -H 64 --steps 1 --lora %s -o %s/bad.png", model, lpath, tmp);
    expect_bad(NULL, args, "double_blocks", "kohya LoRA of another architecture");
    snprintf(lpath, sizeof lpath, "%s/te_only.safetensors", tmp);
    const char *tk[] = {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
                        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"};
    REQUIRE(rb_st_write(lpath, 2, tk, ts, 0, NULL, NULL) == RB_OK, "write LoRA: %s", rb_last_error());
    snprintf(args, sizeof args, "--sdxl %s -p x -W 64 -H 64 --steps 1 --lora %s -o %s/bad.png", model, lpath, tmp);
    expect_bad(NULL, args, "only text-encoder modules", "text-encoder-only LoRA");
    snprintf(lpath, sizeof lpath, "%s/sd15_lora.safetensors", tmp);
    const char *uk[] = {"unet.down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
                        "unet.down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"};
    REQUIRE(rb_st_write(lpath, 2, uk, ts, 0, NULL, NULL) == RB_OK, "write LoRA: %s", rb_last_error());
    snprintf(args, sizeof args, "--sdxl %s -p x -W 64 -H 64 --steps 1 --lora %s -o %s/bad.png", model, lpath, tmp);
    expect_bad(NULL, args, "down_blocks.7.attentions.0", "LoRA modules this UNet lacks");
    /* an adapter file that is not MS-Diffusion's: names what is missing */
    snprintf(args, sizeof args,
             "--sdxl %s -p x --ms-adapter %s --image-encoder %s --resampler-dim-head 8 -W 64 -H 64 --steps 1 "
             "--subject %s --phrase cat --box 0,0,0.5,0.5 -o %s/bad.png",
             model, lpath, enc, img0, tmp);
    expect_bad(NULL, args, "missing tensor", "adapter of another kind");
    /* not enough memory: the message says how much was asked for and how to allow it */
    snprintf(args, sizeof args, "--sdxl %s -p x -W 64 -H 64 --steps 1 -o %s/bad.png", model, tmp);
    expect_bad("RELBOOTH_MEM_LIMIT=64M", args, "RELBOOTH_MEM_LIMIT", "memory limit");
    CHECK(strstr(err_txt, "bytes"), "the OOM message gives the size: %s", err_txt);
    /* a usage error is exit 1 */
    CHECK(run_cli(NULL, "-p x") == 1, "no model: usage error");
    CHECK(run_cli(NULL, "--sdxl m -p x --subject a.png --phrase c --box 1,2,3") == 1 && strstr(err_txt, "box"),
          "a box of 3 numbers: usage error: %s", err_txt);
}

int main(int argc, char **argv) {
    (void)argc;
    snprintf(relbooth_bin, sizeof relbooth_bin, "%s", argv[0]);
    char *slash = strrchr(relbooth_bin, '/');
    snprintf(slash ? slash + 1 : relbooth_bin, sizeof relbooth_bin - (size_t)(slash ? slash + 1 - relbooth_bin : 0),
             "../relbooth");
    RUN(t_aliases_and_json);
    RUN(t_bad_input);
    return t_done();
}
