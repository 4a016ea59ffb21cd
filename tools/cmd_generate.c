/* relbooth generate: SDXL text-to-image, and relation-aware customized generation (DreamRelation). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "pipelines/dr_config.h"
#include "pipelines/generate.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: relbooth generate --sdxl MODEL -p PROMPT [options]\n"
            "       relbooth generate --sdxl MODEL --config DREAMRELATION.yaml --ms-adapter ms_adapter.bin\n"
            "                         --image-encoder CLIP_VISION_DIR [options]\n"
            "       relbooth generate --sdxl MODEL -p PROMPT --ms-adapter A --image-encoder E\n"
            "                         --subject cat.jpg --phrase cat --box 0,0.2,0.5,0.9 --subject ... [options]\n"
            "\n"
            "  -m, --sdxl, --model DIR|FILE  SDXL in the diffusers layout (model_index.json, unet/, vae/, ...), or one\n"
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
            "  -b, --batch-count N      images, one after another (-n is the negative prompt, as in stable-diffusion.cpp)\n"
            "      --lora PATH[:SCALE]  a LoRA (RelationLoRA, any diffusers/PEFT/kohya file); repeatable\n"
            "  subjects (DreamRelation / MS-Diffusion):\n"
            "      --subject IMAGE --phrase TEXT --box x0,y0,x1,y1   a reference photo, its phrase and its box\n"
            "                           (normalised to [0, 1], x0 < x1, y0 < y1); repeat the three per subject\n"
            "      --subject IMAGE:PHRASE:x0,y0,x1,y1   the same in one argument\n"
            "      --config FILE.yaml   DreamRelation's inference config (prompt, images_path, boxes, phrases, lora_weights)\n"
            "      --ms-adapter FILE    MS-Diffusion ms_adapter.bin (or .safetensors)\n"
            "      --image-encoder DIR  CLIP-ViT-bigG-14 vision folder (config.json, model.safetensors, preprocessor_config.json)\n"
            "      --local-encoder FILE DreamRelation's CLIPSelf epoch_6.pt: adds 16 local tokens per subject\n"
            "      --official-pooling   pool every subject's local tokens from the first image, as the released code\n"
            "      --image-scale GAMMA  image-attention scale, default 0.6 (also --scale)\n"
            "      --auto-layout        MS-Diffusion's automatic layout: after --auto-layout-start steps (5) each\n"
            "                           subject's region comes from its phrase's text attention instead of its box\n"            "      --auto-layout-start N    the step from which --auto-layout uses the attention maps (5)\n"
            "      --ms-diffusion       MS-Diffusion conventions: references not resized to 512 first\n"
            "      --resampler-dim-head N   head width of the adapter's resampler (64 for the released one)\n"
            "  -t, --threads N          default: all cores\n"
            "      --bf16               bf16 matrix products (f32 accumulation)\n"
            "      --json               print a JSON summary (outputs, seed, seconds per stage and per step, peak RSS)\n"
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
        char bar[21];
        int fill = total > 0 ? done * 20 / total : 0;
        for (int i = 0; i < 20; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[20] = 0;
        fprintf(stderr, "\r%-8s [%s] %3d/%-3d  %6.1fs elapsed, ETA %6.1fs   ", stage, bar, done, total, el, eta);
    } else {
        fprintf(stderr, "\r%-8s %3d/%-3d  %6.1fs elapsed              ", stage, done, total, now() - ps->start);
    }
    if (done == total && !strcmp(stage, "denoise"))
        fprintf(stderr, "\n");
}

static void on_warn(void *user, const char *msg) {
    (void)user;
    fprintf(stderr, "relbooth generate: warning: %s\n", msg);
}

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

/* Peak resident set size of this process in MiB (Linux reports ru_maxrss in KiB). */
static double peak_rss_mib(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_maxrss / 1024.0;
}

static volatile int cancelled;
static void on_signal(int sig) {
    (void)sig;
    cancelled = 1;
}

static int parse_box(const char *arg, float box[4]) {
    char tail;
    return sscanf(arg, "%f,%f,%f,%f%c", &box[0], &box[1], &box[2], &box[3], &tail) == 4;
}

/* Per subject given on the command line: which of --phrase / --box have come (the compact form sets both). */
typedef struct subject_flags {
    int phrase, box;
} subject_flags;

/* IMAGE:PHRASE:x0,y0,x1,y1 (the image path may itself contain ':', so split from the right), or just
 * IMAGE, then followed by --phrase and --box. */
static int parse_subject(const char *arg, rb_subject *s, subject_flags *f) {
    static char store[RB_MAX_SUBJECTS][2][4096];
    static int used;
    if (used >= RB_MAX_SUBJECTS)
        return 0;
    const char *last = strrchr(arg, ':');
    const char *mid = last ? last - 1 : NULL;
    while (mid && mid > arg && *mid != ':')
        mid--;
    if (last && mid > arg && parse_box(last + 1, s->box)) {
        snprintf(store[used][0], sizeof store[used][0], "%.*s", (int)(mid - arg), arg);
        snprintf(store[used][1], sizeof store[used][1], "%.*s", (int)(last - mid - 1), mid + 1);
        s->phrase = store[used][1];
        f->phrase = f->box = 1;
    } else {
        if (!*arg)
            return 0;
        snprintf(store[used][0], sizeof store[used][0], "%s", arg);
        f->phrase = f->box = 0;
    }
    s->image = store[used][0];
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
    subject_flags sf[RB_MAX_SUBJECTS] = {{0}};
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
            if (!strcmp(a, "-m") || !strcmp(a, "--model") || !strcmp(a, "--sdxl"))
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
            } else if (!strcmp(a, "--scale") || !strcmp(a, "--image-scale")) {
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
                if (p.n_subjects >= RB_MAX_SUBJECTS || !parse_subject(v, &p.subjects[p.n_subjects], &sf[p.n_subjects]))
                    BAD("subject (IMAGE, or IMAGE:PHRASE:x0,y0,x1,y1; at most 8)");
                p.n_subjects++;
            } else if (!strcmp(a, "--phrase") || !strcmp(a, "--box")) {
                int k = p.n_subjects - 1, is_box = a[2] == 'b';
                if (k < 0 || (is_box ? sf[k].box : sf[k].phrase)) {
                    fprintf(stderr, "relbooth generate: %s '%s' must follow its own --subject IMAGE\n", a, v);
                    return RB_EXIT_FAIL;
                }
                if (is_box) {
                    if (!parse_box(v, p.subjects[k].box))
                        BAD("box (x0,y0,x1,y1 in [0, 1])");
                    sf[k].box = 1;
                } else {
                    p.subjects[k].phrase = v;
                    sf[k].phrase = 1;
                }
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
    for (int k = 0; k < p.n_subjects; k++)
        if (!sf[k].phrase || !sf[k].box) {
            fprintf(stderr, "relbooth generate: subject %d (%s) has no %s: give --subject, --phrase and --box "
                    "once per subject\n", k + 1, p.subjects[k].image, sf[k].phrase ? "--box" : "--phrase");
            return RB_EXIT_FAIL;
        }
    if (config && p.n_subjects) {
        fprintf(stderr, "relbooth generate: --config gives the subjects; do not add --subject\n");
        return RB_EXIT_USAGE;
    }
    if (config && rb_dr_config_load(config, &dr, &p) != RB_OK)
        return cli_fail("generate");
    if (!p.model || !p.prompt) {
        fprintf(stderr, "relbooth generate: --sdxl MODEL and -p PROMPT (or --config) are required\n");
        return RB_EXIT_USAGE;
    }
    if (!negative_given && p.n_subjects > 0)
        p.negative_prompt = rb_default_negative_prompt; /* the official DreamRelation / MS-Diffusion default */
    p.seed = seed;
    if (threads)
        rb_set_num_threads(threads);
    progress_state ps = {.quiet = quiet || json, .tty = isatty(2), .start = now()};
    p.progress = on_progress;
    p.warn = on_warn;
    p.user = &ps;
    rb_gen_report report;
    p.report = &report;
    p.cancel = &cancelled;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    rb_image *imgs = calloc((size_t)p.batch_count, sizeof *imgs);
    if (!imgs)
        return cli_fail("generate");
    rb_status s = rb_generate(&p, imgs);
    if (ps.tty && !ps.quiet && ps.last && strcmp(ps.last, "denoise"))
        fprintf(stderr, "\n"); /* end the status line */
    int rc = RB_EXIT_OK;
    if (s != RB_OK)
        rc = cli_fail("generate");
    static char params[16384], names[1000][4096];
    rb_gen_params_describe(&p, seed, params, sizeof params);
    const char *keys[] = {"parameters"}, *vals[] = {params};
    int written = 0;
    for (int i = 0; rc == RB_EXIT_OK && i < p.batch_count; i++) {
        output_name(names[i], sizeof names[i], output, i, p.batch_count);
        if (rb_png_write(names[i], &imgs[i], 1, keys, vals) != RB_OK) {
            unlink(names[i]);
            rc = cli_fail("generate");
            break;
        }
        written++;
    }
    if (rc != RB_EXIT_OK) /* no partial results: a failed run leaves no file behind */
        for (int i = 0; i < written; i++)
            unlink(names[i]);
    for (int i = 0; rc == RB_EXIT_OK && !json && !quiet && i < written; i++)
        printf("%s\n", names[i]);
    if (json && rc == RB_EXIT_OK) {
        printf("{\"outputs\": [");
        for (int i = 0; i < written; i++) {
            printf(i ? ", " : "");
            json_str(names[i]);
        }
        printf("], \"seed\": %llu, \"width\": %d, \"height\": %d, \"steps\": %d, \"subjects\": %d,\n",
               (unsigned long long)seed, p.width, p.height, p.steps, p.n_subjects);
        printf(" \"seconds\": {\"text\": %.3f, \"image\": %.3f, \"unet_load\": %.3f, \"denoise\": %.3f, "
               "\"per_step\": %.4f, \"decode\": %.3f, \"total\": %.3f},\n",
               report.text_s, report.image_s, report.unet_s, report.denoise_s, report.step_s, report.decode_s,
               report.total_s);
        printf(" \"unet_steps\": %d, \"prompt_tokens\": %d, \"prompt_tokens_dropped\": %d, \"peak_rss_mib\": %.1f}\n",
               report.steps_run, report.prompt_tokens, report.prompt_dropped, peak_rss_mib());
    }
    for (int i = 0; i < p.batch_count; i++)
        rb_image_free(&imgs[i]);
    free(imgs);
    return rc;
}
