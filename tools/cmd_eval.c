/* relbooth eval MANIFEST -o OUT (--generate --model DIR ... | --images DIR) --clip DIR [--dino DIR]:
 * generates or finds every case's images, scores them (CLIP-T, CLIP-R, CLIP-I, DINO) and writes
 * OUT/metrics.json, OUT/cases.csv and OUT/report.html; a rerun skips finished images (docs/eval.md).
 * Under `mpirun -np N` the ranks share the cases and rank 0 writes the outputs (docs/distributed.md).
 * Exit status: 0 ok, 1 usage, 2 bad input or failure (one line "relbooth eval: <problem>" on stderr). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/dist.h"
#include "pipelines/eval.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: relbooth eval MANIFEST -o OUT (--generate --model DIR [generation options] | --images DIR)\n"
            "                     --clip DIR [--dino DIR] [options]\n"
            "  MANIFEST             RelationBench prompts.json (a JSON array) or our JSON form (docs/eval.md)\n"
            "  -o, --output OUT     output folder: metrics.json, cases.csv, report.html, results.jsonl, images/\n"
            "  --root DIR           RelationBench: the folder holding the entries' \"sub1\" folders\n"
            "                       (default: the manifest's folder)\n"
            "  --lora-dir DIR       RelationBench: per-entry LoRA DIR/<model>/pytorch_lora_weights.safetensors\n"
            "  --images DIR         score the images in DIR, named <case id>_<seed>.png\n"
            "  --generate           generate the images into OUT/images (needs --model)\n"
            "  --model DIR          diffusers SDXL folder\n"
            "  --ms-adapter FILE    MS-Diffusion ms_adapter.bin / .safetensors (cases with subjects)\n"
            "  --image-encoder DIR  CLIP vision folder for the adapter\n"
            "  --resampler-dim-head N   adapter resampler head width (default 64)\n"
            "  --lora PATH[:SCALE]  LoRA for every case (repeatable)\n"
            "  --steps N  -W N  -H N  --cfg-scale F  --ip-scale F  --seed S   (defaults: 30, 1024, 1024, 5, 0.6, 42)\n"
            "  --bf16               bf16 matrix products (generation and scoring)\n"
            "  --seeds N|A,B,...    N seeds from --seed on, or this list (default: --seed; with --images every\n"
            "                       seed found)\n"
            "  --clip DIR           transformers CLIPModel folder (openai/clip-vit-large-patch14)\n"
            "  --clip-tokenizer DIR vocab.json + merges.txt when not in the CLIP folder\n"
            "  --dino DIR           ViT/DINOv2 folder (facebook/dino-vits16); without it no DINO score\n"
            "  --dino-pool cls|mean DINO embedding: [CLS] (paper, default) or token mean (public reproduction)\n"
            "  --convention raw|x100|w2.5   score units (default x100, the paper's tables)\n"
            "  -q, --quiet          no progress lines\n");
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "relbooth eval: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    usage(stderr);
    return RB_EXIT_USAGE;
}

static int parse_int(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return 0;
    *out = v;
    return 1;
}

static int parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v != v)
        return 0;
    *out = (float)v;
    return 1;
}

int cmd_eval(int argc, char **argv) {
    static rb_eval_params p;
    rb_eval_params_init(&p);
    p.log = stderr;
    const char *seeds = NULL;
    int generate = 0;
    static char lora_paths[RB_MAX_LORAS][4096];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEEDS_VALUE()                                  \
    do {                                               \
        if (!v)                                        \
            return usage_error("%s needs a value", a); \
        i++;                                           \
    } while (0)
        long n;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return RB_EXIT_OK;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            NEEDS_VALUE(); p.out_dir = v;
        } else if (!strcmp(a, "--root")) {
            NEEDS_VALUE(); p.root = v;
        } else if (!strcmp(a, "--lora-dir")) {
            NEEDS_VALUE(); p.lora_dir = v;
        } else if (!strcmp(a, "--images")) {
            NEEDS_VALUE(); p.images_dir = v;
        } else if (!strcmp(a, "--generate")) {
            generate = 1;
        } else if (!strcmp(a, "--model")) {
            NEEDS_VALUE(); p.gen.model = v;
        } else if (!strcmp(a, "--ms-adapter")) {
            NEEDS_VALUE(); p.gen.ms_adapter = v;
        } else if (!strcmp(a, "--image-encoder")) {
            NEEDS_VALUE(); p.gen.image_encoder = v;
        } else if (!strcmp(a, "--resampler-dim-head")) {
            NEEDS_VALUE();
            if (!parse_int(v, 1, 4096, &n))
                return usage_error("bad --resampler-dim-head '%s'", v);
            p.gen.resampler_dim_head = (int)n;
        } else if (!strcmp(a, "--lora")) {
            NEEDS_VALUE();
            if (p.gen.n_loras == RB_MAX_LORAS)
                return usage_error("%s: too many LoRAs", a);
            if (strlen(v) >= sizeof lora_paths[0])
                return usage_error("--lora path too long: %s", v);
            char *path = lora_paths[p.gen.n_loras];
            strcpy(path, v);
            float scale = 1.0f;
            char *colon = strrchr(path, ':');
            if (colon && parse_float(colon + 1, &scale))
                *colon = 0;
            p.gen.loras[p.gen.n_loras++] = (rb_lora_ref){path, scale};
        } else if (!strcmp(a, "--steps")) {
            NEEDS_VALUE();
            if (!parse_int(v, 1, 1000, &n))
                return usage_error("bad --steps '%s'", v);
            p.gen.steps = (int)n;
        } else if (!strcmp(a, "-W") || !strcmp(a, "--width") || !strcmp(a, "-H") || !strcmp(a, "--height")) {
            NEEDS_VALUE();
            if (!parse_int(v, 8, 8192, &n))
                return usage_error("bad image size '%s'", v);
            *(a[1] == 'W' || a[2] == 'w' ? &p.gen.width : &p.gen.height) = (int)n;
        } else if (!strcmp(a, "--cfg-scale")) {
            NEEDS_VALUE();
            if (!parse_float(v, &p.gen.guidance))
                return usage_error("bad --cfg-scale '%s'", v);
        } else if (!strcmp(a, "--ip-scale")) {
            NEEDS_VALUE();
            if (!parse_float(v, &p.gen.ip_scale))
                return usage_error("bad --ip-scale '%s'", v);
        } else if (!strcmp(a, "-s") || !strcmp(a, "--seed")) {
            NEEDS_VALUE();
            char *end;
            errno = 0;
            p.gen.seed = strtoull(v, &end, 10);
            if (errno || end == v || *end)
                return usage_error("bad --seed '%s'", v);
        } else if (!strcmp(a, "--seeds")) {
            NEEDS_VALUE(); seeds = v;
        } else if (!strcmp(a, "--bf16")) {
            p.gen.compute = RB_BF16, p.metrics.matmul_dtype = RB_BF16;
        } else if (!strcmp(a, "--clip")) {
            NEEDS_VALUE(); p.metrics.clip_dir = v;
        } else if (!strcmp(a, "--clip-tokenizer")) {
            NEEDS_VALUE();
            p.metrics.tokenizer_dir = v;
        } else if (!strcmp(a, "--dino")) {
            NEEDS_VALUE(); p.metrics.dino_dir = v;
        } else if (!strcmp(a, "--dino-pool")) {
            NEEDS_VALUE();
            if (strcmp(v, "cls") && strcmp(v, "mean"))
                return usage_error("--dino-pool is cls or mean, not '%s'", v);
            p.metrics.dino_pool = !strcmp(v, "mean") ? RB_DINO_POOL_MEAN : RB_DINO_POOL_CLS;
        } else if (!strcmp(a, "--convention")) {
            NEEDS_VALUE();
            if (!strcmp(v, "raw"))
                p.scale = RB_SCORE_COSINE;
            else if (rb_score_scale_parse(v, &p.scale) != RB_OK)
                return usage_error("--convention is raw, x100 or w2.5, not '%s'", v);
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            p.log = NULL;
        } else if (a[0] == '-' && a[1]) {
            return usage_error("unknown option '%s'", a);
        } else if (p.manifest) {
            return usage_error("unexpected argument '%s'", a);
        } else {
            p.manifest = a;
        }
#undef NEEDS_VALUE
    }
    if (!p.manifest)
        return usage_error("%s", "missing MANIFEST");
    if (!p.out_dir)
        return usage_error("%s", "missing -o OUT");
    if (!p.metrics.clip_dir)
        return usage_error("%s", "missing --clip DIR (the scoring CLIP model)");
    if (generate == !!p.images_dir)
        return usage_error("%s", "give exactly one of --generate and --images DIR");
    if (generate && !p.gen.model)
        return usage_error("%s", "--generate needs --model DIR");
    if (seeds) {
        long n;
        if (!strchr(seeds, ',') && parse_int(seeds, 1, RB_EVAL_MAX_SEEDS, &n)) {
            for (long k = 0; k < n; k++)
                p.seeds[k] = p.gen.seed + (uint64_t)k;
            p.n_seeds = (int)n;
        } else {
            for (const char *q = seeds; *q;) {
                char *end;
                errno = 0;
                unsigned long long s = strtoull(q, &end, 10);
                if (errno || end == q || (*end && *end != ',') || p.n_seeds == RB_EVAL_MAX_SEEDS)
                    return usage_error("--seeds is a count (1..64) or a list like 1,2,3, not '%s'", seeds);
                p.seeds[p.n_seeds++] = s;
                q = *end ? end + 1 : end;
            }
        }
    }
    /* under mpirun every rank runs this; the cases are shared out (docs/distributed.md) */
    if (rb_dist_init(NULL, NULL) != RB_OK)
        return cli_fail("eval");
    rb_eval_stats st;
    rb_status s = rb_eval_run(&p, &st);
    int rank = rb_dist_rank();
    if (rb_dist_finalize() != RB_OK && s == RB_OK)
        s = RB_ERR_IO;
    if (s != RB_OK)
        return cli_fail("eval");
    if (rank != 0)
        return RB_EXIT_OK; /* rank 0 prints the result */
    printf("%d cases, %d images (%d generated, %d scored now)\n", st.cases, st.images, st.generated, st.scored);
    const char *fmt = p.scale == RB_SCORE_X100 ? "%s %.2f  " : "%s %.4f  ";
    const char *names[4] = {"CLIP-T", "CLIP-R", "CLIP-I", "DINO"};
    double v[4] = {st.clip_t, st.clip_r, st.clip_i, st.dino};
    for (int k = 0; k < 4; k++) {
        if (v[k] == v[k])
            printf(fmt, names[k], v[k]);
        else
            printf("%s -  ", names[k]);
    }
    printf("(%s = %s)\n%s/metrics.json, %s/cases.csv, %s/report.html\n", rb_score_scale_name(p.scale),
           rb_score_scale_formula(p.scale), p.out_dir, p.out_dir, p.out_dir);
    return RB_EXIT_OK;
}
