/* relbooth train on golden/relation_data with the tiny pipeline_sdxl models and the ms_diffusion
 * adapter: a short run stopped at step k and resumed gives bit-identical weights to an uninterrupted
 * run; outputs (metrics, loss curve, checkpoints, diffusers-format LoRA that rb_lora_load + the UNet
 * accept); the predicate span against the golden phrase_idxes. */
#include <math.h>
#include <unistd.h>

#include "harness.h"
#include "golden_models.h"
#include "text/phrase_span.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "pipelines/train.h"
#include "text/clip_tokenizer.h"

static char model[4096], adapter[4096], encoder[4096], data[4096], relbooth_bin[4096];

static int setup(void) {
    const char *g = t_golden_path("pipeline_sdxl");
    if (!g)
        return 0;
    char tmp[8192];
    snprintf(tmp, sizeof tmp, "%s", g);
    static char pipe_folder[4096];
    const char *m = t_pipeline_dir(tmp, "pipe", pipe_folder, sizeof pipe_folder);
    if (!m) {
        CHECK(0, "pipeline folder");
        return 0;
    }
    snprintf(model, sizeof model, "%s", m);
    snprintf(adapter, sizeof adapter, "%s", t_golden_path("ms_diffusion/ms_adapter.safetensors"));
    snprintf(encoder, sizeof encoder, "%s", t_golden_path("clip_vision"));
    snprintf(data, sizeof data, "%s", t_golden_path("relation_data/data"));
    return 1;
}

static void params(rb_train_params *p, const char *out) {
    REQUIRE(rb_train_params_init(p, "official") == RB_OK, "%s", rb_last_error());
    p->model = model, p->ms_adapter = adapter, p->image_encoder = encoder, p->data = data, p->output_dir = out;
    p->resampler_dim_head = 8;
    p->resolution = 64; /* 8x8 latents */
    p->accum = 2, p->max_steps = 4, p->checkpoint_every = 2, p->seed = 3;
    p->loss.kml_t_max = -1; /* KML at every t, so that every step exercises it */
    p->adam.lr = 1e-2;      /* visible changes in a few steps */
    p->init_b_std_x1000 = 100;
    p->arena_bytes = (size_t)512 << 20;
}

static void t_span(void) {
    const char *d = t_golden_path("pipeline_sdxl/tokenizer");
    if (!d)
        return;
    rb_clip_tokenizer *tok;
    REQUIRE(rb_clip_tokenizer_load(&tok, d) == RB_OK, "%s", rb_last_error());
    int64_t s[2];
    /* golden relation_data items.json and relation_lora_train: [[4, 5]] */
    CHECK(rb_phrase_span(tok, "A cat is hugging a dog.", "hugging", s) == RB_OK && s[0] == 4 && s[1] == 5,
          "span %lld..%lld", (long long)s[0], (long long)s[1]);
    CHECK(rb_phrase_span(tok, "A wolf shakes hands with a leopard.", "shakes hands with", s) == RB_OK &&
              s[0] == 3 && s[1] == 6, "multi-word span %lld..%lld", (long long)s[0], (long long)s[1]);
    CHECK(rb_phrase_span(tok, "A cat is hugging a dog.", "dog", s) == RB_OK && s[0] == 6 && s[1] == 7,
          "trailing punctuation ignored: %lld..%lld", (long long)s[0], (long long)s[1]);
    CHECK(rb_phrase_span(tok, "A cat is hugging a dog.", "riding", s) == RB_OK && s[0] == 0 && s[1] == 0,
          "absent -> [0, 0]");
    rb_clip_tokenizer_free(tok);
}

static int same_file_tensors(const char *a, const char *b, int *n_tensors) {
    rb_safetensors fa, fb;
    if (rb_st_open(&fa, a) != RB_OK)
        return 0;
    if (rb_st_open(&fb, b) != RB_OK) {
        rb_st_close(&fa);
        return 0;
    }
    int ok = fa.n == fb.n;
    for (int i = 0; ok && i < fa.n; i++) {
        const rb_tensor *x = &fa.entries[i].t, *y = rb_st_get(&fb, fa.entries[i].name);
        ok = y && rb_nbytes(x) == rb_nbytes(y) && !memcmp(x->data, y->data, rb_nbytes(x));
    }
    *n_tensors = fa.n;
    rb_st_close(&fa);
    rb_st_close(&fb);
    return ok;
}

static void t_resume_bit_exact(void) {
    if (!setup())
        return;
    char full[4096], part[4096];
    snprintf(full, sizeof full, "%s/full", t_tmpdir());
    snprintf(part, sizeof part, "%s/part", t_tmpdir());
    rb_train_params p;
    rb_train_result r1, r2, r3;
    params(&p, full);
    REQUIRE(rb_train(&p, &r1) == RB_OK, "uninterrupted run: %s", rb_last_error());
    CHECK(r1.steps == 4 && r1.lora_path[0] && isfinite(r1.final_loss), "steps %d, loss %g", r1.steps, r1.final_loss);
    params(&p, part);
    p.stop_after = 3; /* interrupted after step 3 (checkpoint-2 and checkpoint-3 written) */
    REQUIRE(rb_train(&p, &r2) == RB_OK, "interrupted run: %s", rb_last_error());
    CHECK(r2.steps == 3 && !r2.lora_path[0], "stopped at %d", r2.steps);
    params(&p, part);
    char ck[4200];
    snprintf(ck, sizeof ck, "%s/checkpoint-2", part); /* resume from the step-2 checkpoint: step 3 is redone */
    p.resume = ck;
    REQUIRE(rb_train(&p, &r3) == RB_OK, "resumed run: %s", rb_last_error());
    CHECK(r3.resumed_from == 2 && r3.steps == 4, "resumed from %d to %d", r3.resumed_from, r3.steps);
    int n = 0;
    CHECK(same_file_tensors(r1.lora_path, r3.lora_path, &n) && n == 2 * 4 * 17, "resumed weights differ from the "
          "uninterrupted run's (%d tensors)", n);
    char a[4300], b[4300];
    snprintf(a, sizeof a, "%s/checkpoint-4/optimizer.safetensors", full);
    snprintf(b, sizeof b, "%s/checkpoint-4/optimizer.safetensors", part);
    CHECK(same_file_tensors(a, b, &n), "optimizer state after resume differs");
    /* the weights moved from the initial ones (checkpoint-2 vs final) */
    snprintf(a, sizeof a, "%s/checkpoint-2/pytorch_lora_weights.safetensors", full);
    CHECK(!same_file_tensors(a, r1.lora_path, &n), "training changed nothing");
    /* metrics: one line per step, the resumed run's lines replace the interrupted run's step 3 */
    snprintf(a, sizeof a, "%s/metrics.jsonl", part);
    FILE *f = fopen(a, "r");
    int lines = 0;
    char buf[1024];
    while (f && fgets(buf, sizeof buf, f))
        lines++;
    if (f)
        fclose(f);
    CHECK(lines == 4, "metrics.jsonl has %d lines", lines);
    snprintf(a, sizeof a, "%s/loss_curve.png", full);
    rb_image im;
    CHECK(rb_image_load(&im, a, 3) == RB_OK && im.width == 640, "loss curve: %s", rb_last_error());
    rb_image_free(&im);
    /* the output loads as a diffusers LoRA (what generate --lora reads) */
    rb_lora_set set;
    REQUIRE(rb_lora_load(&set, r1.lora_path, NULL) == RB_OK, "%s", rb_last_error());
    CHECK(set.n == 4 * 17 && set.n_unused == 0 && (set.formats & RB_LORA_FMT_DIFFUSERS), "%d pairs, formats %d",
          set.n, set.formats);
    const rb_lora_pair *q = rb_lora_find(&set, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k");
    CHECK(q && q->rank == 4 && q->down->shape[1] == 36 && q->up->shape[0] == 16 && rb_lora_multiplier(q) == 1.0f, "to_k pair");
    rb_lora_free(&set);
}

/* --bf16: the same step with bf16 matrix products gives a loss within the bf16 tolerance of one model
 * call (docs/precision.md: 16u = 3.1e-2 relative) of the f32 run's, and not the f32 value itself. */
static void t_bf16_step(void) {
    if (!setup())
        return;
    char out[4096];
    rb_train_params p;
    rb_train_result f, b;
    snprintf(out, sizeof out, "%s/f32", t_tmpdir());
    params(&p, out);
    p.max_steps = 1, p.checkpoint_every = 0;
    REQUIRE(rb_train(&p, &f) == RB_OK, "f32 run: %s", rb_last_error());
    snprintf(out, sizeof out, "%s/bf16", t_tmpdir());
    params(&p, out);
    p.max_steps = 1, p.checkpoint_every = 0, p.compute = RB_BF16;
    REQUIRE(rb_train(&p, &b) == RB_OK, "bf16 run: %s", rb_last_error());
    double rel = fabs(b.final_loss - f.final_loss) / fabs(f.final_loss);
    printf("bf16 step loss %.8g, f32 %.8g, rel %.3g\n", b.final_loss, f.final_loss, rel);
    CHECK(isfinite(b.final_loss) && rel <= 3.1e-2 && rel > 0, "loss bf16 %.8g vs f32 %.8g (rel %.3g)", b.final_loss,
          f.final_loss, rel);
}

/* mpirun -np 2 relbooth train with the same global batch as one process: the samples are shared out,
 * the gradients summed, so the weights agree to float32 rounding (the sum's order differs). */
static void t_mpi_matches_single(void) {
    if (!setup())
        return;
    char mpirun[4096], bin[4096];
    t_find_on_path("mpirun", mpirun, sizeof mpirun);
    if (!mpirun[0]) {
        t_skip("mpirun not on PATH (apt-get install openmpi-bin)");
        return;
    }
    snprintf(bin, sizeof bin, "%s", relbooth_bin);
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    char one[4200], two[4200], args[20000], cmd[40000];
    snprintf(one, sizeof one, "%s/mpi1", t_tmpdir());
    snprintf(two, sizeof two, "%s/mpi2", t_tmpdir());
    snprintf(args, sizeof args,
             "train --model %s --data %s --ms-adapter %s --image-encoder %s --dim-head 8 --resolution 64 --accum 2 "
             "--steps 2 --checkpoint-every 0 --seed 3 --lr 1e-4 --recipe paper --batch 2 --arena-gib 1",
             model, data, adapter, encoder);
    snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 %s %s --output %s >/dev/null 2>&1", bin, args, one);
    CHECK(system(cmd) == 0, "single process run failed: %s", cmd);
    /* loopback only: shared memory between the local ranks; LSan is off for OpenMPI's own leaks */
    snprintf(cmd, sizeof cmd,
             "ASAN_OPTIONS=detect_leaks=0 OMP_NUM_THREADS=1 %s -np 2 --oversubscribe --mca btl self,vader "
             "--mca oob_tcp_if_include lo %s %s --output %s >/dev/null 2>&1",
             mpirun, bin, args, two);
    CHECK(system(cmd) == 0, "mpirun -np 2 run failed: %s", cmd);
    char a[4400], b[4400];
    snprintf(a, sizeof a, "%s/pytorch_lora_weights.safetensors", one);
    snprintf(b, sizeof b, "%s/pytorch_lora_weights.safetensors", two);
    rb_safetensors fa, fb;
    REQUIRE(rb_st_open(&fa, a) == RB_OK, "%s", rb_last_error());
    if (rb_st_open(&fb, b) != RB_OK) {
        CHECK(0, "%s", rb_last_error());
        rb_st_close(&fa);
        return;
    }
    double worst = 0, scale = 0;
    int n = 0;
    for (int i = 0; i < fa.n; i++) {
        const rb_tensor *x = &fa.entries[i].t, *y = rb_st_get(&fb, fa.entries[i].name);
        if (!y || rb_numel(x) != rb_numel(y)) {
            worst = INFINITY;
            continue;
        }
        for (int64_t k = 0; k < rb_numel(x); k++) {
            worst = fmax(worst, fabs(rb_tensor_get(x, k) - rb_tensor_get(y, k)));
            scale = fmax(scale, fabs(rb_tensor_get(x, k)));
        }
        n++;
    }
    /* Adam turns a float32-level difference of a near-zero gradient into up to lr per step, so the weights
     * are compared at lr scale; the losses and gradient norms below are compared at float32 scale */
    CHECK(n == fb.n && n > 0 && worst <= 1e-6 * fmax(scale, 1.0), "2 ranks vs 1: %d tensors, max |diff| %g (scale %g)",
          n, worst, scale);
    for (int k = 0; k < 2; k++) {
        char mp[4400];
        snprintf(mp, sizeof mp, "%s/metrics.jsonl", k ? two : one);
        FILE *f = fopen(mp, "r");
        double v[2][2] = {{0}};
        for (int line = 0; f && line < 2; line++)
            if (fscanf(f, "{\"step\": %*d, \"loss\": %lf, %*[^g]grad_norm\": %lf%*[^\n]\n", &v[line][0], &v[line][1]) != 2)
                v[line][0] = NAN;
        if (f)
            fclose(f);
        static double first[2][2];
        if (!k)
            memcpy(first, v, sizeof v);
        for (int line = 0; k && line < 2; line++)
            CHECK(fabs(v[line][0] - first[line][0]) <= 1e-6 * fabs(first[line][0]) &&
                      fabs(v[line][1] - first[line][1]) <= 1e-5 * fabs(first[line][1]),
                  "step %d: loss %.9g vs %.9g, grad norm %.9g vs %.9g", line + 1, v[line][0], first[line][0], v[line][1],
                  first[line][1]);
    }
    rb_st_close(&fa);
    rb_st_close(&fb);
}

int main(int argc, char **argv) {
    (void)argc;
    t_beside_self(argv[0], "../relbooth", relbooth_bin, sizeof relbooth_bin); /* build/tests/test_train -> build/relbooth */
    RUN(t_span);
    RUN(t_resume_bit_exact);
    RUN(t_bf16_step);
    RUN(t_mpi_matches_single);
    return t_done();
}
