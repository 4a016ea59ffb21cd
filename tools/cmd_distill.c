/* relbooth distill: CLIPSelf self-distillation of the local image encoder (docs/distill.md).
 * Exit status: 0 ok, 1 usage, 2 failure (one line "relbooth distill: <problem>" on stderr). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "core/mem.h"
#include "pipelines/distill.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: relbooth distill --teacher CKPT --data IMAGE_DIR -o OUT.safetensors [options]\n"
            "  --teacher CKPT      open_clip checkpoint (safetensors, state dict .pt, CLIPSelf epoch_N.pt); the\n"
            "                      student starts from it too\n"
            "  --config JSON       open_clip model json (default: open_clip_config.json next to CKPT, else\n"
            "                      ViT-bigG-14); copied next to the output\n"
            "  --data DIR          a folder of images (PNG/JPEG/WebP; other files are skipped)\n"
            "  -o, --output FILE   the student (visual.* tensors, f32); load it with --local-encoder FILE\n"
            "  --image-size N      student input, square, multiple of the patch size (896)\n"
            "  --grid N | --grid MIN:MAX   N x N boxes per step, N drawn in [MIN, MAX] (4)\n"
            "  --steps N (1000)  --batch N (2)  --lr X (1e-5)  --weight-decay X (0.1)  --seed N (0)\n"
            "  --train-blocks K    train only the last K blocks (+ ln_post, proj); 0 = all (default)\n"
            "  --arena-gib N       activation arena (2; the gradient arena gets as much)\n");
}

static void on_progress(void *user, const rb_distill_progress *p) {
    if (!*(int *)user)
        return;
    double eta = p->seconds / p->step * (p->steps - p->step);
    fprintf(stderr, "\rstep %d/%d  loss %.5f  grid %dx%d  %.2f s/step  ETA %.0f s ", p->step, p->steps, p->loss, p->grid,
            p->grid, p->seconds / p->step, eta);
    if (p->step == p->steps)
        fputc('\n', stderr);
    fflush(stderr);
}

int cmd_distill(int argc, char **argv) {
    rb_distill_params p;
    rb_distill_params_init(&p);
    int tty = isatty(2);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && (i++, 1))
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return RB_EXIT_OK;
        } else if (ARG("--teacher")) {
            p.teacher = v;
        } else if (ARG("--config")) {
            p.teacher_config = v;
        } else if (ARG("--data")) {
            p.data = v;
        } else if (ARG("-o") || ARG("--output")) {
            p.output = v;
        } else if (ARG("--image-size")) {
            p.image_size = atoi(v);
        } else if (ARG("--grid")) {
            if (sscanf(v, "%d:%d", &p.grid_min, &p.grid_max) != 2)
                p.grid_max = p.grid_min = atoi(v);
        } else if (ARG("--steps")) {
            p.steps = atoi(v);
        } else if (ARG("--batch")) {
            p.batch = atoi(v);
        } else if (ARG("--lr")) {
            p.adam.lr = atof(v);
        } else if (ARG("--weight-decay")) {
            p.adam.weight_decay = atof(v);
        } else if (ARG("--seed")) {
            p.seed = strtoull(v, NULL, 10);
        } else if (ARG("--train-blocks")) {
            p.train_blocks = atoi(v);
        } else if (ARG("--arena-gib")) {
            p.arena_bytes = (size_t)atoi(v) << 30;
        } else {
            fprintf(stderr, "relbooth distill: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return RB_EXIT_USAGE;
        }
#undef ARG
    }
    if (!p.teacher || !p.data || !p.output) {
        fprintf(stderr, "relbooth distill: --teacher, --data and -o are required\n");
        usage(stderr);
        return RB_EXIT_USAGE;
    }
    if (!(p.adam.lr > 0) || p.steps < 1 || p.batch < 1 || p.arena_bytes == 0) {
        fprintf(stderr, "relbooth distill: --lr, --steps, --batch and --arena-gib must be positive\n");
        return RB_EXIT_USAGE;
    }
    p.progress = on_progress, p.user = &tty;
    double loss = NAN;
    if (rb_distill_run(&p, &loss) != RB_OK)
        return cli_fail("distill");
    printf("%s\n", p.output);
    if (!tty)
        fprintf(stderr, "relbooth distill: %d steps, last loss %.5f\n", p.steps, loss);
    return RB_EXIT_OK;
}
