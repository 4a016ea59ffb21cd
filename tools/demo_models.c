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
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/mem.h"
#include "core/rng.h"
#include "core/status.h"
#include "io/safetensors.h"
#include "models/lora.h"
#include "models/unet.h"

/* ---- a list of named random tensors, generated while they are written ---- */

enum { K_MAT, K_NORM, K_BIAS };

typedef struct wentry {
    char *name;
    int kind, ndim;
    int64_t shape[4];
} wentry;

typedef struct wl {
    int n, cap;
    wentry *e;
    const rb_demo_opts *o;
    rb_rng *g;       /* tiny: torch CPU randn, in list order */
    uint64_t *count; /* full: tensors hashed so far (each tensor's hash seed) */
    rb_status s;
} wl;

static void wl_free(wl *l) {
    for (int i = 0; i < l->n; i++)
        rb_free(l->e[i].name);
    rb_free(l->e);
    l->e = NULL, l->n = l->cap = 0;
}

static int64_t numel_of(const wentry *e) {
    int64_t n = 1;
    for (int d = 0; d < e->ndim; d++)
        n *= e->shape[d];
    return n;
}

static int64_t fan_in_of(const wentry *e) {
    int64_t f = 1;
    for (int d = e->ndim > 1 ? 1 : 0; d < e->ndim; d++)
        f *= e->shape[d];
    return f;
}

/* full size: matrices bf16, the rest f32; tiny: all f32 */
static rb_dtype dtype_of(const wl *l, const wentry *e) { return l->o->full && e->kind == K_MAT ? RB_BF16 : RB_F32; }

/* tiny: N(0, 1/fan_in) matrices, 1 + N(0, 0.05) norms, N(0, 0.02) biases (the golden models' recipe) */
static rb_status fill_randn(rb_rng *g, float *x, int64_t n, int64_t fan_in, int kind) {
    RB_TRY(rb_rng_randn(g, x, n));
    float sd = kind == K_MAT ? 1.0f / sqrtf((float)fan_in) : kind == K_NORM ? 0.05f : 0.02f;
    for (int64_t i = 0; i < n; i++)
        x[i] = (kind == K_NORM ? 1.0f : 0.0f) + sd * x[i];
    return RB_OK;
}

float rb_demo_hash_uniform(uint64_t seed, uint64_t i) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

/* full size: U(+-sqrt(3 / fan_in)) matrices (variance 1/fan_in, as bench unet), norm gains 1,
 * U(+-0.02) biases; elements [off, off + n) of a tensor, in parallel */
static void fill_hash(void *out, rb_dtype dt, uint64_t seed, int64_t off, int64_t n, int64_t fan_in, int kind) {
    float a = kind == K_MAT ? sqrtf(3.0f / (float)fan_in) : 0.02f;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        float v = kind == K_NORM ? 1.0f : a * rb_demo_hash_uniform(seed, (uint64_t)(off + i));
        if (dt == RB_BF16)
            ((uint16_t *)out)[i] = rb_f32_to_bf16(v);
        else
            ((float *)out)[i] = v;
    }
}

/* The values of entry e (all of them: callers write small tensors whole, big ones chunk by chunk). */
static rb_status wl_fill(wl *l, const wentry *e, void *out, int64_t off, int64_t n, uint64_t seed) {
    if (!l->o->full)
        return fill_randn(l->g, out, n, fan_in_of(e), e->kind);
    fill_hash(out, dtype_of(l, e), seed, off, n, fan_in_of(e), e->kind);
    return RB_OK;
}

static void wl_add(wl *l, int kind, int ndim, const int64_t *shape, const char *fmt, ...) RB_PRINTF(5, 6);
static void wl_add(wl *l, int kind, int ndim, const int64_t *shape, const char *fmt, ...) {
    if (l->s != RB_OK)
        return;
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 256;
        wentry *ne = rb_calloc((size_t)cap * sizeof *ne, "demo weights");
        if (!ne) {
            l->s = RB_ERR_OOM;
            return;
        }
        if (l->n)
            memcpy(ne, l->e, (size_t)l->n * sizeof *ne);
        rb_free(l->e);
        l->e = ne, l->cap = cap;
    }
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    size_t len = strlen(name) + 1;
    wentry *e = &l->e[l->n];
    e->name = rb_alloc(len, "demo weight name");
    if (!e->name) {
        l->s = RB_ERR_OOM;
        return;
    }
    memcpy(e->name, name, len);
    e->kind = kind, e->ndim = ndim;
    memcpy(e->shape, shape, (size_t)ndim * sizeof *shape);
    l->n++;
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

/* The list as a safetensors file, streamed: the header (every shape and offset is known up front),
 * then each tensor's values generated in chunks of at most 16 Mi elements, so writing a 5 GB UNet
 * needs one chunk of memory. Written to <path>.tmp and renamed. */
static rb_status wl_write(wl *l, const char *path) {
    if (l->s != RB_OK)
        return l->s;
    json_t *h = json_object();
    uint64_t off = 0;
    for (int i = 0; h && i < l->n; i++) {
        const wentry *e = &l->e[i];
        rb_dtype dt = dtype_of(l, e);
        uint64_t bytes = (uint64_t)numel_of(e) * rb_dtype_size(dt);
        json_t *shape = json_array();
        for (int d = 0; d < e->ndim; d++)
            json_array_append_new(shape, json_integer(e->shape[d]));
        json_object_set_new(h, e->name, json_pack("{s:s, s:o, s:[I, I]}", "dtype", dt == RB_BF16 ? "BF16" : "F32",
                                                  "shape", shape, "data_offsets", (json_int_t)off,
                                                  (json_int_t)(off + bytes)));
        off += bytes;
    }
    char *hs = h ? json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(h);
    if (!hs)
        return rb_error(RB_ERR_OOM, "%s: safetensors header", path);
    size_t hl = strlen(hs), padded = (hl + 7) / 8 * 8;
    char tmp[4400];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(hs);
        return rb_error(RB_ERR_IO, "demo: cannot create %s", tmp);
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hs, 1, hl, f) == hl;
    for (size_t i = hl; ok && i < padded; i++)
        ok = fputc(' ', f) != EOF;
    free(hs);
    const int64_t chunk = (int64_t)16 << 20;
    void *buf = NULL;
    rb_status s = ok ? RB_OK : rb_error(RB_ERR_IO, "demo: write failed: %s", tmp);
    double done = 0;
    for (int i = 0; s == RB_OK && i < l->n; i++) {
        const wentry *e = &l->e[i];
        rb_dtype dt = dtype_of(l, e);
        int64_t n = numel_of(e), step = l->o->full ? chunk : n; /* randn: one call per tensor, as before */
        uint64_t seed = l->count ? (++*l->count) * 0x632BE59BD9B4E019ull + l->o->seed : 0;
        rb_free(buf);
        buf = rb_alloc((size_t)(n < step ? n : step) * rb_dtype_size(dt) + 1, "demo weight chunk");
        if (!buf) {
            s = RB_ERR_OOM;
            break;
        }
        for (int64_t o = 0; s == RB_OK && o < n; o += step) {
            int64_t m = n - o < step ? n - o : step;
            if ((s = wl_fill(l, e, buf, o, m, seed)) == RB_OK &&
                fwrite(buf, rb_dtype_size(dt), (size_t)m, f) != (size_t)m)
                s = rb_error(RB_ERR_IO, "demo: write failed: %s", tmp);
        }
        done += (double)n * (double)rb_dtype_size(dt);
        if (l->o->progress)
            l->o->progress(l->o->user, path, done, (double)off);
    }
    rb_free(buf);
    if (fclose(f) != 0 && s == RB_OK)
        s = rb_error(RB_ERR_IO, "demo: write failed: %s", tmp);
    if (s == RB_OK && rename(tmp, path) != 0)
        s = rb_error(RB_ERR_IO, "demo: cannot rename %s", tmp);
    if (s != RB_OK)
        unlink(tmp);
    return s;
}

/* The list materialised (tensors rb_alloc'ed; free with free_tensors): for files that are written
 * from memory (the torch-format adapter). */
static rb_status wl_tensors(wl *l, rb_tensor ***out) {
    if (l->s != RB_OK)
        return l->s;
    rb_tensor **ts = rb_calloc((size_t)(l->n ? l->n : 1) * sizeof *ts, "demo tensors");
    if (!ts)
        return RB_ERR_OOM;
    rb_status s = RB_OK;
    for (int i = 0; s == RB_OK && i < l->n; i++) {
        const wentry *e = &l->e[i];
        uint64_t seed = l->count ? (++*l->count) * 0x632BE59BD9B4E019ull + l->o->seed : 0;
        ts[i] = rb_calloc(sizeof *ts[i], "demo tensor");
        if (!ts[i] || (s = rb_tensor_alloc(ts[i], dtype_of(l, e), e->ndim, e->shape, "demo weight")) != RB_OK) {
            s = RB_ERR_OOM;
            break;
        }
        s = wl_fill(l, e, ts[i]->data, 0, numel_of(e), seed);
    }
    *out = ts;
    return s;
}

static void free_tensors(rb_tensor **ts, int n) {
    for (int i = 0; ts && i < n; i++)
        if (ts[i]) {
            if (ts[i]->data)
                rb_tensor_free(ts[i]);
            rb_free(ts[i]);
        }
    rb_free(ts);
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

/* ---- the two sizes ---- */

typedef struct sizes {
    const char *sdxl; /* the diffusers folder's name */
    int te1[4], te2[5]; /* CLIP-L-like, bigG-like text encoders: width, MLP, heads, layers (, projection) */
    int vis[5];         /* image encoder: width, MLP, heads, layers, projection */
    int64_t vae_ch[4];
    int64_t rs_dim, rs_hidden; /* resampler width, latent_proj hidden width */
    int rs_depth;
    const char *unet_json, *vae_json;
} sizes;

/* What every writer gets: the options, the sizes, and the random source. */
typedef struct gen {
    const rb_demo_opts *o;
    const sizes *z;
    rb_rng *g;
    uint64_t count;
} gen;

#define WL(G) {.o = (G)->o, .g = (G)->g, .count = (G)->o->full ? &(G)->count : NULL, .s = RB_OK}

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

/* The text encoders' vocabulary: CLIP's at full size (whatever the tokenizer files), the demo's when tiny. */
#define VOCAB(G) ((G)->o->full ? 49408 : DEMO_VOCAB)

static rb_status text_encoder(gen *G, const char *dir, const int *dims, const char *act) {
    int D = dims[0], I = dims[1], heads = dims[2], layers = dims[3], proj = dims[4];
    wl l = WL(G);
    wl_add(&l, K_MAT, V2(VOCAB(G), D), "text_model.embeddings.token_embedding.weight");
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
             VOCAB(G));
    snprintf(path, sizeof path, "%s/config.json", dir);
    return s == RB_OK ? write_text(path, cfg) : s;
}

static const char preprocessor_json[] =
    "{\n  \"crop_size\": {\"height\": 224, \"width\": 224},\n  \"do_center_crop\": true,\n"
    "  \"do_convert_rgb\": true,\n  \"do_normalize\": true,\n  \"do_rescale\": true,\n  \"do_resize\": true,\n"
    "  \"image_mean\": [0.48145466, 0.4578275, 0.40821073],\n  \"image_processor_type\": \"CLIPImageProcessor\",\n"
    "  \"image_std\": [0.26862954, 0.26130258, 0.27577711],\n  \"resample\": 3,\n"
    "  \"rescale_factor\": 0.00392156862745098,\n  \"size\": {\"shortest_edge\": 224}\n}\n";

static rb_status image_encoder(gen *G, const char *dir) {
    const int *v = G->z->vis, D = v[0], I = v[1], heads = v[2], layers = v[3], proj = v[4], patch = 14;
    const int pos = (224 / patch) * (224 / patch) + 1;
    wl l = WL(G);
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
             "  \"num_attention_heads\": %d,\n  \"num_hidden_layers\": %d,\n  \"image_size\": 224,\n"
             "  \"patch_size\": %d,\n  \"num_channels\": 3,\n  \"projection_dim\": %d,\n  \"layer_norm_eps\": 1e-05\n}\n",
             D, I, heads, layers, patch, proj);
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

static const char tiny_vae_json[] =
    "{\n  \"_class_name\": \"AutoencoderKL\",\n  \"_diffusers_version\": \"0.27.2\",\n  \"act_fn\": \"silu\",\n"
    "  \"block_out_channels\": [8, 16, 32, 32],\n  \"down_block_types\": [\"DownEncoderBlock2D\", "
    "\"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"],\n  \"force_upcast\": true,\n"
    "  \"in_channels\": 3,\n  \"latent_channels\": 4,\n  \"layers_per_block\": 2,\n  \"norm_num_groups\": 4,\n"
    "  \"out_channels\": 3,\n  \"sample_size\": 128,\n  \"scaling_factor\": 0.13025,\n  \"up_block_types\": "
    "[\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]\n}\n";

/* stabilityai/stable-diffusion-xl-base-1.0 vae/config.json */
static const char sdxl_vae_json[] =
    "{\n  \"_class_name\": \"AutoencoderKL\",\n  \"_diffusers_version\": \"0.20.0.dev0\",\n  \"act_fn\": \"silu\",\n"
    "  \"block_out_channels\": [128, 256, 512, 512],\n  \"down_block_types\": [\"DownEncoderBlock2D\", "
    "\"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"],\n  \"force_upcast\": true,\n"
    "  \"in_channels\": 3,\n  \"latent_channels\": 4,\n  \"layers_per_block\": 2,\n  \"norm_num_groups\": 32,\n"
    "  \"out_channels\": 3,\n  \"sample_size\": 1024,\n  \"scaling_factor\": 0.13025,\n  \"up_block_types\": "
    "[\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]\n}\n";

static rb_status vae(gen *G, const char *dir) {
    const int64_t *ch = G->z->vae_ch, L = 4, C = ch[3];
    wl l = WL(G);
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
    return s == RB_OK ? write_text(path, G->z->vae_json) : s;
}

/* ---- UNet: the names and shapes the loader asks for ---- */

static const char tiny_unet_json[] =
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

/* stabilityai/stable-diffusion-xl-base-1.0 unet/config.json */
static const char sdxl_unet_json[] =
    "{\n  \"_class_name\": \"UNet2DConditionModel\",\n  \"_diffusers_version\": \"0.19.0.dev0\",\n  \"act_fn\": \"silu\",\n"
    "  \"addition_embed_type\": \"text_time\",\n  \"addition_embed_type_num_heads\": 64,\n"
    "  \"addition_time_embed_dim\": 256,\n  \"attention_head_dim\": [5, 10, 20],\n  \"block_out_channels\": [320, 640, 1280],\n"
    "  \"center_input_sample\": false,\n  \"conv_in_kernel\": 3,\n  \"conv_out_kernel\": 3,\n"
    "  \"cross_attention_dim\": 2048,\n  \"down_block_types\": [\"DownBlock2D\", \"CrossAttnDownBlock2D\", "
    "\"CrossAttnDownBlock2D\"],\n  \"downsample_padding\": 1,\n  \"flip_sin_to_cos\": true,\n  \"freq_shift\": 0,\n"
    "  \"in_channels\": 4,\n  \"layers_per_block\": 2,\n  \"mid_block_scale_factor\": 1,\n"
    "  \"mid_block_type\": \"UNetMidBlock2DCrossAttn\",\n  \"norm_eps\": 1e-05,\n  \"norm_num_groups\": 32,\n"
    "  \"num_attention_heads\": null,\n  \"out_channels\": 4,\n  \"projection_class_embeddings_input_dim\": 2816,\n"
    "  \"sample_size\": 128,\n  \"time_embedding_type\": \"positional\",\n  \"transformer_layers_per_block\": [1, 2, 10],\n"
    "  \"up_block_types\": [\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"UpBlock2D\"],\n"
    "  \"upcast_attention\": null,\n  \"use_linear_projection\": true\n}\n";

static void visit(void *user, const rb_unet_param *p) {
    wl *l = user;
    const char *dot = strrchr(p->name, '.');
    int is_bias = dot && !strcmp(dot, ".bias");
    int kind = strstr(p->name, "norm") && !is_bias ? K_NORM : is_bias ? K_BIAS : K_MAT;
    wl_add(l, kind, p->ndim, p->shape, "%s", p->name);
}

static rb_status unet(gen *G, const char *dir, rb_unet *skel) {
    char path[8400];
    snprintf(path, sizeof path, "%s/config.json", dir);
    RB_TRY(write_text(path, G->z->unet_json));
    rb_unet_config cfg;
    RB_TRY(rb_unet_config_load(&cfg, path));
    RB_TRY(rb_unet_init(skel, &cfg));
    wl l = WL(G);
    rb_unet_visit_params(skel, visit, &l);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    rb_status s = wl_write(&l, path);
    wl_free(&l);
    return s;
}

/* ---- MS-Diffusion adapter: image_proj (grounding resampler) + per-processor to_k_ip/to_v_ip ---- */

/* Materialised (torch.save needs every tensor at hand): 0.92 GB at full size in bf16. */
static rb_status adapter(gen *G, const char *path, const rb_unet *skel) {
    const int64_t D = G->z->rs_dim, Q = 16, E = G->z->vis[0], O = skel->cfg.cross_attention_dim, P = G->z->te1[0];
    const int64_t ground_in = P + 64, hid = G->z->rs_hidden;
    wl l = WL(G);
    wl_add(&l, K_MAT, V3(1, Q, D), "image_proj.grounding_latents");
    linear(&l, D, E, 1, "image_proj.proj_in");
    linear(&l, O, D, 1, "image_proj.proj_out");
    norm(&l, O, "image_proj.norm_out");
    linear(&l, hid, ground_in, 1, "image_proj.latent_proj.0");
    linear(&l, Q * D, hid, 1, "image_proj.latent_proj.2");
    norm(&l, D, "image_proj.latent_norm");
    norm(&l, D, "image_proj.attention_norm");
    char n[256];
    for (int i = 0; i < G->z->rs_depth; i++) {
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
    rb_tensor **ts = NULL;
    const char **names = rb_calloc((size_t)(l.n ? l.n : 1) * sizeof *names, "adapter names");
    rb_status s = names ? wl_tensors(&l, &ts) : RB_ERR_OOM;
    for (int i = 0; s == RB_OK && i < l.n; i++)
        names[i] = l.e[i].name;
    if (s == RB_OK)
        s = rb_demo_write_adapter(path, l.n, names, (const rb_tensor *const *)ts);
    double bytes = 0;
    for (int i = 0; s == RB_OK && i < l.n; i++)
        bytes += (double)rb_nbytes(ts[i]);
    if (G->o->progress)
        G->o->progress(G->o->user, path, bytes, bytes);
    free_tensors(ts, l.n);
    rb_free(names);
    wl_free(&l);
    return s;
}

/* ---- RelationLoRA: rank 4 on every cross-attention's q/k/v/out (as DreamRelation trains it) ---- */

static rb_status relation_lora(gen *G, const char *path, const rb_unet *skel) {
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
            if ((s = fill_randn(G->g, pr->down->data, rb_numel(pr->down), in, K_MAT)) == RB_OK &&
                (s = fill_randn(G->g, pr->up->data, rb_numel(pr->up), 4, K_MAT)) == RB_OK)
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

static const sizes tiny_sizes = {
    .sdxl = "tiny-sdxl", .te1 = {DEMO_PHRASE_DIM, 64, 2, 3}, .te2 = {20, 80, 4, 3, 12}, /* 16 + 20 = the UNet's 36 */
    .vis = {DEMO_VISION_DIM, 4 * DEMO_VISION_DIM, 4, 2, 16}, .vae_ch = {8, 16, 32, 32}, .rs_dim = 32,
    .rs_hidden = 160, .rs_depth = DEMO_RESAMPLER_DEPTH, .unet_json = tiny_unet_json, .vae_json = tiny_vae_json};

/* SDXL base (CLIP ViT-L/14 and OpenCLIP bigG/14 text towers), CLIP ViT-bigG/14 vision (laion
 * CLIP-ViT-bigG-14-laion2B-39B-b160k), MS-Diffusion's resampler (dim 1280, depth 4, latent_proj 832 ->
 * 1664 -> 16 x 1280) */
static const sizes full_sizes = {
    .sdxl = "sdxl", .te1 = {768, 3072, 12, 12}, .te2 = {1280, 5120, 20, 32, 1280}, .vis = {1664, 8192, 16, 48, 1280},
    .vae_ch = {128, 256, 512, 512}, .rs_dim = 1280, .rs_hidden = 1664, .rs_depth = 4, .unet_json = sdxl_unet_json,
    .vae_json = sdxl_vae_json};

/* Copies tokenizer files (those present) from src to dst. */
static rb_status copy_tokenizer(const char *src, const char *dst) {
    static const char *const files[] = {"vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char a[9000], b[9000];
        snprintf(a, sizeof a, "%s/%s", src, files[i]);
        snprintf(b, sizeof b, "%s/%s", dst, files[i]);
        FILE *in = fopen(a, "rb");
        if (!in) {
            if (i < 2)
                return rb_error(RB_ERR_IO, "demo: cannot read %s", a);
            continue;
        }
        FILE *o = fopen(b, "wb");
        char buf[1 << 16];
        size_t n;
        int ok = o != NULL;
        while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
            ok = fwrite(buf, 1, n, o) == n;
        fclose(in);
        if (o)
            ok &= fclose(o) == 0;
        if (!ok)
            return rb_error(RB_ERR_IO, "demo: cannot write %s", b);
    }
    return RB_OK;
}

rb_status rb_demo_write_models(const char *out, uint64_t seed) {
    rb_demo_opts o = {.seed = seed};
    return rb_demo_write_models_opts(out, &o);
}

rb_status rb_demo_write_models_opts(const char *out, const rb_demo_opts *o) {
    const sizes *z = o->full ? &full_sizes : &tiny_sizes;
    char sdxl[4096], p[4200];
    snprintf(sdxl, sizeof sdxl, "%s/%s", out, z->sdxl);
    RB_TRY(mkdir_p(out, z->sdxl));
    static const char *const subs[] = {"scheduler", "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2",
                                       "unet", "vae"};
    for (size_t i = 0; i < sizeof subs / sizeof *subs; i++)
        RB_TRY(mkdir_p(sdxl, subs[i]));
    RB_TRY(mkdir_p(out, "image_encoder"));
    snprintf(p, sizeof p, "%s/model_index.json", sdxl);
    RB_TRY(write_text(p, model_index_json));
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", sdxl);
    RB_TRY(write_text(p, scheduler_json));
    for (int k = 0; k < 2; k++) {
        const char *sub = k ? "tokenizer_2" : "tokenizer";
        snprintf(p, sizeof p, "%s/%s", sdxl, sub);
        if (o->full && o->tokenizer_dir) {
            char src[4400];
            snprintf(src, sizeof src, "%s/%s", o->tokenizer_dir, sub);
            RB_TRY(copy_tokenizer(src, p));
        } else {
            RB_TRY(write_tokenizer(p));
        }
    }
    rb_rng g;
    rb_rng_torch_cpu(&g, o->seed);
    gen G = {.o = o, .z = z, .g = &g};
    rb_unet skel = {0};
    rb_status s = RB_OK;
    /* CLIP-L-like (quick_gelu, no projection) and bigG-like (gelu, projection) */
    snprintf(p, sizeof p, "%s/text_encoder", sdxl);
    s = text_encoder(&G, p, (const int[]){z->te1[0], z->te1[1], z->te1[2], z->te1[3], 0}, "quick_gelu");
    snprintf(p, sizeof p, "%s/text_encoder_2", sdxl);
    if (s == RB_OK)
        s = text_encoder(&G, p, z->te2, "gelu");
    snprintf(p, sizeof p, "%s/unet", sdxl);
    if (s == RB_OK)
        s = unet(&G, p, &skel);
    snprintf(p, sizeof p, "%s/vae", sdxl);
    if (s == RB_OK)
        s = vae(&G, p);
    snprintf(p, sizeof p, "%s/image_encoder", out);
    if (s == RB_OK)
        s = image_encoder(&G, p);
    snprintf(p, sizeof p, "%s/ms_adapter.bin", out);
    if (s == RB_OK)
        s = adapter(&G, p, &skel);
    snprintf(p, sizeof p, "%s/pytorch_lora_weights.safetensors", out);
    if (s == RB_OK)
        s = relation_lora(&G, p, &skel);
    rb_unet_free(&skel);
    return s;
}
