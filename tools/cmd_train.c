/* relbooth train: RelationLoRA fine-tuning (docs/train.md).
 * Exit status: 0 ok, 1 usage, 2 failure (one line "relbooth train: <problem>" on stderr). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "core/dist.h"
#include "pipelines/train.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: relbooth train --model SDXL_DIR --data DATA --ms-adapter FILE --image-encoder DIR --output DIR\n"
            "                      [--recipe paper|official] [options]\n"
            "  --recipe R          paper: lambda_kml 1e-3 at every t, no CAL, Adam lr 1e-4, batch 8\n"
            "                      official (default): lambda_kml 0.1 for t <= 333, lambda_cal 1e-3, AdamW lr 1e-4\n"
            "                      wd 1e-4, batch 1 x accumulation 4; both: rank 4, clip 1.0, 500 steps, seed 0\n"
            "  --steps N  --lr X  --weight-decay X  --adam | --adamw  --batch N  --accum N  --clip X (0: off)\n"
            "  --rank N  --alpha X  --kml X  --kml-tmax T (-1: every t)  --kml-ref-x4 (released index bug)\n"
            "  --cal X  --cal-max-hw N  --ip-scale X  --resolution N  --seed N  --dim-head N\n"
            "  --checkpoint-every N  --resume DIR|latest  --arena-gib N  --json (summary on stdout)\n"
            "  --bf16              bf16 matrix products (f32 accumulation; LoRA gradients and AdamW stay f32)\n");
}

typedef struct {
    int tty, json;
} ui;

static void fmt_time(char *b, size_t n, double s) {
    if (!isfinite(s) || s < 0)
        s = 0;
    long t = (long)s;
    snprintf(b, n, "%02ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
}

static void on_progress(void *user, const rb_train_progress *p) {
    ui *u = user;
    if (!u->tty)
        return;
    char eta[32];
    fmt_time(eta, sizeof eta, p->eta);
    fprintf(stderr, "\rstep %d/%d  loss %.5f  mse %.5f  |g| %.4f  %.2f s/step  ETA %s ", p->step, p->steps, p->loss,
            p->mse, p->grad_norm, p->seconds / p->step, eta);
    if (p->step == p->steps)
        fputc('\n', stderr);
    fflush(stderr);
}

int cmd_train(int argc, char **argv) {
    const char *recipe = "official";
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--recipe"))
            recipe = argv[i + 1];
    rb_train_params p;
    if (rb_train_params_init(&p, recipe) != RB_OK) {
        fprintf(stderr, "relbooth train: %s\n", "--recipe must be paper or official");
        return RB_EXIT_USAGE;
    }
    ui u = {isatty(2), 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && (i++, 1))
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return RB_EXIT_OK;
        } else if (!strcmp(a, "--json")) {
            u.json = 1;
        } else if (!strcmp(a, "--adam")) {
            p.adam.decoupled = 0;
        } else if (!strcmp(a, "--adamw")) {
            p.adam.decoupled = 1;
        } else if (!strcmp(a, "--bf16")) {
            p.compute = RB_BF16;
        } else if (!strcmp(a, "--kml-ref-x4")) {
            p.loss.kml_ref_scale = 4;
        } else if (ARG("--recipe")) {
        } else if (ARG("--model")) {
            p.model = v;
        } else if (ARG("--data")) {
            p.data = v;
        } else if (ARG("--ms-adapter")) {
            p.ms_adapter = v;
        } else if (ARG("--image-encoder")) {
            p.image_encoder = v;
        } else if (ARG("--output")) {
            p.output_dir = v;
        } else if (ARG("--resume")) {
            p.resume = v;
        } else if (ARG("--steps")) {
            p.max_steps = atoi(v);
        } else if (ARG("--lr")) {
            p.adam.lr = atof(v);
        } else if (ARG("--weight-decay")) {
            p.adam.weight_decay = atof(v);
        } else if (ARG("--batch")) {
            p.batch = atoi(v);
        } else if (ARG("--accum")) {
            p.accum = atoi(v);
        } else if (ARG("--clip")) {
            p.max_grad_norm = atof(v);
        } else if (ARG("--rank")) {
            p.rank = atoi(v), p.alpha = (float)p.rank;
        } else if (ARG("--alpha")) {
            p.alpha = (float)atof(v);
        } else if (ARG("--kml")) {
            p.loss.w_kml = (float)atof(v);
        } else if (ARG("--kml-tmax")) {
            p.loss.kml_t_max = atoi(v);
        } else if (ARG("--cal")) {
            p.loss.w_cal = (float)atof(v);
        } else if (ARG("--cal-max-hw")) {
            p.loss.cal_max_hw = atoi(v);
        } else if (ARG("--ip-scale")) {
            p.ip_scale = (float)atof(v);
        } else if (ARG("--resolution")) {
            p.resolution = atoi(v);
        } else if (ARG("--seed")) {
            p.seed = strtoull(v, NULL, 10);
        } else if (ARG("--dim-head")) {
            p.resampler_dim_head = atoi(v);
        } else if (ARG("--checkpoint-every")) {
            p.checkpoint_every = atoi(v);
        } else if (ARG("--arena-gib")) {
            p.arena_bytes = (size_t)atoi(v) << 30;
        } else {
            fprintf(stderr, "relbooth train: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return RB_EXIT_USAGE;
        }
#undef ARG
    }
    if (!p.model || !p.data || !p.ms_adapter || !p.image_encoder || !p.output_dir) {
        fprintf(stderr, "relbooth train: --model, --data, --ms-adapter, --image-encoder and --output are required\n");
        usage(stderr);
        return RB_EXIT_USAGE;
    }
    p.progress = on_progress, p.user = &u;
    /* under mpirun every rank runs this: samples are shared out, gradients summed (docs/distributed.md) */
    if (rb_dist_init(NULL, NULL) != RB_OK)
        return cli_fail("train");
    rb_train_result r;
    rb_status s = rb_train(&p, &r);
    int rank = rb_dist_rank();
    if (rb_dist_finalize() != RB_OK && s == RB_OK)
        s = RB_ERR_IO;
    if (s != RB_OK)
        return cli_fail("train");
    if (rank != 0)
        return RB_EXIT_OK; /* rank 0 reports */
    if (u.json) {
        json_t *o = json_pack("{s:i, s:i, s:f, s:f, s:s, s:s, s:s, s:f, s:f, s:f, s:i}", "steps", r.steps, "resumed_from",
                              r.resumed_from, "final_loss", r.final_loss, "seconds", r.seconds, "lora", r.lora_path,
                              "last_checkpoint", r.last_checkpoint, "recipe", recipe, "lambda_kml", (double)p.loss.w_kml,
                              "lambda_cal", (double)p.loss.w_cal, "lr", p.adam.lr, "micro_batches_per_step",
                              p.batch * p.accum);
        char *js = o ? json_dumps(o, JSON_COMPACT) : NULL;
        printf("%s\n", js ? js : "{}");
        free(js);
        json_decref(o);
    } else
        printf("%s\n", r.lora_path);
    return RB_EXIT_OK;
}
