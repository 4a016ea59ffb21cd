/* relbooth C API example: load a pipeline once, generate two images with different seeds, write PNGs.
 *
 *   cc -std=c11 api-example.c $(pkg-config --cflags --libs relbooth) -o api-example
 *   ./api-example <sdxl-folder> <out-dir> [steps] [size] [lora.safetensors]
 *
 * Writes <out-dir>/seed1.png and <out-dir>/seed2.png. Only include/relbooth.h is needed. */
#include <stdio.h>
#include <stdlib.h>

#include "relbooth.h"

static void on_progress(void *user, const char *stage, int done, int total) {
    (void)user;
    if (total > 1)
        fprintf(stderr, "\r%-8s %d/%d", stage, done, total);
    if (done == total)
        fprintf(stderr, "\n");
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s <sdxl-folder> <out-dir> [steps] [size] [lora.safetensors]\n", argv[0]);
        return 1;
    }
    rb_pipeline_config cfg;
    rb_pipeline_config_init(&cfg);
    cfg.model = argv[1];
    cfg.keep_models = 1; /* load once, generate many */
    if (argc > 5) {
        cfg.loras[0].path = argv[5];
        cfg.loras[0].scale = 1.0f;
        cfg.n_loras = 1;
    }
    rb_pipeline *pipe;
    if (rb_pipeline_open(&cfg, &pipe) != RB_OK) {
        fprintf(stderr, "open: %s\n", rb_last_error());
        return 2;
    }
    rb_generate_request req;
    rb_generate_request_init(&req);
    req.prompt = "A cat is hugging a dog in front of the mountain.";
    req.steps = argc > 3 ? atoi(argv[3]) : 30;
    req.width = req.height = argc > 4 ? atoi(argv[4]) : 1024;
    req.progress = on_progress;
    int rc = 0;
    for (uint64_t seed = 1; seed <= 2 && rc == 0; seed++) {
        req.seed = seed;
        rb_image_out img;
        char path[4096], params[256];
        if (rb_pipeline_generate(pipe, &req, &img) != RB_OK) {
            fprintf(stderr, "generate: %s\n", rb_last_error());
            rc = 2;
            break;
        }
        snprintf(path, sizeof path, "%s/seed%d.png", argv[2], (int)seed);
        snprintf(params, sizeof params, "%s\nSteps: %d, Seed: %d", req.prompt, req.steps, (int)seed);
        if (rb_write_png(path, &img, params) != RB_OK) {
            fprintf(stderr, "write: %s\n", rb_last_error());
            rc = 2;
        } else {
            printf("%s (%dx%d)\n", path, img.width, img.height);
        }
        rb_image_out_free(&img);
    }
    rb_pipeline_close(pipe);
    return rc;
}
