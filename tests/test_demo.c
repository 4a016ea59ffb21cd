/* relbooth demo (tools/cmd_demo.c): the model set it writes loads with relbooth's own readers and the
 * generation gives an image; and the torch.save writer (src/io/torchfile_write.c) that writes its
 * ms_adapter.bin, read back bit-exactly by rb_torch_open. No golden files needed. */
#include <sys/wait.h>
#include <unistd.h>

#include "core/rng.h"
#include "harness.h"
#include "io/image.h"
#include "io/torchfile.h"
#include "io/torchfile_write.h"
#include "text/clip_tokenizer.h"

static char relbooth_bin[4096];

static int run_demo(const char *dir, const char *extra) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "'%s' demo -o '%s' -q %s >'%s.log' 2>&1", relbooth_bin, dir, extra, dir);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static long file_size(const char *dir, const char *name) {
    char p[8192];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

static int same_file(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        same = ca == cb;
        if (ca == EOF)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

static void t_demo(void) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/demo", t_tmpdir());
    int rc = run_demo(dir, "");
    REQUIRE(rc == 0, "relbooth demo exit %d (log %s.log)", rc, dir);
    static const char *const files[] = {
        "tiny-sdxl/model_index.json", "tiny-sdxl/scheduler/scheduler_config.json", "tiny-sdxl/tokenizer/vocab.json",
        "tiny-sdxl/tokenizer/merges.txt", "tiny-sdxl/tokenizer_2/vocab.json", "tiny-sdxl/text_encoder/config.json",
        "tiny-sdxl/text_encoder/model.safetensors", "tiny-sdxl/text_encoder_2/model.safetensors",
        "tiny-sdxl/unet/config.json", "tiny-sdxl/unet/diffusion_pytorch_model.safetensors",
        "tiny-sdxl/vae/config.json", "tiny-sdxl/vae/diffusion_pytorch_model.safetensors", "image_encoder/config.json",
        "image_encoder/model.safetensors", "image_encoder/preprocessor_config.json", "ms_adapter.bin",
        "pytorch_lora_weights.safetensors", "cat.png", "bear.png", "demo.png"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++)
        CHECK(file_size(dir, files[i]) > 0, "%s written", files[i]);

    /* the tokenizer: the demo's words are single tokens of the tiny BPE vocabulary */
    char p[8192];
    snprintf(p, sizeof p, "%s/tiny-sdxl/tokenizer", dir);
    rb_clip_tokenizer *tok;
    REQUIRE(rb_clip_tokenizer_load(&tok, p) == RB_OK, "tokenizer: %s", rb_last_error());
    int64_t ids[RB_CLIP_CONTEXT];
    REQUIRE(rb_clip_tokenize(tok, "a cat is hugging a bear", ids, NULL, NULL) == RB_OK, "%s", rb_last_error());
    /* <bos> a cat is hugging a bear <eos>: 8 tokens, then padding with <eos> */
    int n = 0;
    while (n < RB_CLIP_CONTEXT && !(n > 0 && ids[n] == ids[RB_CLIP_CONTEXT - 1]))
        n++;
    CHECK(n == 7 && ids[0] == 512 + 14 && ids[7] == 512 + 15 && ids[2] == 512 + 1, "7 tokens before <eos>: got %d (%lld %lld)",
          n, (long long)ids[0], (long long)ids[2]);
    rb_clip_tokenizer_free(tok);

    /* ms_adapter.bin: MS-Diffusion's structure, read by the restricted unpickler */
    rb_torchfile tf;
    snprintf(p, sizeof p, "%s/ms_adapter.bin", dir);
    REQUIRE(rb_torch_open(&tf, p) == RB_OK, "ms_adapter.bin: %s", rb_last_error());
    const rb_tensor *dummy = rb_torch_get(&tf, "dummy_image_tokens");
    int params = 0;
    for (int i = 0; i < tf.n; i++)
        params += tf.entries[i].is_param;
    CHECK(dummy && dummy->ndim == 3 && dummy->shape[1] == 4 && params == 1 &&
              rb_torch_get(&tf, "image_proj.latent_proj.0.weight") && rb_torch_get(&tf, "ms_adapter.1.to_k_ip.weight"),
          "adapter layout (%d tensors)", tf.n);
    rb_torch_close(&tf);

    /* the image: 128x128 RGB, not flat */
    rb_image img = {0};
    snprintf(p, sizeof p, "%s/demo.png", dir);
    REQUIRE(rb_image_load(&img, p, 3) == RB_OK, "demo.png: %s", rb_last_error());
    double sum = 0, sq = 0;
    int64_t np = (int64_t)img.width * img.height * 3;
    for (int64_t i = 0; i < np; i++)
        sum += img.data[i], sq += (double)img.data[i] * img.data[i];
    double sd = sqrt(sq / (double)np - (sum / (double)np) * (sum / (double)np));
    CHECK(img.width == 128 && img.height == 128 && sd > 1.0, "demo.png %dx%d, std %g", img.width, img.height, sd);
    rb_image_free(&img);

    /* deterministic: a second run writes the same model files */
    char dir2[4200];
    snprintf(dir2, sizeof dir2, "%s/demo2", t_tmpdir());
    REQUIRE(run_demo(dir2, "--steps 1 --size 64") == 0, "second run");
    static const char *const same[] = {"tiny-sdxl/unet/diffusion_pytorch_model.safetensors", "ms_adapter.bin",
                                       "pytorch_lora_weights.safetensors", "cat.png", "tiny-sdxl/tokenizer/vocab.json"};
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        char a[8400], b[8400];
        snprintf(a, sizeof a, "%s/%s", dir, same[i]);
        snprintf(b, sizeof b, "%s/%s", dir2, same[i]);
        CHECK(same_file(a, b), "%s identical across runs", same[i]);
    }
}

/* rb_torch_write -> rb_torch_open: names, shapes, values bit-exact (also from a non-contiguous view),
 * the Parameter flag, and 64-byte aligned storages. */
static void t_torch_write(void) {
    rb_rng g;
    rb_rng_torch_cpu(&g, 7);
    static float a[3 * 4], big[300 * 301], scalar[1] = {2.5f};
    rb_rng_randn(&g, a, 12);
    rb_rng_randn(&g, big, 300 * 301);
    rb_tensor ta = rb_tensor_wrap(a, RB_F32, 2, (int64_t[]){3, 4});
    rb_tensor tt; /* a^T: [4, 3], strides (1, 4) */
    REQUIRE(rb_view_permute(&tt, &ta, (int[]){1, 0}) == RB_OK, "permute");
    rb_tensor tb = rb_tensor_wrap(big, RB_F32, 2, (int64_t[]){300, 301});
    rb_tensor ts = rb_tensor_wrap(scalar, RB_F32, 0, NULL);
    rb_torch_item items[] = {{"sd", "a.weight", &ta, 0}, {"sd", "a_t", &tt, 0}, {"sd", "big", &tb, 0},
                             {NULL, "scale", &ts, 0}, {NULL, "tokens", &ta, 1}};
    char path[4200];
    snprintf(path, sizeof path, "%s/w.pt", t_tmpdir());
    REQUIRE(rb_torch_write(path, "w", 5, items) == RB_OK, "write: %s", rb_last_error());
    rb_torchfile f;
    REQUIRE(rb_torch_open(&f, path) == RB_OK, "open: %s", rb_last_error());
    CHECK(f.n == 5, "%d entries", f.n);
    const char *names[] = {"sd.a.weight", "sd.a_t", "sd.big", "scale", "tokens"};
    for (int i = 0; i < 5 && i < f.n; i++) {
        const rb_tensor *got = rb_torch_get(&f, names[i]), *want = items[i].t;
        int ok = got && got->ndim == want->ndim && got->dtype == RB_F32 && f.entries[i].is_param == items[i].parameter;
        for (int d = 0; ok && d < want->ndim; d++)
            ok = got->shape[d] == want->shape[d];
        int64_t numel = ok ? rb_numel(want) : 0, bad = 0;
        for (int64_t k = 0; k < numel; k++) { /* element k in row-major order of both */
            int64_t rem = k, og = 0, ow = 0;
            for (int d = want->ndim - 1; d >= 0; d--) {
                int64_t idx = rem % want->shape[d];
                rem /= want->shape[d];
                og += idx * got->stride[d], ow += idx * want->stride[d];
            }
            uint32_t x, y;
            memcpy(&x, (const float *)got->data + og, 4);
            memcpy(&y, (const float *)want->data + ow, 4);
            bad += x != y;
        }
        CHECK(ok && bad == 0, "%s: read back bit-exactly (%lld differ)", names[i], (long long)bad);
        CHECK(got && ((uintptr_t)got->data - (uintptr_t)f.map) % 64 == 0, "%s: storage 64-byte aligned", names[i]);
    }
    rb_torch_close(&f);
    CHECK(rb_torch_write(path, "w", 1, (rb_torch_item[]){{NULL, NULL, &ta, 0}}) == RB_ERR_INVALID, "unnamed");
    /* bf16 and f16 tensors keep their dtype (BFloat16Storage / HalfStorage), bits unchanged */
    static uint16_t h16[2][6];
    for (int k = 0; k < 6; k++)
        h16[0][k] = rb_f32_to_bf16(a[k]), h16[1][k] = (uint16_t)(0x3C00 + 17 * k); /* f16 1.0, 1.0166, ... */
    rb_tensor tbf = rb_tensor_wrap(h16[0], RB_BF16, 2, (int64_t[]){2, 3});
    rb_tensor thf = rb_tensor_wrap(h16[1], RB_F16, 1, (int64_t[]){6});
    REQUIRE(rb_torch_write(path, "w", 2, (rb_torch_item[]){{"sd", "bf", &tbf, 0}, {NULL, "hf", &thf, 1}}) == RB_OK,
            "write bf16/f16: %s", rb_last_error());
    REQUIRE(rb_torch_open(&f, path) == RB_OK, "open: %s", rb_last_error());
    const rb_tensor *gb = rb_torch_get(&f, "sd.bf"), *gh = rb_torch_get(&f, "hf");
    CHECK(gb && gb->dtype == RB_BF16 && gb->ndim == 2 && gb->shape[1] == 3 && !memcmp(gb->data, h16[0], 12), "bf16");
    CHECK(gh && gh->dtype == RB_F16 && gh->ndim == 1 && !memcmp(gh->data, h16[1], 12), "f16");
    rb_torch_close(&f);
    static int64_t ints[2];
    rb_tensor ti = rb_tensor_wrap(ints, RB_I64, 1, (int64_t[]){2});
    CHECK(rb_torch_write(path, "w", 1, (rb_torch_item[]){{NULL, "i", &ti, 0}}) == RB_ERR_INVALID, "i64 refused");
}

int main(int argc, char **argv) {
    (void)argc;
    t_beside_self(argv[0], "../relbooth", relbooth_bin, sizeof relbooth_bin);
    RUN(t_torch_write);
    RUN(t_demo);
    return t_done();
}
