/* relbooth generate: SDXL text-to-image, and relation-aware customized generation (DreamRelation). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "pipelines/dr_config.h"
#include "pipelines/generate.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: relbooth generate -m MODEL_DIR -p PROMPT [options]\n"
            "       relbooth generate -m MODEL_DIR --config DREAMRELATION.yaml --ms-adapter ms_adapter.bin\n"
            "                         --image-encoder CLIP_VISION_DIR [options]\n"
            "\n"
            "  -m, --model DIR|FILE     SDXL in the diffusers layout (model_index.json, unet/, vae/, ...), or one\n"
            "                           original single-file checkpoint (.safetensors) with --tokenizers\n"
            "      --tokenizers DIR     for a single file: a folder with tokenizer/ and tokenizer_2/ (and optionally\n"
            "                           scheduler/); single files hold no tokenizers\n"
            "      --model-configs DIR  for a single file: {unet,vae,text_encoder,text_encoder_2}/config.json overriding\n"
            "                           the configs detected from tensor shapes\n"
            "  -p, --prompt TEXT        the prompt, with the relation (\"A cat is hugging a dog.\")\n"
            "  -n, --negative-prompt T  default with subjects: \"%s\";\n"
            "                           without: none (zero embeddings, as SDXL); --negative-prompt \"\" encodes \"\"\n"
            "  -o, --output FILE.png    default output.png; with -b N: FILE_0.png ... FILE_{N-1}.png\n"
            "  -W, --width N, -H, --height N   default 1024 x 1024 (multiples of 8)\n"
            "      --steps N            default 30\n"
            "      --cfg-scale G        guidance, default 5.0\n"
            "  -s, --seed N             default 42\n"
            "      --rng cuda|cpu       noise as torch's CUDA (default, as the official pipelines) or CPU generator\n"
            "      --sampler NAME       euler (default), euler_a, dpmpp_2m;  --karras for Karras sigmas\n"
            "  -b, --batch-count N      images, one after another\n"
            "      --lora PATH[:SCALE]  a LoRA (RelationLoRA, any diffusers/PEFT/kohya file); repeatable\n"
            "  subjects (DreamRelation / MS-Diffusion):\n"
            "      --subject IMAGE:PHRASE:x0,y0,x1,y1   reference photo, its phrase, its box in [0, 1]; repeatable\n"
            "      --config FILE.yaml   DreamRelation's inference config (prompt, images_path, boxes, phrases, lora_weights)\n"
            "      --ms-adapter FILE    MS-Diffusion ms_adapter.bin (or .safetensors)\n"
            "      --image-encoder DIR  CLIP-ViT-bigG-14 vision folder (config.json, model.safetensors, preprocessor_config.json)\n"
            "      --local-encoder FILE DreamRelation's CLIPSelf epoch_6.pt: adds 16 local tokens per subject\n"
            "      --official-pooling   pool every subject's local tokens from the first image, as the released code\n"
            "      --scale GAMMA        image-attention scale, default 0.6\n"
            "      --auto-layout        MS-Diffusion's automatic layout: after --auto-layout-start steps (5) each\n"
            "                           subject's region comes from its phrase's text attention instead of its box\n"
            "      --ms-diffusion       MS-Diffusion conventions: references not resized to 512 first\n"
            "      --resampler-dim-head N   head width of the adapter's resampler (64 for the released one)\n"
            "  -t, --threads N          default: all cores\n"
            "      --bf16               bf16 matrix products (f32 accumulation)\n"
            "      --json               print a JSON summary instead of text\n"
            "  -q, --quiet              no progress\n",
            rb_default_negative_prompt);
}

typedef struct progress_state {
    int quiet, tty;
    double start, stage_start;
    const char *last;
} progress_state;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One status line on a terminal (rewritten in place, with an ETA while denoising); nothing in logs. */
static void on_progress(void *user, const char *stage, int done, int total) {
    progress_state *ps = user;
    if (ps->quiet || !ps->tty)
        return;
    if (ps->last != stage) {
        ps->last = stage;
        ps->stage_start = now();
    }
    double el = now() - ps->stage_start;
    if (!strcmp(stage, "denoise") && done > 0) {
        double eta = el / done * (total - done);
        fprintf(stderr, "\r%-8s %3d/%-3d  %6.1fs elapsed, ETA %6.1fs   ", stage, done, total, el, eta);
    } else {
        fprintf(stderr, "\r%-8s %3d/%-3d  %6.1fs elapsed              ", stage, done, total, now() - ps->start);
    }
    if (done == total && !strcmp(stage, "denoise"))
        fprintf(stderr, "\n");
}

static volatile int cancelled;
static void on_signal(int sig) {
    (void)sig;
    cancelled = 1;
}

static int parse_subject(const char *arg, rb_subject *s) {
    /* IMAGE:PHRASE:x0,y0,x1,y1 (the image path may itself contain ':', so split from the right) */
    const char *last = strrchr(arg, ':');
    if (!last)
        return 0;
    const char *mid = last - 1;
    while (mid > arg && *mid != ':')
        mid--;
    if (mid <= arg)
        return 0;
    static char store[RB_MAX_SUBJECTS][2][4096];
    static int used;
    if (used >= RB_MAX_SUBJECTS)
        return 0;
    snprintf(store[used][0], sizeof store[used][0], "%.*s", (int)(mid - arg), arg);
    snprintf(store[used][1], sizeof store[used][1], "%.*s", (int)(last - mid - 1), mid + 1);
    char tail;
    if (sscanf(last + 1, "%f,%f,%f,%f%c", &s->box[0], &s->box[1], &s->box[2], &s->box[3], &tail) != 4)
        return 0;
    s->image = store[used][0];
    s->phrase = store[used][1];
    used++;
    return 1;
}

static int parse_lora(const char *arg, rb_lora_ref *l) {
    static char store[RB_MAX_LORAS][4096];
    static int used;
    if (used >= RB_MAX_LORAS)
        return 0;
    snprintf(store[used], sizeof store[used], "%s", arg);
    l->scale = 1.0f;
    char *colon = strrchr(store[used], ':');
    if (colon) {
        char *end;
        float v = strtof(colon + 1, &end);
        if (*end == 0 && end != colon + 1) {
            *colon = 0;
            l->scale = v;
        }
    }
    l->path = store[used++];
    return 1;
}

static int parse_int(const char *s, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi)
        return 0;
    *out = (int)v;
    return 1;
}

static int parse_float(const char *s, float *out) {
    char *end;
    float v = strtof(s, &end);
    if (*end || end == s || v != v)
        return 0;
    *out = v;
    return 1;
}

static void output_name(char *out, size_t n, const char *base, int i, int count) {
    if (count == 1) {
        snprintf(out, n, "%s", base);
        return;
    }
    const char *dot = strrchr(base, '.');
    if (!dot || strchr(dot, '/'))
        dot = base + strlen(base);
    snprintf(out, n, "%.*s_%d%s", (int)(dot - base), base, i, dot);
}

int cmd_generate(int argc, char **argv) {
    rb_gen_params p;
    rb_gen_params_init(&p);
    p.negative_prompt = NULL;
    const char *output = "output.png", *config = NULL;
    int negative_given = 0, json = 0, quiet = 0, threads = 0;
    uint64_t seed = p.seed;
    static rb_dr_config dr;
#define NEED_ARG()                                                             \
    do {                                                                       \
        if (i + 1 >= argc) {                                                   \
            fprintf(stderr, "relbooth generate: %s needs a value\n", argv[i]); \
            return RB_EXIT_USAGE;                                              \
        }                                                                      \
    } while (0)
#define BAD(what)                                                                        \
    do {                                                                                 \
        fprintf(stderr, "relbooth generate: invalid %s '%s'\n", what, argv[i]);          \
        return RB_EXIT_USAGE;                                                            \
    } while (0)
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return RB_EXIT_OK;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            quiet = 1;
        } else if (!strcmp(a, "--karras")) {
            p.karras = 1;
        } else if (!strcmp(a, "--bf16")) {
            p.compute = RB_BF16;
        } else if (!strcmp(a, "--official-pooling")) {
            p.official_pooling = 1;
        } else if (!strcmp(a, "--auto-layout")) {
            p.auto_layout = 1;
        } else if (!strcmp(a, "--ms-diffusion")) {
            p.ref_resize = 0;
        } else {
            NEED_ARG();
            const char *v = argv[++i];
            if (!strcmp(a, "-m") || !strcmp(a, "--model"))
                p.model = v;
            else if (!strcmp(a, "-p") || !strcmp(a, "--prompt"))
                p.prompt = v;
            else if (!strcmp(a, "-n") || !strcmp(a, "--negative-prompt"))
                p.negative_prompt = v, negative_given = 1;
            else if (!strcmp(a, "-o") || !strcmp(a, "--output"))
                output = v;
            else if (!strcmp(a, "-W") || !strcmp(a, "--width")) {
                if (!parse_int(v, 8, 8192, &p.width))
                    BAD("width");
            } else if (!strcmp(a, "-H") || !strcmp(a, "--height")) {
                if (!parse_int(v, 8, 8192, &p.height))
                    BAD("height");
            } else if (!strcmp(a, "--steps")) {
                if (!parse_int(v, 1, RB_SCHED_MAX_STEPS, &p.steps))
                    BAD("step count");
            } else if (!strcmp(a, "--cfg-scale")) {
                if (!parse_float(v, &p.guidance))
                    BAD("guidance");
            } else if (!strcmp(a, "--scale")) {
                if (!parse_float(v, &p.ip_scale))
                    BAD("scale");
            } else if (!strcmp(a, "-s") || !strcmp(a, "--seed")) {
                char *end;
                errno = 0;
                seed = strtoull(v, &end, 10);
                if (errno || *end || end == v || v[0] == '-')
                    BAD("seed");
            } else if (!strcmp(a, "--rng")) {
                if (!strcmp(v, "cuda"))
                    p.noise = RB_NOISE_CUDA;
                else if (!strcmp(v, "cpu"))
                    p.noise = RB_NOISE_CPU;
                else
                    BAD("--rng (cuda or cpu)");
            } else if (!strcmp(a, "--sampler")) {
                if (!rb_sampler_from_name(v, &p.sampler))
                    BAD("sampler (euler, euler_a, dpmpp_2m)");
            } else if (!strcmp(a, "-b") || !strcmp(a, "--batch-count")) {
                if (!parse_int(v, 1, 1000, &p.batch_count))
                    BAD("batch count");
            } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
                if (!parse_int(v, 1, 1024, &threads))
                    BAD("thread count");
            } else if (!strcmp(a, "--auto-layout-start")) {
                if (!parse_int(v, 1, RB_SCHED_MAX_STEPS, &p.auto_layout_start))
                    BAD("start step");
            } else if (!strcmp(a, "--resampler-dim-head")) {
                if (!parse_int(v, 1, 4096, &p.resampler_dim_head))
                    BAD("head width");
            } else if (!strcmp(a, "--lora")) {
                if (p.n_loras >= RB_MAX_LORAS || !parse_lora(v, &p.loras[p.n_loras]))
                    BAD("LoRA (at most 8)");
                p.n_loras++;
            } else if (!strcmp(a, "--subject")) {
                if (p.n_subjects >= RB_MAX_SUBJECTS || !parse_subject(v, &p.subjects[p.n_subjects]))
                    BAD("subject (IMAGE:PHRASE:x0,y0,x1,y1, at most 8)");
                p.n_subjects++;
            } else if (!strcmp(a, "--config"))
                config = v;
            else if (!strcmp(a, "--tokenizers"))
                p.tokenizers_dir = v;
            else if (!strcmp(a, "--model-configs"))
                p.model_config_dir = v;
            else if (!strcmp(a, "--ms-adapter"))
                p.ms_adapter = v;
            else if (!strcmp(a, "--image-encoder"))
                p.image_encoder = v;
            else if (!strcmp(a, "--local-encoder"))
                p.local_encoder = v;
            else {
                fprintf(stderr, "relbooth generate: unknown option '%s'\n", a);
                usage(stderr);
                return RB_EXIT_USAGE;
            }
        }
    }
    if (config && rb_dr_config_load(config, &dr, &p) != RB_OK)
        return cli_fail("generate");
    if (!p.model || !p.prompt) {
        fprintf(stderr, "relbooth generate: -m MODEL_DIR and -p PROMPT (or --config) are required\n");
        return RB_EXIT_USAGE;
    }
    if (!negative_given && p.n_subjects > 0)
        p.negative_prompt = rb_default_negative_prompt; /* the official DreamRelation / MS-Diffusion default */
    p.seed = seed;
    if (threads)
        rb_set_num_threads(threads);
    progress_state ps = {.quiet = quiet || json, .tty = isatty(2), .start = now()};
    p.progress = on_progress;
    p.user = &ps;
    p.cancel = &cancelled;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    rb_image *imgs = calloc((size_t)p.batch_count, sizeof *imgs);
    if (!imgs)
        return cli_fail("generate");
    double t0 = now();
    rb_status s = rb_generate(&p, imgs);
    double secs = now() - t0;
    int rc = RB_EXIT_OK;
    if (s != RB_OK)
        rc = cli_fail("generate");
    static char params[16384];
    if (json && rc == RB_EXIT_OK)
        printf("{\"seconds\": %.3f, \"seed\": %llu, \"images\": [", secs, (unsigned long long)seed);
    for (int i = 0; rc == RB_EXIT_OK && i < p.batch_count; i++) {
        char name[4096];
        output_name(name, sizeof name, output, i, p.batch_count);
        rb_gen_params_describe(&p, seed, params, sizeof params);
        const char *keys[] = {"parameters"}, *vals[] = {params};
        if (rb_png_write(name, &imgs[i], 1, keys, vals) != RB_OK) {
            rc = cli_fail("generate");
            break;
        }
        if (json)
            printf("%s\"%s\"", i ? ", " : "", name);
        else if (!quiet)
            printf("%s\n", name);
    }
    if (json && rc == RB_EXIT_OK)
        printf("]}\n");
    for (int i = 0; i < p.batch_count; i++)
        rb_image_free(&imgs[i]);
    free(imgs);
    return rc;
}
