/* relbooth demo: the whole relation-aware generation path on a fresh machine, with no downloads.
 * Writes a tiny random-weight model set in the official on-disk layouts (tools/demo_models.c), two
 * procedurally drawn subject photos, then runs DreamRelation's generation (two subjects in their boxes,
 * the RelationLoRA) and tells which real files give real images with the same command. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli.h"
#include "core/mem.h"
#include "core/status.h"
#include "demo_models.h"
#include "io/image.h"
#include "io/torchfile_write.h"
#include "pipelines/generate.h"
#include "relbooth.h"

rb_status rb_demo_write_adapter(const char *path, int n, const char *const *names, const rb_tensor *const *ts) {
    rb_torch_item *items = rb_calloc((size_t)(n ? n : 1) * sizeof *items, "adapter items");
    if (!items)
        return RB_ERR_OOM;
    int k = 0;
    /* MS-Diffusion saves {"image_proj": ..., "ms_adapter": ..., "dummy_image_tokens": ...} in that order */
    static const char *const groups[] = {"image_proj", "ms_adapter"};
    for (int g = 0; g < 2; g++) {
        size_t gl = strlen(groups[g]);
        for (int i = 0; i < n; i++)
            if (!strncmp(names[i], groups[g], gl) && names[i][gl] == '.')
                items[k++] = (rb_torch_item){groups[g], names[i] + gl + 1, ts[i], 0};
    }
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], "dummy_image_tokens"))
            items[k++] = (rb_torch_item){NULL, names[i], ts[i], 1};
    rb_status s = k == n ? rb_torch_write(path, "ms_adapter", n, items)
                         : rb_error(RB_ERR_INVALID, "%s: %d tensors outside image_proj/ms_adapter", path, n - k);
    rb_free(items);
    return s;
}

/* ---- two subject photos, drawn: a cat-like and a bear-like head on a plain background ---- */

static void disc(uint8_t *px, int W, int H, float cx, float cy, float r, const uint8_t rgb[3]) {
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r)
                memcpy(px + 3 * (y * W + x), rgb, 3);
}

static void triangle(uint8_t *px, int W, int H, const float v[6], const uint8_t rgb[3]) {
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int pos = 0, neg = 0;
            for (int e = 0; e < 3; e++) {
                const float *a = v + 2 * e, *b = v + 2 * ((e + 1) % 3);
                float c = (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0]);
                pos |= c > 0, neg |= c < 0;
            }
            if (!(pos && neg))
                memcpy(px + 3 * (y * W + x), rgb, 3);
        }
}

rb_status rb_demo_draw_subject(const char *path, int bear) {
    enum { S = 128 };
    rb_image img = {.width = S, .height = S, .channels = 3, .format = RB_IMG_PNG};
    img.data = rb_alloc(3 * S * S, "subject image");
    if (!img.data)
        return RB_ERR_OOM;
    for (int i = 0; i < S * S; i++) { /* sky-to-grass gradient */
        int y = i / S;
        img.data[3 * i] = (uint8_t)(150 + y / 4), img.data[3 * i + 1] = (uint8_t)(190 + y / 8), img.data[3 * i + 2] = 220;
    }
    const uint8_t fur[3] = {230, 140, 50}, brown[3] = {110, 70, 40}, dark[3] = {30, 25, 20}, light[3] = {200, 160, 120};
    if (!bear) { /* orange cat: pointed ears, green eyes */
        triangle(img.data, S, S, (float[]){30, 50, 42, 12, 58, 42}, fur);
        triangle(img.data, S, S, (float[]){70, 42, 86, 12, 98, 50}, fur);
        disc(img.data, S, S, 64, 70, 38, fur);
        disc(img.data, S, S, 50, 62, 6, (const uint8_t[]){60, 160, 60});
        disc(img.data, S, S, 78, 62, 6, (const uint8_t[]){60, 160, 60});
        triangle(img.data, S, S, (float[]){58, 76, 70, 76, 64, 83}, (const uint8_t[]){220, 110, 130});
    } else { /* brown bear: round ears, light muzzle */
        disc(img.data, S, S, 34, 36, 15, brown);
        disc(img.data, S, S, 94, 36, 15, brown);
        disc(img.data, S, S, 64, 70, 42, brown);
        disc(img.data, S, S, 64, 84, 16, light);
        disc(img.data, S, S, 50, 60, 5, dark);
        disc(img.data, S, S, 78, 60, 5, dark);
        disc(img.data, S, S, 64, 78, 6, dark);
    }
    rb_status s = rb_png_write(path, &img, 0, NULL, NULL);
    rb_image_free(&img);
    return s;
}

static void on_progress(void *user, const char *stage, int done, int total) {
    if (*(int *)user || strcmp(stage, "denoise"))
        return;
    fprintf(stderr, "\r  %-8s %d/%d", stage, done, total);
    if (done == total)
        fprintf(stderr, "\n");
}

static void usage(FILE *f) {
    fprintf(f, "usage: relbooth demo [-o DIR] [--steps N] [--size PX] [-q]\n\n"
               "Writes a tiny random-weight model set in the official layouts (SDXL diffusers folder, CLIP image\n"
               "encoder, MS-Diffusion ms_adapter.bin, RelationLoRA) and two drawn subject photos into DIR\n"
               "(default ./relbooth-demo), then generates one image of both subjects in their boxes with the\n"
               "RelationLoRA: the whole DreamRelation path, no downloads. The images are noise-like (random weights).\n");
}

int cmd_demo(int argc, char **argv) {
    const char *out = "relbooth-demo";
    int steps = 4, size = 128, quiet = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return RB_EXIT_OK;
        } else if (!strcmp(argv[i], "-q")) {
            quiet = 1;
        } else if (i + 1 < argc && !strcmp(argv[i], "-o")) {
            out = argv[++i];
        } else if (i + 1 < argc && !strcmp(argv[i], "--steps")) {
            steps = atoi(argv[++i]);
        } else if (i + 1 < argc && !strcmp(argv[i], "--size")) {
            size = atoi(argv[++i]);
        } else {
            fprintf(stderr, "relbooth demo: unknown or incomplete option '%s'\n", argv[i]);
            usage(stderr);
            return RB_EXIT_USAGE;
        }
    }
    if (steps < 1 || steps > 100 || size < 64 || size > 1024 || size % 8) {
        fprintf(stderr, "relbooth demo: --steps 1..100, --size 64..1024 (multiple of 8)\n");
        return RB_EXIT_USAGE;
    }
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "relbooth demo: cannot create %s: %s\n", out, strerror(errno));
        return RB_EXIT_FAIL;
    }
    struct timespec t0, t1, t2;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (!quiet)
        printf("== writing a tiny random-weight model set into %s/\n", out);
    rb_status s = rb_demo_write_models(out, 42);
    char cat[4200], bear[4200], png[4200], model[4200], adapter[4200], enc[4200], lora[4200];
    snprintf(cat, sizeof cat, "%s/cat.png", out);
    snprintf(bear, sizeof bear, "%s/bear.png", out);
    if (s == RB_OK && (s = rb_demo_draw_subject(cat, 0)) == RB_OK)
        s = rb_demo_draw_subject(bear, 1);
    if (s != RB_OK)
        return cli_fail("demo");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    snprintf(model, sizeof model, "%s/tiny-sdxl", out);
    snprintf(adapter, sizeof adapter, "%s/ms_adapter.bin", out);
    snprintf(enc, sizeof enc, "%s/image_encoder", out);
    snprintf(lora, sizeof lora, "%s/pytorch_lora_weights.safetensors", out);
    snprintf(png, sizeof png, "%s/demo.png", out);

    rb_gen_params p;
    rb_gen_params_init(&p);
    p.model = model, p.ms_adapter = adapter, p.image_encoder = enc;
    p.resampler_dim_head = DEMO_RESAMPLER_DIM_HEAD;
    p.prompt = "a cat is hugging a bear";
    p.subjects[0] = (rb_subject){cat, "cat", {0.05f, 0.2f, 0.55f, 0.9f}};
    p.subjects[1] = (rb_subject){bear, "bear", {0.45f, 0.15f, 0.95f, 0.9f}};
    p.n_subjects = 2;
    p.loras[0] = (rb_lora_ref){lora, 1.0f}, p.n_loras = 1;
    p.width = p.height = size, p.steps = steps;
    p.arena_bytes = (size_t)512 << 20;
    p.progress = on_progress, p.user = &quiet;
    if (!quiet)
        printf("== relbooth generate: \"%s\", cat in [%g %g %g %g], bear in [%g %g %g %g], RelationLoRA\n", p.prompt,
               p.subjects[0].box[0], p.subjects[0].box[1], p.subjects[0].box[2], p.subjects[0].box[3],
               p.subjects[1].box[0], p.subjects[1].box[1], p.subjects[1].box[2], p.subjects[1].box[3]);
    rb_image img;
    if (rb_generate(&p, &img) != RB_OK)
        return cli_fail("demo");
    char params[4096];
    rb_gen_params_describe(&p, p.seed, params, sizeof params);
    const char *key = "parameters", *val = params;
    s = rb_png_write(png, &img, 1, &key, &val);
    rb_image_free(&img);
    if (s != RB_OK)
        return cli_fail("demo");
    clock_gettime(CLOCK_MONOTONIC, &t2);
    double tw = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    double tg = (double)(t2.tv_sec - t1.tv_sec) + 1e-9 * (double)(t2.tv_nsec - t1.tv_nsec);
    printf("wrote %s (%dx%d; models written in %.1f s, generated in %.1f s)\n", png, size, size, tw, tg);
    if (quiet)
        return RB_EXIT_OK;
    printf("\nThe same command gave it (random weights, so the picture is noise-like):\n"
           "  relbooth generate -m %s --ms-adapter %s --image-encoder %s --resampler-dim-head %d \\\n"
           "    --lora %s:1.0 -p \"%s\" \\\n"
           "    --subject %s:cat:0.05,0.2,0.55,0.9 --subject %s:bear:0.45,0.15,0.95,0.9 \\\n"
           "    -W %d -H %d --steps %d -o %s\n",
           model, adapter, enc, DEMO_RESAMPLER_DIM_HEAD, lora, p.prompt, cat, bear, size, size, steps, png);
    printf("\nFor real images, download and pass instead:\n"
           "  -m             stabilityai/stable-diffusion-xl-base-1.0   (the diffusers folder)\n"
           "  --ms-adapter   ms_adapter.bin from doge1516/MS-Diffusion\n"
           "  --image-encoder laion/CLIP-ViT-bigG-14-laion2B-39B-b160k (config.json, model.safetensors,\n"
           "                 preprocessor_config.json); --resampler-dim-head 64 (the default)\n"
           "  --lora         a RelationLoRA of QingyuShi/DreamRelation (<relation>/pytorch_lora_weights.safetensors)\n"
           "  --local-encoder DreamRelation's local image encoder epoch_6.pt (optional: local tokens)\n"
           "and drop -W/-H/--steps (1024x1024, 30 steps). `relbooth generate --help` lists every option.\n");
    return RB_EXIT_OK;
}
