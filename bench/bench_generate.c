/* `relbooth bench generate`: the real generation path (rb_generate: staged loading and release of
 * the text encoders, the image encoder + resampler, the UNet + RelationLoRA + MS-Diffusion's
 * to_k_ip/to_v_ip, the VAE) on a full-size random model set written to disk first, in the official
 * layouts (tools/demo_models.c), so that loading, memory and time are those of real files:
 *
 *   relbooth bench generate [--size 1024] [--subjects 2] [--steps 2] [--keep DIR] [--local] [--tiny]
 *                           [--f32] [--json] [-t threads (2)]
 *
 * Three parts run in forked children, one after the other (the parent only forks and waits, so it never
 * starts OpenMP threads that a child could inherit broken, and its own memory stays small):
 *   1. the writer (skipped when --keep DIR already holds a complete set);
 *   2. this machine's bf16 (or f32) GEMM peak (bench_peak_gflops);
 *   3. rb_generate with --subjects N (boxes side by side, drawn subject photos), then the same number of
 *      steps with no subjects (plain SDXL + the same LoRA) in a second child.
 * ru_maxrss is process-wide and never goes down, so each run's peak RSS is its own child's, from wait4;
 * within a run, per-stage peaks come from VmHWM, reset at each stage boundary (/proc/self/clear_refs 5).
 * FLOPs per UNet step: bench_unet_flops (bench_models.c) for the CFG batch of 2 with 77 text tokens,
 * plus the masked image attention's to_k_ip/to_v_ip and its two attention products over 4 + 16 n
 * image tokens in every attn2. */
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "cli.h"
#include "core/mem.h"
#include "demo_models.h"
#include "models/unet.h"
#include "pipelines/generate.h"

typedef struct gopts {
    int size, subjects, steps, threads, json, tiny, local;
    rb_dtype dt;
    const char *keep;
} gopts;

/* What a child sends back through its pipe. */
typedef struct child_out {
    int ok;
    char err[512];
    rb_gen_report rep;
    double value;          /* writer: seconds; peak: GFLOP/s */
    double stage_mib[5];   /* VmHWM per stage: text (+ adapter, LoRA load), image, UNet load, denoise, decode */
    double anon_mib[5], file_mib[5]; /* RssAnon / RssFile at the end of those stages */
    double first_step_s, warm_step_s; /* the first denoising step (page-ins, oneDNN set-up) and the mean of the rest */
    double peak_rss_mib;   /* filled by the parent from wait4 */
} child_out;

/* A field of /proc/self/status in MiB (-1 if unreadable): VmHWM (peak RSS since the last reset),
 * RssAnon (allocations), RssFile (mapped checkpoint pages). */
static double status_mib(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double v = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':')
            v = atof(line + n + 1) / 1024.0;
    if (f)
        fclose(f);
    return v;
}

static double hwm_mib(void) { return status_mib("VmHWM"); }

static void hwm_reset(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

/* Runs fn(arg, out) in a child; out comes back through a pipe, with the child's own peak RSS. */
static int in_child(void (*fn)(void *arg, child_out *out), void *arg, child_out *out) {
    memset(out, 0, sizeof *out);
    int fd[2];
    if (pipe(fd) != 0)
        return snprintf(out->err, sizeof out->err, "pipe: %s", strerror(errno)), 0;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]), close(fd[1]);
        return snprintf(out->err, sizeof out->err, "fork: %s", strerror(errno)), 0;
    }
    if (pid == 0) {
        close(fd[0]);
        child_out o;
        memset(&o, 0, sizeof o);
        fn(arg, &o);
        const char *p = (const char *)&o;
        size_t left = sizeof o;
        while (left) {
            ssize_t w = write(fd[1], p, left);
            if (w <= 0)
                break;
            p += w, left -= (size_t)w;
        }
        fflush(stderr);
        _exit(o.ok ? 0 : 1);
    }
    close(fd[1]);
    char *p = (char *)out;
    size_t got = 0;
    while (got < sizeof *out) {
        ssize_t r = read(fd[0], p + got, sizeof *out - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd[0]);
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR)
        ;
    /* clear_refs 5 (the per-stage peaks) also resets what ru_maxrss reports: the run's peak is the
     * largest of the stage peaks and the child's ru_maxrss */
    if (got != sizeof *out) {
        memset(out, 0, sizeof *out);
        snprintf(out->err, sizeof out->err, "the child died (%s %d)", WIFSIGNALED(status) ? "signal" : "exit status",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    }
    out->peak_rss_mib = (double)ru.ru_maxrss / 1024.0; /* KiB on Linux */
    for (int i = 0; i < 5; i++)
        if (out->stage_mib[i] > out->peak_rss_mib)
            out->peak_rss_mib = out->stage_mib[i];
    return out->ok;
}

/* ---- child 1: the model set ---- */

typedef struct write_arg {
    const gopts *o;
    const char *dir;
} write_arg;

static void write_progress(void *user, const char *file, double done, double total) {
    (void)user;
    static char last[512];
    if (strcmp(last, file)) { /* a new file: end the previous line */
        if (last[0])
            fputc('\n', stderr);
        snprintf(last, sizeof last, "%s", file);
    }
    fprintf(stderr, "\r  writing %s  %.2f / %.2f GB", file, done * 1e-9, total * 1e-9);
}

static const char *tokenizer_dir(char *buf, size_t n) {
    const char *g = getenv("RELBOOTH_GOLDEN");
    snprintf(buf, n, "%s/clip_tokenizer", g ? g : "../shared/golden");
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/tokenizer/vocab.json", buf);
    return access(probe, R_OK) == 0 ? buf : NULL;
}

static void write_child(void *arg, child_out *out) {
    const write_arg *a = arg;
    rb_set_num_threads(a->o->threads);
    char tok[4096];
    rb_demo_opts d = {.full = !a->o->tiny, .seed = 42, .progress = a->o->tiny ? NULL : write_progress};
    d.tokenizer_dir = a->o->tiny ? NULL : tokenizer_dir(tok, sizeof tok);
    if (!a->o->tiny)
        fprintf(stderr, "bench generate: writing a full-size random model set into %s (tokenizers: %s)\n", a->dir,
                d.tokenizer_dir ? d.tokenizer_dir : "the demo's byte-level vocabulary; no CLIP vocab found");
    double t0 = bench_now_s();
    rb_status s = rb_demo_write_models_opts(a->dir, &d);
    char p[4200];
    for (int i = 0; s == RB_OK && i < RB_MAX_SUBJECTS; i++) {
        snprintf(p, sizeof p, "%s/subject%d.png", a->dir, i);
        s = rb_demo_draw_subject(p, i % 2);
    }
    if (!a->o->tiny)
        fputc('\n', stderr);
    out->value = bench_now_s() - t0;
    out->ok = s == RB_OK;
    if (!out->ok)
        snprintf(out->err, sizeof out->err, "%s", rb_last_error());
}

/* ---- child 2: the GEMM peak ---- */

static void peak_child(void *arg, child_out *out) {
    const gopts *o = arg;
    rb_set_num_threads(o->threads);
    rb_arena ar;
    rb_status s = rb_arena_init(&ar, (size_t)64 << 20, "bench arena");
    if (s == RB_OK) {
        s = bench_peak_gflops(&ar, o->dt, o->tiny ? 2 : 10, &out->value);
        rb_arena_free(&ar);
    }
    out->ok = s == RB_OK;
    if (!out->ok)
        snprintf(out->err, sizeof out->err, "%s", rb_last_error());
}

/* ---- children 3 and 4: rb_generate ---- */

typedef struct gen_arg {
    const gopts *o;
    const char *dir;
    int subjects;
    child_out *out;
    int quiet;
    double t_denoise, t_step; /* when denoising started, when the previous step ended */
    int n_warm;
} gen_arg;

/* Per-step wall times (rb_gen_params.on_step runs after every step): the first step pays the page-ins
 * of the UNet's weights and oneDNN's primitive creation, so the step figure is the mean of the others. */
static void gen_step(void *user, const rb_gen_step *st) {
    gen_arg *g = user;
    double t = bench_now_s();
    if (st->step == 0) {
        g->out->first_step_s = t - g->t_denoise;
    } else {
        g->out->warm_step_s += t - g->t_step;
        g->n_warm++;
    }
    g->t_step = t;
}

/* Stage boundaries as rb_generate reports them. A stage's models are released after its last progress
 * call, so the high-water mark is reset at the next stage's first call (image 0: the text encoders
 * are gone; decode 0: the UNet is gone), except before the UNet load, which has no call of its own. */
static void mark(gen_arg *g, int slot) {
    g->out->stage_mib[slot] = hwm_mib();
    g->out->anon_mib[slot] = status_mib("RssAnon");
    g->out->file_mib[slot] = status_mib("RssFile");
}

static void gen_progress(void *user, const char *stage, int done, int total) {
    gen_arg *g = user;
    if (!strcmp(stage, "text") && done == total)
        mark(g, 0), hwm_reset();
    else if (!strcmp(stage, "image") && done == 0)
        hwm_reset();
    else if (!strcmp(stage, "image") && done == total)
        mark(g, 1), hwm_reset();
    else if (!strcmp(stage, "denoise") && done == 0)
        mark(g, 2), hwm_reset(), g->t_denoise = bench_now_s(); /* the UNet is loaded */
    else if (!strcmp(stage, "denoise") && done == total)
        mark(g, 3);
    else if (!strcmp(stage, "decode") && done == 0)
        hwm_reset();
    if (!g->quiet) {
        fprintf(stderr, "\r  %s subjects %d: %-8s %d/%d   ", g->subjects ? "with" : "no", g->subjects, stage, done, total);
        if (!strcmp(stage, "decode"))
            fputc('\n', stderr);
    }
}

static void gen_child(void *arg, child_out *out) {
    gen_arg *g = arg;
    const gopts *o = g->o;
    g->out = out;
    rb_set_num_threads(o->threads);
    char model[4200], adapter[4200], enc[4200], lora[4200], img[RB_MAX_SUBJECTS][4200];
    snprintf(model, sizeof model, "%s/%s", g->dir, o->tiny ? "tiny-sdxl" : "sdxl");
    snprintf(adapter, sizeof adapter, "%s/ms_adapter.bin", g->dir);
    snprintf(enc, sizeof enc, "%s/image_encoder", g->dir);
    snprintf(lora, sizeof lora, "%s/pytorch_lora_weights.safetensors", g->dir);
    rb_gen_params p;
    rb_gen_params_init(&p);
    p.model = model;
    p.prompt = "a cat is hugging a bear";
    p.width = p.height = o->size, p.steps = o->steps;
    p.compute = o->dt;
    p.loras[0] = (rb_lora_ref){lora, 1.0f}, p.n_loras = 1;
    p.arena_bytes = o->tiny ? (size_t)512 << 20 : 0;
    p.progress = gen_progress, p.on_step = gen_step, p.user = g;
    rb_gen_report rep;
    p.report = &rep;
    if (g->subjects) {
        p.ms_adapter = adapter, p.image_encoder = enc;
        p.resampler_dim_head = o->tiny ? DEMO_RESAMPLER_DIM_HEAD : 64;
        static const char *const phrase[2] = {"cat", "bear"};
        for (int i = 0; i < g->subjects; i++) { /* side by side */
            snprintf(img[i], sizeof img[i], "%s/subject%d.png", g->dir, i);
            float w = 1.0f / (float)g->subjects;
            p.subjects[i] = (rb_subject){img[i], phrase[i % 2], {i * w + 0.02f * w, 0.15f, (i + 1) * w - 0.02f * w, 0.9f}};
        }
        p.n_subjects = g->subjects;
    }
    hwm_reset();
    rb_image im;
    rb_status s = rb_generate(&p, &im);
    mark(g, 4);
    out->warm_step_s = g->n_warm ? out->warm_step_s / g->n_warm : out->first_step_s;
    if (s == RB_OK)
        rb_image_free(&im);
    out->rep = rep;
    out->ok = s == RB_OK;
    if (!out->ok)
        snprintf(out->err, sizeof out->err, "%s", rb_last_error());
}

/* ---- the suite ---- */

static int usage(FILE *f) {
    fprintf(f,
            "usage: relbooth bench generate [--size 1024] [--subjects 2] [--steps 2] [--keep DIR] [--local] [--tiny]\n"
            "                               [--f32] [--json] [-t threads (2)]\n"
            "  Writes a full-size random-weight model set (SDXL base diffusers folder, CLIP ViT-bigG/14 image\n"
            "  encoder, MS-Diffusion ms_adapter.bin, rank-4 RelationLoRA; bf16 matrices, ~12 GB) to a temporary\n"
            "  folder (--keep DIR: there, kept and reused), then times rb_generate with N subjects and with none\n"
            "  (plain SDXL + the LoRA), each in its own process: seconds per stage and per UNet step, the step's\n"
            "  GFLOP and efficiency vs this run's GEMM peak, peak RSS. bf16 compute (--f32: f32).\n"
            "  --tiny: the demo's tiny models (tests). --local: local tokens (not available yet).\n");
    return f == stdout ? RB_EXIT_OK : RB_EXIT_USAGE;
}

static int parse(int argc, char **argv, gopts *o) {
    memset(o, 0, sizeof *o);
    o->size = 1024, o->subjects = 2, o->steps = 2, o->threads = 2, o->dt = RB_BF16;
    int size_set = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json"))
            o->json = 1;
        else if (!strcmp(a, "--tiny"))
            o->tiny = 1;
        else if (!strcmp(a, "--local"))
            o->local = 1;
        else if (!strcmp(a, "--f32"))
            o->dt = RB_F32;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return usage(stdout) + 100;
        else if (!v)
            return usage(stderr);
        else if (!strcmp(a, "--size"))
            o->size = atoi(v), size_set = 1, i++;
        else if (!strcmp(a, "--subjects"))
            o->subjects = atoi(v), i++;
        else if (!strcmp(a, "--steps"))
            o->steps = atoi(v), i++;
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads"))
            o->threads = atoi(v), i++;
        else if (!strcmp(a, "--keep"))
            o->keep = v, i++;
        else
            return usage(stderr);
    }
    if (o->tiny && !size_set)
        o->size = 128;
    if (o->size < 64 || o->size > 2048 || o->size % 64 || o->subjects < 0 || o->subjects > RB_MAX_SUBJECTS ||
        o->steps < 1 || o->steps > 100 || o->threads < 1 || o->threads > 256) {
        fprintf(stderr, "relbooth bench generate: --size multiple of 64 in 64..2048, --subjects 0..%d, --steps 1..100, "
                        "-t >= 1\n", RB_MAX_SUBJECTS);
        return RB_EXIT_USAGE;
    }
    if (o->local) {
        fprintf(stderr, "relbooth bench generate: --local (the bigG local encoder at 896) is not available yet\n");
        return RB_EXIT_USAGE;
    }
    return -1;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* GFLOP of one UNet step (one CFG call, batch 2) with `images` image tokens per attn2. */
static double step_gflop(const char *dir, int tiny, int size, double images) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s/unet/config.json", dir, tiny ? "tiny-sdxl" : "sdxl");
    rb_unet_config cfg;
    rb_unet m = {0};
    if (rb_unet_config_load(&cfg, path) != RB_OK || rb_unet_init(&m, &cfg) != RB_OK)
        return 0;
    double f = bench_unet_flops(&m, 2, size / 8.0, size / 8.0, 77, images);
    rb_unet_free(&m);
    return f * 1e-9;
}

int bench_generate_main(int argc, char **argv) {
    gopts o;
    int rc = parse(argc, argv, &o);
    if (rc >= 0)
        return rc >= 100 ? rc - 100 : rc;
    rc = RB_EXIT_OK;
    char dir[4096], marker[4200];
    int temp = !o.keep;
    if (temp) {
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/relbooth-bench-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(dir)) {
            fprintf(stderr, "relbooth bench generate: cannot create %s: %s\n", dir, strerror(errno));
            return RB_EXIT_FAIL;
        }
    } else {
        snprintf(dir, sizeof dir, "%s", o.keep);
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "relbooth bench generate: cannot create %s: %s\n", dir, strerror(errno));
            return RB_EXIT_FAIL;
        }
    }
    /* a complete set ends with this marker (its name says which size) */
    snprintf(marker, sizeof marker, "%s/.relbooth-bench-%s-complete", dir, o.tiny ? "tiny" : "full");
    child_out w = {0}, pk, run[2];
    int reused = access(marker, R_OK) == 0;
    write_arg wa = {&o, dir};
    if (!reused) {
        if (!in_child(write_child, &wa, &w)) {
            fprintf(stderr, "relbooth bench generate: writing the models: %s\n", w.err);
            rc = RB_EXIT_FAIL;
            goto out;
        }
        FILE *f = fopen(marker, "w");
        if (f)
            fclose(f);
    } else if (!o.json) {
        fprintf(stderr, "bench generate: reusing the model set in %s\n", dir);
    }
    if (!in_child(peak_child, &o, &pk)) {
        fprintf(stderr, "relbooth bench generate: GEMM peak: %s\n", pk.err);
        rc = RB_EXIT_FAIL;
        goto out;
    }
    gen_arg ga[2] = {{.o = &o, .dir = dir, .subjects = o.subjects, .quiet = o.tiny}, {.o = &o, .dir = dir, .quiet = o.tiny}};
    for (int k = 0; k < 2; k++)
        if (!in_child(gen_child, &ga[k], &run[k])) {
            fprintf(stderr, "relbooth bench generate: generate with %d subjects: %s\n", ga[k].subjects, run[k].err);
            rc = RB_EXIT_FAIL;
            goto out;
        }
    {
        const rb_gen_report *r = &run[0].rep, *q = &run[1].rep;
        double images = o.subjects ? 4 + 16.0 * o.subjects : 0;
        double gf = step_gflop(dir, o.tiny, o.size, images), gf0 = step_gflop(dir, o.tiny, o.size, 0);
        double step = run[0].warm_step_s, step0 = run[1].warm_step_s;
        double eff = step > 0 && pk.value > 0 ? gf / step / pk.value : 0;
        double eff0 = step0 > 0 && pk.value > 0 ? gf0 / step0 / pk.value : 0;
        double over = step0 > 0 ? step / step0 - 1 : NAN;
        const double *sm = run[0].stage_mib, *an = run[0].anon_mib, *fi = run[0].file_mib, *pm = run[1].stage_mib;
        if (o.json) {
            printf("{\"suite\": \"generate\", \"size\": %d, \"subjects\": %d, \"steps\": %d, \"threads\": %d, "
                   "\"dtype\": \"%s\", \"local_tokens\": false, \"seconds\": %.3f, \"text_s\": %.3f, \"image_s\": %.3f, "
                   "\"unet_load_s\": %.3f, \"denoise_s\": %.6f, \"step_s\": %.6f, \"first_step_s\": %.6f, \"decode_s\": %.3f, "
                   "\"plain_seconds\": %.3f, \"plain_step_s\": %.6f, \"plain_first_step_s\": %.6f, \"masked_overhead\": %.4f, "
                   "\"gflop_step\": %.6f, "
                   "\"plain_gflop_step\": %.6f, \"peak_gflops\": %.1f, \"efficiency\": %.4f, \"plain_efficiency\": %.4f, "
                   "\"peak_rss_mib\": %.1f, \"plain_peak_rss_mib\": %.1f, \"stage_peak_rss_mib\": {\"text\": %.1f, "
                   "\"image\": %.1f, \"unet_load\": %.1f, \"denoise\": %.1f, \"decode\": %.1f}, "
                   "\"stage_end_anon_mib\": [%.0f, %.0f, %.0f, %.0f, %.0f], \"stage_end_file_mib\": [%.0f, %.0f, %.0f, %.0f, %.0f], "
                   "\"plain_stage_peak_rss_mib\": [%.0f, %.0f, %.0f, %.0f, %.0f], \"write_s\": %.1f, "
                   "\"writer_peak_rss_mib\": %.1f, \"models_reused\": %s, \"load1\": %.2f}\n",
                   o.size, o.subjects, o.steps, o.threads, rb_dtype_name(o.dt), r->total_s, r->text_s, r->image_s,
                   r->unet_s, r->denoise_s, step, run[0].first_step_s, r->decode_s, q->total_s, step0, run[1].first_step_s,
                   over, gf, gf0, pk.value, eff,
                   eff0, run[0].peak_rss_mib, run[1].peak_rss_mib, sm[0], sm[1], sm[2], sm[3], sm[4], an[0], an[1], an[2],
                   an[3], an[4], fi[0], fi[1], fi[2], fi[3], fi[4], pm[0], pm[1], pm[2], pm[3], pm[4], w.value,
                   w.peak_rss_mib, reused ? "true" : "false", bench_load1());
        } else {
            printf("bench generate: %dx%d, %d subjects (boxes side by side), %d steps, %s compute, %d threads; local "
                   "tokens off\n",
                   o.size, o.size, o.subjects, o.steps, rb_dtype_name(o.dt), o.threads);
            if (!reused)
                printf("  model set written in %.1f s (writer peak RSS %.0f MiB)\n", w.value, w.peak_rss_mib);
            printf("  text %.2f s | image %.2f s | UNet load %.2f s | denoise %.2f s (first step %.2f s, then %.2f s per "
                   "step) | decode %.2f s | total %.2f s\n",
                   r->text_s, r->image_s, r->unet_s, r->denoise_s, run[0].first_step_s, step, r->decode_s, r->total_s);
            printf("  UNet step: %.1f GFLOP, %.1f GFLOP/s = %.1f%% of this run's %s GEMM peak %.1f GFLOP/s\n", gf,
                   step > 0 ? gf / step : 0, eff * 100, rb_dtype_name(o.dt), pk.value);
            printf("  plain SDXL (no subjects, same LoRA): %.2f s per step (first %.2f s; %.1f GFLOP, %.1f%% of peak), "
                   "total %.2f s\n",
                   step0, run[1].first_step_s, gf0, eff0 * 100, q->total_s);
            printf("  masked image attention overhead: %+.1f%% per step\n", over * 100);
            printf("  peak RSS %.0f MiB (plain: %.0f MiB); per stage: text %.0f, image %.0f, UNet load %.0f, denoise %.0f, "
                   "decode %.0f MiB; load %.2f\n",
                   run[0].peak_rss_mib, run[1].peak_rss_mib, sm[0], sm[1], sm[2], sm[3], sm[4], bench_load1());
        }
    }
out:
    if (temp)
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
