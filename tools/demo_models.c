/* `relbooth demo`'s model set: tiny random-weight models in the official on-disk layouts (diffusers
 * SDXL folder, CLIP vision folder, MS-Diffusion adapter, diffusers LoRA), deterministic (torch CPU
 * generator, fixed seed), matrices ~N(0, 1/fan_in) like the golden test models, norms 1, biases small.
 * Key names follow transformers / diffusers / MS-Diffusion; the UNet's come from rb_unet_visit_params,
 * so they are exactly what the loader asks for. */
#include "demo_models.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "core/mem.h"
#include "core/rng.h"
#include "core/status.h"
#include "io/safetensors.h"
#include "models/lora.h"
#include "models/unet.h"

/* ---- a list of named random tensors ---- */

enum { K_MAT, K_NORM, K_BIAS };

typedef struct wl {
    int n, cap;
    char **names;
    rb_tensor **ts;
    rb_rng *g;
    rb_status s;
} wl;

static void wl_free(wl *l) {
    for (int i = 0; i < l->n; i++) {
        rb_free(l->names[i]);
        rb_tensor_free(l->ts[i]);
        rb_free(l->ts[i]);
    }
    rb_free(l->names);
    rb_free(l->ts);
    memset(l, 0, sizeof *l);
}

static rb_status fill(rb_rng *g, rb_tensor *t, int kind) {
    int64_t n = rb_numel(t), fan_in = 1;
    for (int d = t->ndim > 1 ? 1 : 0; d < t->ndim; d++)
        fan_in *= t->shape[d];
    float *x = t->data;
    RB_TRY(rb_rng_randn(g, x, n));
    float sd = kind == K_MAT ? 1.0f / sqrtf((float)fan_in) : kind == K_NORM ? 0.05f : 0.02f;
    for (int64_t i = 0; i < n; i++)
        x[i] = (kind == K_NORM ? 1.0f : 0.0f) + sd * x[i];
    return RB_OK;
}

static rb_tensor *wl_add(wl *l, int kind, int ndim, const int64_t *shape, const char *fmt, ...) RB_PRINTF(5, 6);
static rb_tensor *wl_add(wl *l, int kind, int ndim, const int64_t *shape, const char *fmt, ...) {
    if (l->s != RB_OK)
        return NULL;
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 256;
        char **nn = rb_alloc((size_t)cap * sizeof *nn, "demo weights");
        rb_tensor **nt = rb_alloc((size_t)cap * sizeof *nt, "demo weights");
        if (!nn || !nt) {
            rb_free(nn);
            rb_free(nt);
            l->s = RB_ERR_OOM;
            return NULL;
        }
        if (l->n) {
            memcpy(nn, l->names, (size_t)l->n * sizeof *nn);
            memcpy(nt, l->ts, (size_t)l->n * sizeof *nt);
        }
        rb_free(l->names);
        rb_free(l->ts);
        l->names = nn, l->ts = nt, l->cap = cap;
    }
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    size_t len = strlen(name) + 1;
    char *nm = rb_alloc(len, "demo weight name");
    rb_tensor *t = rb_calloc(sizeof *t, "demo tensor");
    if (!nm || !t || (l->s = rb_tensor_alloc(t, RB_F32, ndim, shape, "demo weight")) != RB_OK ||
        (l->s = fill(l->g, t, kind)) != RB_OK) {
        if (t && t->data)
            rb_tensor_free(t);
        rb_free(nm);
        rb_free(t);
        if (l->s == RB_OK)
            l->s = RB_ERR_OOM;
        return NULL;
    }
    memcpy(nm, name, len);
    l->names[l->n] = nm;
    l->ts[l->n++] = t;
    return t;
}

#define V1(a) 1, (int64_t[]){a}
#define V2(a, b) 2, (int64_t[]){a, b}
#define V3(a, b, c) 3, (int64_t[]){a, b, c}
#define V4(a, b, c, d) 4, (int64_t[]){a, b, c, d}

static void linear(wl *l, int64_t out, int64_t in, int bias, const char *name) {
    wl_add(l, K_MAT, V2(out, in), "%s.weight", name);
    if (bias)
        wl_add(l, K_BIAS, V1(out), "%s.bias", name);
}

static void norm(wl *l, int64_t c, const char *name) {
    wl_add(l, K_NORM, V1(c), "%s.weight", name);
    wl_add(l, K_BIAS, V1(c), "%s.bias", name);
}

static void conv(wl *l, int64_t out, int64_t in, int k, const char *name) {
    wl_add(l, K_MAT, V4(out, in, k, k), "%s.weight", name);
    wl_add(l, K_BIAS, V1(out), "%s.bias", name);
}

static rb_status wl_write(wl *l, const char *path) {
    if (l->s != RB_OK)
        return l->s;
    return rb_st_write(path, l->n, (const char *const *)l->names, (const rb_tensor *const *)l->ts, 0, NULL, NULL);
}

static rb_status write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f)
        return rb_error(RB_ERR_IO, "demo: cannot write %s", path);
    int ok = fputs(text, f) >= 0;
    ok &= fclose(f) == 0;
    return ok ? RB_OK : rb_error(RB_ERR_IO, "demo: write failed: %s", path);
}

static rb_status mkdir_p(const char *dir, const char *sub) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, sub);
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        return rb_error(RB_ERR_IO, "demo: cannot create %s", p);
    return RB_OK;
}

/* ---- tokenizer: a tiny byte-level BPE vocabulary ---- */

/* GPT-2's byte -> unicode symbol map (as in text/clip_tokenizer.c). */
static void byte_symbol(int b, char out[3]) {
    static int map[256];
    static int ready;
    if (!ready) {
        int n = 0;
        for (int i = 0; i < 256; i++) {
            int printable = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF);
            map[i] = printable ? i : 256 + n++;
        }
        ready = 1;
    }
    int cp = map[b];
    if (cp < 0x80) {
        out[0] = (char)cp, out[1] = 0;
    } else { /* all code points are < 0x800: two bytes */
        out[0] = (char)(0xC0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3F)), out[2] = 0;
    }
}

/* A few merges so that the demo's words are single tokens ("cat</w>", "dog</w>", ...). */
static const char *const demo_merges[][2] = {
    {"c", "a"}, {"ca", "t</w>"}, {"b", "e"}, {"be", "a"}, {"bea", "r</w>"}, {"i", "s</w>"}, {"h", "u"},
    {"hu", "g"}, {"hug", "g"}, {"hugg", "i"}, {"huggi", "n"}, {"huggin", "g</w>"}, {"t", "h"}, {"th", "e</w>"},
};
enum { N_MERGES = sizeof demo_merges / sizeof *demo_merges };
/* vocabulary: 256 bytes, 256 bytes + "</w>", one token per merge, then the two specials (the last
 * id is <|endoftext|>, as in CLIP: the text encoders pool at argmax(ids)) */
#define DEMO_VOCAB (512 + N_MERGES + 2)

static rb_status write_tokenizer(const char *dir) {
    json_t *vocab = json_object();
    char merges[4096];
    size_t k = (size_t)snprintf(merges, sizeof merges, "#version: 0.2\n");
    int id = 0;
    for (int w = 0; w < 2; w++)
        for (int b = 0; b < 256; b++) {
            char sym[3], tok[8];
            byte_symbol(b, sym);
            snprintf(tok, sizeof tok, "%s%s", sym, w ? "</w>" : "");
            json_object_set_new(vocab, tok, json_integer(id++));
        }
    for (int i = 0; i < N_MERGES; i++) {
        char tok[64];
        snprintf(tok, sizeof tok, "%s%s", demo_merges[i][0], demo_merges[i][1]);
        json_object_set_new(vocab, tok, json_integer(id++));
        k += (size_t)snprintf(merges + k, sizeof merges - k, "%s %s\n", demo_merges[i][0], demo_merges[i][1]);
    }
    json_object_set_new(vocab, "<|startoftext|>", json_integer(id++));
    json_object_set_new(vocab, "<|endoftext|>", json_integer(id++));
    char path[8400];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    int bad = json_dump_file(vocab, path, JSON_SORT_KEYS | JSON_ENSURE_ASCII);
    json_decref(vocab);
    if (bad)
        return rb_error(RB_ERR_IO, "demo: cannot write %s", path);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    return write_text(path, merges);
}

/* ---- CLIP text and vision (transformers' key names) ---- */

static void clip_layers(wl *l, const char *pre, int D, int I, int layers) {
    char n[256];
    for (int i = 0; i < layers; i++) {
        static const char *const proj[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
        for (int p = 0; p < 4; p++) {
            snprintf(n, sizeof n, "%s.encoder.layers.%d.self_attn.%s", pre, i, proj[p]);
            linear(l, D, D, 1, n);
        }
        snprintf(n, sizeof n, "%s.encoder.layers.%d.layer_norm1", pre, i);
        norm(l, D, n);
        snprintf(n, sizeof n, "%s.encoder.layers.%d.layer_norm2", pre, i);
        norm(l, D, n);
        snprintf(n, sizeof n, "%s.encoder.layers.%d.mlp.fc1", pre, i);
        linear(l, I, D, 1, n);
        snprintf(n, sizeof n, "%s.encoder.layers.%d.mlp.fc2", pre, i);
        linear(l, D, I, 1, n);
    }
}

static rb_status text_encoder(rb_rng *g, const char *dir, int D, int I, int heads, int layers, int proj, const char *act) {
    wl l = {.g = g};
    wl_add(&l, K_MAT, V2(DEMO_VOCAB, D), "text_model.embeddings.token_embedding.weight");
    wl_add(&l, K_MAT, V2(77, D), "text_model.embeddings.position_embedding.weight");
    clip_layers(&l, "text_model", D, I, layers);
    norm(&l, D, "text_model.final_layer_norm");
    if (proj)
        wl_add(&l, K_MAT, V2(proj, D), "text_projection.weight");
    char path[8400], cfg[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    rb_status s = wl_write(&l, path);
    wl_free(&l);
    snprintf(cfg, sizeof cfg,
             "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"clip_text_model\",\n  \"hidden_act\": \"%s\",\n"
             "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_attention_heads\": %d,\n"
             "  \"num_hidden_layers\": %d,\n  \"projection_dim\": %d,\n  \"max_position_embeddings\": 77,\n"
             "  \"layer_norm_eps\": 1e-05,\n  \"vocab_size\": %d,\n  \"bos_token_id\": 0,\n  \"eos_token_id\": 2,\n"
             "  \"pad_token_id\": 1,\n  \"torch_dtype\": \"float32\"\n}\n",
             proj ? "CLIPTextModelWithProjection" : "CLIPTextModel", act, D, I, heads, layers, proj ? proj : D,
             DEMO_VOCAB);
    snprintf(path, sizeof path, "%s/config.json", dir);
    return s == RB_OK ? write_text(path, cfg) : s;
}

static const char preprocessor_json[] =
    "{\n  \"crop_size\": {\"height\": 224, \"width\": 224},\n  \"do_center_crop\": true,\n"
    "  \"do_convert_rgb\": true,\n  \"do_normalize\": true,\n  \"do_rescale\": true,\n  \"do_resize\": true,\n"
    "  \"image_mean\": [0.48145466, 0.4578275, 0.40821073],\n  \"image_processor_type\": \"CLIPImageProcessor\",\n"
    "  \"image_std\": [0.26862954, 0.26130258, 0.27577711],\n  \"resample\": 3,\n"
    "  \"rescale_factor\": 0.00392156862745098,\n  \"size\": {\"shortest_edge\": 224}\n}\n";

static rb_status image_encoder(rb_rng *g, const char *dir) {
    const int D = DEMO_VISION_DIM, I = 4 * D, layers = 2, patch = 14, proj = 16, pos = (224 / patch) * (224 / patch) + 1;
    wl l = {.g = g};
    wl_add(&l, K_MAT, V1(D), "vision_model.embeddings.class_embedding");
    wl_add(&l, K_MAT, V4(D, 3, patch, patch), "vision_model.embeddings.patch_embedding.weight");
    wl_add(&l, K_MAT, V2(pos, D), "vision_model.embeddings.position_embedding.weight");
    norm(&l, D, "vision_model.pre_layrnorm"); /* sic: transformers' name */
    clip_layers(&l, "vision_model", D, I, layers);
    norm(&l, D, "vision_model.post_layernorm");
    wl_add(&l, K_MAT, V2(proj, D), "visual_projection.weight");
    char path[8400], cfg[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    rb_status s = wl_write(&l, path);
    wl_free(&l);
    snprintf(cfg, sizeof cfg,
             "{\n  \"architectures\": [\"CLIPVisionModelWithProjection\"],\n  \"model_type\": \"clip_vision_model\",\n"
             "  \"hidden_act\": \"gelu\",\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n"
             "  \"num_attention_heads\": 4,\n  \"num_hidden_layers\": %d,\n  \"image_size\": 224,\n"
             "  \"patch_size\": %d,\n  \"num_channels\": 3,\n  \"projection_dim\": %d,\n  \"layer_norm_eps\": 1e-05\n}\n",
             D, I, layers, patch, proj);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (s == RB_OK)
        s = write_text(path, cfg);
    snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
    return s == RB_OK ? write_text(path, preprocessor_json) : s;
}

/* ---- VAE (diffusers AutoencoderKL names) ---- */

static void resnet(wl *l, const char *pre, int64_t in, int64_t out) {
    char n[256];
    snprintf(n, sizeof n, "%s.norm1", pre), norm(l, in, n);
    snprintf(n, sizeof n, "%s.conv1", pre), conv(l, out, in, 3, n);
    snprintf(n, sizeof n, "%s.norm2", pre), norm(l, out, n);
    snprintf(n, sizeof n, "%s.conv2", pre), conv(l, out, out, 3, n);
    if (in != out)
        snprintf(n, sizeof n, "%s.conv_shortcut", pre), conv(l, out, in, 1, n);
}

static void vae_mid(wl *l, const char *pre, int64_t C) {
    char n[256];
    for (int j = 0; j < 2; j++)
        snprintf(n, sizeof n, "%s.mid_block.resnets.%d", pre, j), resnet(l, n, C, C);
    snprintf(n, sizeof n, "%s.mid_block.attentions.0.group_norm", pre), norm(l, C, n);
    static const char *const p[] = {"to_q", "to_k", "to_v", "to_out.0"};
    for (int k = 0; k < 4; k++)
        snprintf(n, sizeof n, "%s.mid_block.attentions.0.%s", pre, p[k]), linear(l, C, C, 1, n);
}

static const char vae_json[] =
    "{\n  \"_class_name\": \"AutoencoderKL\",\n  \"_diffusers_version\": \"0.27.2\",\n  \"act_fn\": \"silu\",\n"
    "  \"block_out_channels\": [8, 16, 32, 32],\n  \"down_block_types\": [\"DownEncoderBlock2D\", "
    "\"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"],\n  \"force_upcast\": true,\n"
    "  \"in_channels\": 3,\n  \"latent_channels\": 4,\n  \"layers_per_block\": 2,\n  \"norm_num_groups\": 4,\n"
    "  \"out_channels\": 3,\n  \"sample_size\": 128,\n  \"scaling_factor\": 0.13025,\n  \"up_block_types\": "
    "[\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]\n}\n";

static rb_status vae(rb_rng *g, const char *dir) {
    const int64_t ch[4] = {8, 16, 32, 32}, L = 4, C = ch[3];
    wl l = {.g = g};
    char n[256];
    conv(&l, ch[0], 3, 3, "encoder.conv_in");
    for (int i = 0; i < 4; i++) {
        int64_t in = i ? ch[i - 1] : ch[0];
        for (int j = 0; j < 2; j++)
            snprintf(n, sizeof n, "encoder.down_blocks.%d.resnets.%d", i, j), resnet(&l, n, j ? ch[i] : in, ch[i]);
        if (i < 3)
            snprintf(n, sizeof n, "encoder.down_blocks.%d.downsamplers.0.conv", i), conv(&l, ch[i], ch[i], 3, n);
    }
    vae_mid(&l, "encoder", C);
    norm(&l, C, "encoder.conv_norm_out");
    conv(&l, 2 * L, C, 3, "encoder.conv_out");
    conv(&l, 2 * L, 2 * L, 1, "quant_conv");
    conv(&l, L, L, 1, "post_quant_conv");
    conv(&l, C, L, 3, "decoder.conv_in");
    vae_mid(&l, "decoder", C);
    int64_t prev = C;
    for (int i = 0; i < 4; i++) {
        int64_t out = ch[3 - i];
        for (int j = 0; j < 3; j++)
            snprintf(n, sizeof n, "decoder.up_blocks.%d.resnets.%d", i, j), resnet(&l, n, j ? out : prev, out);
        if (i < 3)
            snprintf(n, sizeof n, "decoder.up_blocks.%d.upsamplers.0.conv", i), conv(&l, out, out, 3, n);
        prev = out;
    }
    norm(&l, ch[0], "decoder.conv_norm_out");
    conv(&l, 3, ch[0], 3, "decoder.conv_out");
    char path[8400];
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    rb_status s = wl_write(&l, path);
    wl_free(&l);
    snprintf(path, sizeof path, "%s/config.json", dir);
    return s == RB_OK ? write_text(path, vae_json) : s;
}

/* ---- UNet: the names and shapes the loader asks for ---- */

static const char unet_json[] =
    "{\n  \"_class_name\": \"UNet2DConditionModel\",\n  \"_diffusers_version\": \"0.27.2\",\n  \"act_fn\": \"silu\",\n"
    "  \"addition_embed_type\": \"text_time\",\n  \"addition_embed_type_num_heads\": 64,\n"
    "  \"addition_time_embed_dim\": 8,\n  \"attention_head_dim\": [1, 2, 4],\n  \"block_out_channels\": [8, 16, 32],\n"
    "  \"center_input_sample\": false,\n  \"conv_in_kernel\": 3,\n  \"conv_out_kernel\": 3,\n"
    "  \"cross_attention_dim\": 36,\n  \"down_block_types\": [\"DownBlock2D\", \"CrossAttnDownBlock2D\", "
    "\"CrossAttnDownBlock2D\"],\n  \"downsample_padding\": 1,\n  \"flip_sin_to_cos\": true,\n  \"freq_shift\": 0,\n"
    "  \"in_channels\": 4,\n  \"layers_per_block\": 2,\n  \"mid_block_scale_factor\": 1,\n"
    "  \"mid_block_type\": \"UNetMidBlock2DCrossAttn\",\n  \"norm_eps\": 1e-05,\n  \"norm_num_groups\": 4,\n"
    "  \"num_attention_heads\": null,\n  \"out_channels\": 4,\n  \"projection_class_embeddings_input_dim\": 60,\n"
    "  \"sample_size\": 16,\n  \"time_embedding_type\": \"positional\",\n  \"transformer_layers_per_block\": [1, 1, 2],\n"
    "  \"up_block_types\": [\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"UpBlock2D\"],\n"
    "  \"upcast_attention\": null,\n  \"use_linear_projection\": true\n}\n";

static void visit(void *user, const rb_unet_param *p) {
    wl *l = user;
    const char *dot = strrchr(p->name, '.');
    int is_bias = dot && !strcmp(dot, ".bias");
    int kind = strstr(p->name, "norm") && !is_bias ? K_NORM : is_bias ? K_BIAS : K_MAT;
    wl_add(l, kind, p->ndim, p->shape, "%s", p->name);
}

static rb_status unet(rb_rng *g, const char *dir, rb_unet *skel) {
    char path[8400];
    snprintf(path, sizeof path, "%s/config.json", dir);
    RB_TRY(write_text(path, unet_json));
    rb_unet_config cfg;
    RB_TRY(rb_unet_config_load(&cfg, path));
    RB_TRY(rb_unet_init(skel, &cfg));
    wl l = {.g = g};
    rb_unet_visit_params(skel, visit, &l);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    rb_status s = wl_write(&l, path);
    wl_free(&l);
    return s;
}

/* ---- MS-Diffusion adapter: image_proj (grounding resampler) + per-processor to_k_ip/to_v_ip ---- */

static rb_status adapter(rb_rng *g, const char *path, const rb_unet *skel) {
    const int64_t D = 32, Q = 16, E = DEMO_VISION_DIM, O = skel->cfg.cross_attention_dim, P = DEMO_PHRASE_DIM;
    const int64_t ground_in = P + 64, hid = 160;
    wl l = {.g = g};
    wl_add(&l, K_MAT, V3(1, Q, D), "image_proj.grounding_latents");
    linear(&l, D, E, 1, "image_proj.proj_in");
    linear(&l, O, D, 1, "image_proj.proj_out");
    norm(&l, O, "image_proj.norm_out");
    linear(&l, hid, ground_in, 1, "image_proj.latent_proj.0");
    linear(&l, Q * D, hid, 1, "image_proj.latent_proj.2");
    norm(&l, D, "image_proj.latent_norm");
    norm(&l, D, "image_proj.attention_norm");
    char n[256];
    for (int i = 0; i < DEMO_RESAMPLER_DEPTH; i++) {
        snprintf(n, sizeof n, "image_proj.layers.%d.0.norm1", i), norm(&l, D, n);
        snprintf(n, sizeof n, "image_proj.layers.%d.0.norm2", i), norm(&l, D, n);
        snprintf(n, sizeof n, "image_proj.layers.%d.0.to_q", i), linear(&l, D, D, 0, n);
        snprintf(n, sizeof n, "image_proj.layers.%d.0.to_kv", i), linear(&l, 2 * D, D, 0, n);
        snprintf(n, sizeof n, "image_proj.layers.%d.0.to_out", i), linear(&l, D, D, 0, n);
        snprintf(n, sizeof n, "image_proj.layers.%d.1.0", i), norm(&l, D, n);
        snprintf(n, sizeof n, "image_proj.layers.%d.1.1", i), linear(&l, 4 * D, D, 0, n);
        snprintf(n, sizeof n, "image_proj.layers.%d.1.3", i), linear(&l, D, 4 * D, 0, n);
    }
    wl_add(&l, K_MAT, V3(1, 4, O), "dummy_image_tokens");
    for (int i = 0; i < skel->n_attn; i++) {
        const rb_unet_attn *a = skel->attn[i];
        if (!a->cross)
            continue;
        snprintf(n, sizeof n, "ms_adapter.%d.to_k_ip", i), linear(&l, a->dim, O, 0, n);
        snprintf(n, sizeof n, "ms_adapter.%d.to_v_ip", i), linear(&l, a->dim, O, 0, n);
    }
    rb_status s = l.s == RB_OK ? rb_demo_write_adapter(path, l.n, (const char *const *)l.names,
                                                       (const rb_tensor *const *)l.ts)
                               : l.s;
    wl_free(&l);
    return s;
}

/* ---- RelationLoRA: rank 4 on every cross-attention's q/k/v/out (as DreamRelation trains it) ---- */

static rb_status relation_lora(rb_rng *g, const char *path, const rb_unet *skel) {
    rb_lora_set set;
    rb_lora_init(&set);
    rb_status s = RB_OK;
    static const char *const proj[] = {"to_q", "to_k", "to_v", "to_out.0"};
    for (int i = 0; s == RB_OK && i < skel->n_attn; i++) {
        const rb_unet_attn *a = skel->attn[i];
        if (!a->cross)
            continue;
        for (int p = 0; s == RB_OK && p < 4; p++) {
            char module[160];
            snprintf(module, sizeof module, "%s.%s", a->name, proj[p]);
            int64_t in = p == 1 || p == 2 ? a->context_dim : a->dim;
            rb_lora_pair *pr = rb_lora_add(&set, "unet", module, 4, in, a->dim, 4.0f);
            if (!pr) {
                s = RB_ERR_OOM;
                break;
            }
            if ((s = fill(g, pr->down, K_MAT)) == RB_OK && (s = fill(g, pr->up, K_MAT)) == RB_OK)
                for (int64_t k = 0; k < rb_numel(pr->up); k++) /* a trained B is small */
                    ((float *)pr->up->data)[k] *= 0.5f;
        }
    }
    if (s == RB_OK)
        s = rb_lora_save(&set, path);
    rb_lora_free(&set);
    return s;
}

/* ---- the whole set ---- */

static const char model_index_json[] =
    "{\n  \"_class_name\": \"StableDiffusionXLPipeline\",\n  \"_diffusers_version\": \"0.27.2\",\n"
    "  \"force_zeros_for_empty_prompt\": true,\n  \"scheduler\": [\"diffusers\", \"EulerDiscreteScheduler\"],\n"
    "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
    "  \"text_encoder_2\": [\"transformers\", \"CLIPTextModelWithProjection\"],\n"
    "  \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],\n  \"tokenizer_2\": [\"transformers\", \"CLIPTokenizer\"],\n"
    "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n}\n";

/* SDXL base's scheduler config */
static const char scheduler_json[] =
    "{\n  \"_class_name\": \"EulerDiscreteScheduler\",\n  \"_diffusers_version\": \"0.27.2\",\n  \"beta_end\": 0.012,\n"
    "  \"beta_schedule\": \"scaled_linear\",\n  \"beta_start\": 0.00085,\n  \"clip_sample\": false,\n"
    "  \"interpolation_type\": \"linear\",\n  \"num_train_timesteps\": 1000,\n  \"prediction_type\": \"epsilon\",\n"
    "  \"sample_max_value\": 1.0,\n  \"set_alpha_to_one\": false,\n  \"skip_prk_steps\": true,\n"
    "  \"steps_offset\": 1,\n  \"timestep_spacing\": \"leading\",\n  \"trained_betas\": null,\n"
    "  \"use_karras_sigmas\": false\n}\n";

rb_status rb_demo_write_models(const char *out, uint64_t seed) {
    char sdxl[4096], p[4200];
    snprintf(sdxl, sizeof sdxl, "%s/tiny-sdxl", out);
    RB_TRY(mkdir_p(out, "tiny-sdxl"));
    static const char *const subs[] = {"scheduler", "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2",
                                       "unet", "vae"};
    for (size_t i = 0; i < sizeof subs / sizeof *subs; i++)
        RB_TRY(mkdir_p(sdxl, subs[i]));
    RB_TRY(mkdir_p(out, "image_encoder"));
    snprintf(p, sizeof p, "%s/model_index.json", sdxl);
    RB_TRY(write_text(p, model_index_json));
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", sdxl);
    RB_TRY(write_text(p, scheduler_json));
    snprintf(p, sizeof p, "%s/tokenizer", sdxl);
    RB_TRY(write_tokenizer(p));
    snprintf(p, sizeof p, "%s/tokenizer_2", sdxl);
    RB_TRY(write_tokenizer(p));
    rb_rng g;
    rb_rng_torch_cpu(&g, seed);
    rb_unet skel = {0};
    rb_status s = RB_OK;
    /* CLIP-L-like (quick_gelu, no projection) and bigG-like (gelu, projection); 16 + 20 = the UNet's 36 */
    snprintf(p, sizeof p, "%s/text_encoder", sdxl);
    s = text_encoder(&g, p, DEMO_PHRASE_DIM, 64, 2, 3, 0, "quick_gelu");
    snprintf(p, sizeof p, "%s/text_encoder_2", sdxl);
    if (s == RB_OK)
        s = text_encoder(&g, p, 20, 80, 4, 3, 12, "gelu");
    snprintf(p, sizeof p, "%s/unet", sdxl);
    if (s == RB_OK)
        s = unet(&g, p, &skel);
    snprintf(p, sizeof p, "%s/vae", sdxl);
    if (s == RB_OK)
        s = vae(&g, p);
    snprintf(p, sizeof p, "%s/image_encoder", out);
    if (s == RB_OK)
        s = image_encoder(&g, p);
    snprintf(p, sizeof p, "%s/ms_adapter.bin", out);
    if (s == RB_OK)
        s = adapter(&g, p, &skel);
    snprintf(p, sizeof p, "%s/pytorch_lora_weights.safetensors", out);
    if (s == RB_OK)
        s = relation_lora(&g, p, &skel);
    rb_unet_free(&skel);
    return s;
}
