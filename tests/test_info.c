/* `relbooth info` end to end: runs the built binary (build/relbooth, found next to this test's
 * folder) on golden files and on bad files, checking exit codes, text and --json output. */
#include <jansson.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static char bin[4096];
static char out[1 << 16], err[4096];

/* Runs `relbooth info <args>`; returns the exit status, stdout in out, stderr in err. */
static int run(const char *args) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s info %s", bin, args);
    return t_run_capture(cmd, out, sizeof out, err, sizeof err);
}

static int one_error_line(const char *path) {
    char want[4200];
    snprintf(want, sizeof want, "relbooth info: %s: ", path);
    const char *nl = strchr(err, '\n');
    return !strncmp(err, want, strlen(want)) && nl && nl[1] == 0;
}

static void t_safetensors(void) {
    const char *p = t_golden_path("clip_text_l/io.safetensors");
    if (!p)
        return;
    char path[4096];
    snprintf(path, sizeof path, "%s", p);
    CHECK(run(path) == 0, "exit status (stderr: %s)", err);
    CHECK(strstr(out, "format: safetensors") && strstr(out, "  hidden_states.0  F32  [4, 77, 16]\n") &&
              strstr(out, "  input_ids  I64  [4, 77]\n"),
          "text output:\n%s", out);
    char args[4200];
    snprintf(args, sizeof args, "%s --json", path);
    REQUIRE(run(args) == 0, "--json exit status");
    json_error_t je;
    json_t *o = json_loads(out, 0, &je);
    REQUIRE(o, "--json output is not JSON: %s", je.text);
    CHECK(!strcmp(json_string_value(json_object_get(o, "format")) ?: "", "safetensors"), "format");
    json_t *ts = json_object_get(o, "tensors"), *hit = NULL;
    for (size_t i = 0; i < json_array_size(ts); i++)
        if (!strcmp(json_string_value(json_object_get(json_array_get(ts, i), "name")) ?: "", "input_ids"))
            hit = json_array_get(ts, i);
    CHECK(json_array_size(ts) == 8, "%zu tensors", json_array_size(ts));
    CHECK(hit && !strcmp(json_string_value(json_object_get(hit, "dtype")) ?: "", "I64") &&
              json_integer_value(json_array_get(json_object_get(hit, "shape"), 0)) == 4 &&
              json_integer_value(json_array_get(json_object_get(hit, "shape"), 1)) == 77,
          "input_ids entry");
    CHECK(json_is_object(json_object_get(o, "metadata")), "metadata object");
    json_decref(o);
}

static void t_torch(void) {
    const char *p = t_golden_path("keypoints_pickle/checkpoint_state_dict_module_fp16.pt");
    if (!p)
        return;
    char args[4200];
    snprintf(args, sizeof args, "%s", p);
    CHECK(run(args) == 0, "exit status (stderr: %s)", err);
    CHECK(strstr(out, "format: pytorch-zip") && strstr(out, "scalar: epoch = 6\n") &&
              strstr(out, "  state_dict.module.logit_scale  F16  []\n") &&
              strstr(out, "  state_dict.module.extra.transposed  F16  [4, 6]  view: stride [1, 4], offset 0 of 24\n"),
          "text output:\n%s", out);
    snprintf(args, sizeof args, "--json %s", p);
    REQUIRE(run(args) == 0, "--json exit status");
    json_t *o = json_loads(out, 0, NULL);
    REQUIRE(o, "--json output is not JSON");
    CHECK(json_integer_value(json_object_get(json_object_get(o, "scalars"), "epoch")) == 6, "epoch");
    CHECK(!strcmp(json_string_value(json_object_get(o, "record_prefix")) ?: "", "checkpoint_state_dict_module_fp16/"),
          "record_prefix");
    CHECK(json_array_size(json_object_get(o, "tensors")) == 8, "tensor count");
    json_decref(o);
    p = t_golden_path("keypoints_pickle/legacy_format.pth");
    snprintf(args, sizeof args, "--json %s", p);
    REQUIRE(run(args) == 0, "legacy exit status");
    o = json_loads(out, 0, NULL);
    REQUIRE(o, "legacy --json output is not JSON");
    CHECK(!strcmp(json_string_value(json_object_get(o, "format")) ?: "", "pytorch-legacy"), "legacy format");
    CHECK(json_array_size(json_object_get(o, "tensors")) == 7, "legacy tensor count");
    json_decref(o);
}

static void t_image(void) {
    const char *p = t_golden_path("clip_vision/images/img1_180x240_rgba.png");
    if (!p)
        return;
    char args[4200];
    snprintf(args, sizeof args, "%s", p);
    int rc = run(args);
    if (rc == 2 && strstr(err, "image reader not built")) {
        t_skip("image reader not linked in this build");
        return;
    }
    CHECK(rc == 0, "exit status %d (stderr: %s)", rc, err);
    CHECK(strstr(out, "format: png") && strstr(out, "size: 180x240") && strstr(out, "channels: 4"), "text:\n%s", out);
    p = t_golden_path("clip_vision/images/img0_300x200_rgb.png");
    snprintf(args, sizeof args, "--json %s", p);
    CHECK(run(args) == 0, "--json exit status");
    json_t *o = json_loads(out, 0, NULL);
    REQUIRE(o, "--json output is not JSON");
    CHECK(json_integer_value(json_object_get(o, "width")) == 300 && json_integer_value(json_object_get(o, "height")) == 200 &&
              json_integer_value(json_object_get(o, "channels")) == 3,
          "image json: %s", out);
    json_decref(o);
}

static void write_file(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(b, 1, n, f);
        fclose(f);
    }
}

static void t_bad_files(void) {
    char p[600];
    /* empty, text, truncated safetensors, hostile header, evil pickle in a legacy stream */
    static const struct {
        const char *name, *bytes;
        size_t n;
        const char *needle;
    } bad[] = {
        {"empty.safetensors", "", 0, "unrecognised"},
        {"notes.txt", "hello world, not a model\n", 25, "unrecognised"},
        {"cut.safetensors", "\x40\x00\x00\x00\x00\x00\x00\x00{\"a\":{", 15, "exceeds the file size"},
        {"overlap.safetensors",
         "\x70\x00\x00\x00\x00\x00\x00\x00{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
         "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]}}      abc",
         8 + 112 + 3, "overlap"},
        {"evil.pth",
         "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.\x80\x02M\xe9\x03.\x80\x02}q\x00X\x0d\x00\x00\x00"
         "little_endian\x88s.\x80\x02" "cos\nsystem\nq\x00X\x02\x00\x00\x00ls\x85R.",
         15 + 6 + 26 + 25, "os.system"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(p, sizeof p, "%s/%s", t_tmpdir(), bad[i].name);
        write_file(p, bad[i].bytes, bad[i].n);
        int rc = run(p);
        CHECK(rc == 2, "%s: exit status %d", bad[i].name, rc);
        CHECK(one_error_line(p) && strstr(err, bad[i].needle), "%s: stderr '%s'", bad[i].name, err);
        CHECK(out[0] == 0, "%s: printed something on stdout", bad[i].name);
    }
    snprintf(p, sizeof p, "%s/does-not-exist.pt", t_tmpdir());
    CHECK(run(p) == 2 && one_error_line(p), "missing file: %s", err);
}

static void t_usage(void) {
    CHECK(run("") == 1, "no file");
    CHECK(run("--frobnicate x") == 1, "unknown option");
    CHECK(run("a b") == 1, "two files");
    CHECK(run("--help") == 0 && strstr(out, "usage"), "help");
}

int main(int argc, char **argv) {
    (void)argc;
    t_beside_self(argv[0], "../relbooth", bin, sizeof bin);
    if (access(bin, X_OK) != 0) {
        printf("FAIL t_binary (%s not found)\n", bin);
        return 1;
    }
    RUN(t_safetensors);
    RUN(t_torch);
    RUN(t_image);
    RUN(t_bad_files);
    RUN(t_usage);
    return t_done();
}
