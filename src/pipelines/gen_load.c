/* Component loading for rb_generate from a diffusers folder or a single SGM checkpoint file
 * (rules in gen_load.h). */
#include "gen_load.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static void path_join(char *out, size_t n, const char *dir, const char *name) { snprintf(out, n, "%s/%s", dir, name); }

int rb_gen_single_file(const rb_gen_params *p) {
    struct stat st;
    return p->model && stat(p->model, &st) == 0 && S_ISREG(st.st_mode);
}

/* `dir`/`name` into out when dir is set and the file exists; 0 otherwise. */
static int optional_file(char *out, size_t n, const char *dir, const char *name) {
    struct stat st;
    if (!dir)
        return 0;
    path_join(out, n, dir, name);
    return stat(out, &st) == 0 && S_ISREG(st.st_mode);
}

rb_status rb_gen_check_sources(const rb_gen_params *p) {
    if (rb_gen_single_file(p) && !p->tokenizers_dir)
        return rb_error(RB_ERR_INVALID, "generate: %s is a single checkpoint file, which holds no tokenizers: give a "
                        "tokenizers folder (tokenizer/ and tokenizer_2/ of the SDXL base repository)", p->model);
    return RB_OK;
}

rb_status rb_gen_load_sched_config(const rb_gen_params *p, rb_sched_config *sc) {
    char path[4096];
    if (!rb_gen_single_file(p)) {
        path_join(path, sizeof path, p->model, "scheduler/scheduler_config.json");
        return rb_sched_config_load(sc, path);
    }
    if (optional_file(path, sizeof path, p->tokenizers_dir, "scheduler/scheduler_config.json"))
        return rb_sched_config_load(sc, path);
    rb_sched_config_init(sc); /* SDXL base's EulerDiscreteScheduler config */
    return RB_OK;
}

rb_status rb_gen_load_tokenizers(const rb_gen_params *p, rb_clip_tokenizer **tok1, rb_clip_tokenizer **tok2) {
    char path[4096];
    const char *dir = rb_gen_single_file(p) ? p->tokenizers_dir : p->model;
    path_join(path, sizeof path, dir, "tokenizer");
    RB_TRY(rb_clip_tokenizer_load(tok1, path));
    path_join(path, sizeof path, dir, "tokenizer_2");
    return rb_clip_tokenizer_load(tok2, path);
}

/* One encoder of a single file: config.json from model_config_dir/<sub>/ when present, else shapes. */
static rb_status single_text_encoder(const rb_gen_params *p, rb_clip_text *m, const char *sub,
                                     rb_clip_text_layout layout) {
    char path[4096], name[64];
    rb_clip_text_config cfg;
    snprintf(name, sizeof name, "%s/config.json", sub);
    int have = optional_file(path, sizeof path, p->model_config_dir, name);
    if (have)
        RB_TRY(rb_clip_text_config_load(&cfg, path));
    return rb_clip_text_load_file(m, p->model, layout, have ? &cfg : NULL);
}

rb_status rb_gen_load_text_encoders(const rb_gen_params *p, rb_clip_text *te1, rb_clip_text *te2) {
    char path[4096];
    if (rb_gen_single_file(p)) {
        RB_TRY(single_text_encoder(p, te1, "text_encoder", RB_CLIP_TEXT_SGM_L));
        return single_text_encoder(p, te2, "text_encoder_2", RB_CLIP_TEXT_SGM_G);
    }
    path_join(path, sizeof path, p->model, "text_encoder");
    RB_TRY(rb_clip_text_load(te1, path));
    path_join(path, sizeof path, p->model, "text_encoder_2");
    return rb_clip_text_load(te2, path);
}

rb_status rb_gen_unet_config(const rb_gen_params *p, rb_unet_config *cfg) {
    char path[4096];
    if (!rb_gen_single_file(p)) {
        path_join(path, sizeof path, p->model, "unet/config.json");
        return rb_unet_config_load(cfg, path);
    }
    if (optional_file(path, sizeof path, p->model_config_dir, "unet/config.json"))
        return rb_unet_config_load(cfg, path);
    rb_weights w;
    RB_TRY(rb_weights_open(&w, p->model));
    rb_unet_layout layout;
    char prefix[32];
    rb_status s = rb_unet_detect_layout(&w, &layout, prefix, sizeof prefix);
    if (s == RB_OK && (s = rb_unet_config_detect(cfg, &w, layout, prefix)) == RB_OK)
        s = rb_unet_config_check(cfg, p->model);
    rb_weights_close(&w);
    return s;
}

rb_status rb_gen_load_unet(const rb_gen_params *p, rb_unet *m) {
    char path[4096];
    if (!rb_gen_single_file(p)) {
        path_join(path, sizeof path, p->model, "unet");
        return rb_unet_load_dir(m, path);
    }
    int have = optional_file(path, sizeof path, p->model_config_dir, "unet/config.json");
    return rb_unet_load(m, have ? path : NULL, p->model);
}

rb_status rb_gen_load_vae(const rb_gen_params *p, rb_vae *m) {
    char path[4096];
    if (!rb_gen_single_file(p)) {
        path_join(path, sizeof path, p->model, "vae");
        return rb_vae_load(m, path, NULL);
    }
    rb_vae_config cfg;
    if (optional_file(path, sizeof path, p->model_config_dir, "vae/config.json"))
        RB_TRY(rb_vae_config_load(&cfg, path));
    else
        rb_vae_config_sdxl(&cfg);
    return rb_vae_load(m, p->model, &cfg);
}
