/* AutoencoderKL against golden/vae (diffusers and SGM layouts): posterior, decodes and every
 * intermediate activation; key-table coverage (every tensor used, legacy and unprefixed layouts);
 * tiled encode/decode against an independent double-precision re-blend of untiled tiles, and the
 * measured tiled-vs-untiled difference; bounded arena use; config parsing; errors. */
#include "harness.h"
#include "models/vae.h"

/* Tolerance: the reference's fp32-vs-fp64 differences are ~1e-6 of each tensor's max |value|
 * (case.md); we allow 10x that, i.e. 1e-5 * max|ref| (at least 1e-5). */
static double tol_for(const rb_tensor *want) {
    double mx = 0;
    for (int64_t i = 0; i < rb_numel(want); i++)
        mx = fmax(mx, fabs(rb_tensor_get(want, i)));
    return 1e-5 * fmax(mx, 1.0);
}

static double max_diff(const rb_tensor *a, const rb_tensor *b) {
    double m = 0;
    for (int64_t i = 0; i < rb_numel(b); i++) {
        double d = fabs(rb_tensor_get(a, i) - rb_tensor_get(b, i));
        if (d > m || d != d)
            m = d;
    }
    return m;
}

static int compare(const char *what, const rb_tensor *got, const rb_tensor *want) {
    int before = t_cur_failed;
    CHECK(got && want, "%s: missing", what);
    if (!got || !want)
        return 0;
    CHECK(got->ndim == want->ndim && rb_numel(got) == rb_numel(want), "%s: shape", what);
    if (rb_numel(got) != rb_numel(want))
        return 0;
    double md = max_diff(got, want), tol = tol_for(want);
    CHECK(md <= tol, "%s: max |diff| %g > %g", what, md, tol);
    fprintf(stderr, "  %s: max |diff| %.3g (tol %.3g)\n", what, md, tol);
    return t_cur_failed == before;
}

static rb_arena arena;
static rb_ctx ctx;
static void ctx_reset(size_t cap) {
    rb_arena_free(&arena);
    rb_arena_init(&arena, cap, "vae test");
    rb_ctx_init(&ctx, &arena);
}

/* ---- golden ---- */

/* Every golden intermediate.<side>.* tensor must be traced and match. */
static void check_trace(const rb_vae_trace *tr, const char *side, rb_safetensors *io) {
    int matched = 0, expect = 0;
    char pre[64];
    snprintf(pre, sizeof pre, "intermediate.%s.", side);
    for (int i = 0; i < io->n; i++)
        expect += !strncmp(io->entries[i].name, pre, strlen(pre));
    for (int i = 0; i < tr->n; i++) {
        char key[128];
        snprintf(key, sizeof key, "intermediate.%s.%s", side, tr->names[i]);
        const rb_tensor *want = rb_st_get(io, key);
        CHECK(want, "trace %s has no golden tensor", key);
        if (want)
            matched += compare(key, tr->t[i], want);
    }
    CHECK(matched == expect, "%s: %d of %d intermediates matched", side, matched, expect);
}

static void golden_case(const char *file, rb_vae_layout layout, const char *prefix) {
    const char *g = t_golden_path("vae");
    if (!g)
        return;
    char dir[4096], path[4200], io_path[4200];
    snprintf(dir, sizeof dir, "%s", g);
    snprintf(path, sizeof path, "%s/%s", dir, file);
    snprintf(io_path, sizeof io_path, "%s/io.safetensors", dir);
    static rb_vae m;
    REQUIRE(rb_vae_load(&m, file[0] ? path : dir, NULL) == RB_OK, "load: %s", rb_last_error());
    CHECK(m.layout == layout && !strcmp(m.prefix, prefix), "layout %d prefix '%s'", (int)m.layout, m.prefix);
    CHECK(rb_vae_unused(&m, 5) == 0, "every VAE tensor is used");
    CHECK(rb_weights_unused(&m.w, 5) == 0, "every tensor of the file is used");
    rb_safetensors io;
    REQUIRE(rb_st_open(&io, io_path) == RB_OK, "%s", rb_last_error());
    ctx_reset(64 << 20);
    rb_tensor image = *rb_st_get(&io, "image"), latent = *rb_st_get(&io, "latent");
    rb_tensor want_mean = *rb_st_get(&io, "latent_mean");

    static rb_vae_trace tr;
    rb_vae_posterior post;
    rb_tensor noise = latent; /* any [1, 4, 8, 8] tensor serves as noise */
    CHECK(rb_vae_encode(&ctx, &m, &image, &noise, 0, &tr, &post) == RB_OK, "encode: %s", rb_last_error());
    if (ctx.status == RB_OK) {
        compare("latent_mean", post.mean, &want_mean);
        compare("latent_logvar", post.logvar, rb_st_get(&io, "latent_logvar"));
        compare("latent_std", post.std, rb_st_get(&io, "latent_std"));
        check_trace(&tr, "encode", &io);
        /* sample = mean + std * noise, from the golden mean and std in double */
        const rb_tensor *ws = rb_st_get(&io, "latent_std");
        double md = 0;
        for (int64_t i = 0; i < rb_numel(&noise); i++)
            md = fmax(md, fabs(rb_tensor_get(post.sample, i) -
                               (rb_tensor_get(&want_mean, i) + rb_tensor_get(ws, i) * rb_tensor_get(&noise, i))));
        CHECK(md < 1e-4, "sample = mean + std * noise: max |diff| %g", md);
    }
    rb_tensor *dec = rb_vae_decode(&ctx, &m, &latent, 0, &tr);
    CHECK(dec, "decode: %s", rb_last_error());
    if (dec) {
        compare("decoded", dec, rb_st_get(&io, "decoded"));
        check_trace(&tr, "decode", &io);
    }
    rb_tensor *dec2 = rb_vae_decode(&ctx, &m, &want_mean, 0, NULL);
    CHECK(dec2, "decode mean: %s", rb_last_error());
    if (dec2)
        compare("decoded_from_latent_mean", dec2, rb_st_get(&io, "decoded_from_latent_mean"));
    rb_st_close(&io);
    rb_vae_free(&m);
}

static void t_vae_golden_diffusers(void) { golden_case("", RB_VAE_LAYOUT_DIFFUSERS, ""); }
static void t_vae_golden_sgm(void) { golden_case("sgm_vae.safetensors", RB_VAE_LAYOUT_SGM, "first_stage_model."); }

/* ---- other spellings through the key table: rewritten copies of the golden files ---- */

typedef const char *(*rename_fn)(const char *name, char *buf, size_t n);

static const char *to_legacy(const char *name, char *buf, size_t n) {
    static const char *const from[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
    static const char *const to[] = {".query.", ".key.", ".value.", ".proj_attn."};
    for (int k = 0; k < 4; k++) {
        const char *p = strstr(name, from[k]);
        if (p) {
            snprintf(buf, n, "%.*s%s%s", (int)(p - name), name, to[k], p + strlen(from[k]));
            return buf;
        }
    }
    return name;
}
static const char *strip_prefix(const char *name, char *buf, size_t n) {
    const char *p = "first_stage_model.";
    snprintf(buf, n, "%s", strncmp(name, p, strlen(p)) ? name : name + strlen(p));
    return buf;
}

/* Writes <tmp>/<out> with every tensor of `src` renamed, plus `extra` (a non-VAE key) if given. */
static int rewrite(const char *src, const char *out, rename_fn fn, const char *extra) {
    rb_safetensors st;
    if (rb_st_open(&st, src) != RB_OK)
        return 0;
    int n = st.n + (extra != NULL);
    const char **names = calloc((size_t)n, sizeof *names);
    const rb_tensor **ts = calloc((size_t)n, sizeof *ts);
    char(*bufs)[256] = calloc((size_t)n, sizeof *bufs);
    for (int i = 0; i < st.n; i++) {
        names[i] = fn(st.entries[i].name, bufs[i], sizeof bufs[i]);
        if (names[i] != bufs[i])
            names[i] = strcpy(bufs[i], names[i]);
        ts[i] = &st.entries[i].t;
    }
    if (extra) {
        names[st.n] = extra;
        ts[st.n] = &st.entries[0].t;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", t_tmpdir(), out);
    int ok = rb_st_write(path, n, names, (const rb_tensor *const *)ts, 0, NULL, NULL) == RB_OK;
    free(names);
    free(ts);
    free(bufs);
    rb_st_close(&st);
    return ok;
}

static void t_vae_key_table_variants(void) {
    const char *g = t_golden_path("vae");
    if (!g)
        return;
    char dir[4096], src[4200], path[4200];
    snprintf(dir, sizeof dir, "%s", g);
    rb_vae_config cfg;
    snprintf(path, sizeof path, "%s/config.json", dir);
    REQUIRE(rb_vae_config_load(&cfg, path) == RB_OK, "%s", rb_last_error());
    static rb_vae ref, m;
    REQUIRE(rb_vae_load(&ref, dir, NULL) == RB_OK, "%s", rb_last_error());
    ctx_reset(64 << 20);
    int64_t zs[] = {1, 4, 8, 8};
    rb_tensor *z = rb_arena_tensor(&arena, RB_F32, 4, zs);
    for (int i = 0; i < 256; i++)
        ((float *)z->data)[i] = (float)sin(0.37 * i) * 1.5f;
    rb_tensor *want = rb_vae_decode(&ctx, &ref, z, 0, NULL);
    REQUIRE(want, "%s", rb_last_error());

    struct {
        const char *src, *out;
        rename_fn fn;
        const char *extra;
        rb_vae_layout layout;
        const char *prefix;
        int file_unused;
    } v[] = {
        {"diffusion_pytorch_model.safetensors", "legacy.safetensors", to_legacy, NULL, RB_VAE_LAYOUT_DIFFUSERS_LEGACY,
         "", 0},
        {"sgm_vae.safetensors", "ldm_bare.safetensors", strip_prefix, NULL, RB_VAE_LAYOUT_SGM, "", 0},
        /* a full single-file checkpoint: other models' keys are not the VAE's unused keys */
        {"sgm_vae.safetensors", "full.safetensors", to_legacy, "model.diffusion_model.out.2.bias", RB_VAE_LAYOUT_SGM,
         "first_stage_model.", 1},
    };
    for (size_t k = 0; k < sizeof v / sizeof *v; k++) {
        snprintf(src, sizeof src, "%s/%s", dir, v[k].src);
        REQUIRE(rewrite(src, v[k].out, v[k].fn, v[k].extra), "rewrite %s: %s", v[k].out, rb_last_error());
        snprintf(path, sizeof path, "%s/%s", t_tmpdir(), v[k].out);
        REQUIRE(rb_vae_load(&m, path, &cfg) == RB_OK, "%s: %s", v[k].out, rb_last_error());
        CHECK(m.layout == v[k].layout && !strcmp(m.prefix, v[k].prefix), "%s: layout %d prefix '%s'", v[k].out,
              (int)m.layout, m.prefix);
        CHECK(rb_vae_unused(&m, 5) == 0, "%s: every VAE tensor used", v[k].out);
        CHECK(rb_weights_unused(&m.w, 0) == v[k].file_unused, "%s: file keys left", v[k].out);
        rb_tensor *got = rb_vae_decode(&ctx, &m, z, 0, NULL);
        CHECK(got && max_diff(got, want) == 0, "%s: same decode as diffusers layout", v[k].out);
        rb_vae_free(&m);
    }
    rb_vae_free(&ref);
}

/* ---- tiling ---- */

static float urand(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

/* diffusers' tiling in double, from untiled per-tile results: tiles[r][c] is [C, th, tw] (N = 1),
 * blended in place in the same order, cropped to `limit`, concatenated. out: [C, Ho, Wo]. */
typedef struct {
    double *d;
    int64_t h, w;
} dtile;
static void ref_blend(dtile *t, int rows, int cols, int64_t C, int64_t ext, int64_t limit, double *out, int64_t Ho,
                      int64_t Wo) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            dtile *b = &t[i * cols + j];
            if (i > 0) {
                dtile *a = &t[(i - 1) * cols + j];
                int64_t e = ext < a->h ? ext : a->h;
                e = e < b->h ? e : b->h;
                for (int64_t y = 0; y < e; y++)
                    for (int64_t ch = 0; ch < C; ch++)
                        for (int64_t x = 0; x < b->w; x++)
                            b->d[(ch * b->h + y) * b->w + x] =
                                a->d[(ch * a->h + a->h - e + y) * a->w + x] * (1.0 - (double)y / e) +
                                b->d[(ch * b->h + y) * b->w + x] * ((double)y / e);
            }
            if (j > 0) {
                dtile *a = &t[i * cols + j - 1];
                int64_t e = ext < a->w ? ext : a->w;
                e = e < b->w ? e : b->w;
                for (int64_t x = 0; x < e; x++)
                    for (int64_t ch = 0; ch < C; ch++)
                        for (int64_t y = 0; y < b->h; y++)
                            b->d[(ch * b->h + y) * b->w + x] =
                                a->d[(ch * a->h + y) * a->w + a->w - e + x] * (1.0 - (double)x / e) +
                                b->d[(ch * b->h + y) * b->w + x] * ((double)x / e);
            }
        }
    int64_t oy = 0;
    for (int i = 0; i < rows; i++) {
        int64_t ox = 0, h = 0;
        for (int j = 0; j < cols; j++) {
            dtile *b = &t[i * cols + j];
            int64_t w = b->w < limit ? b->w : limit;
            h = b->h < limit ? b->h : limit;
            for (int64_t ch = 0; ch < C; ch++)
                for (int64_t y = 0; y < h; y++)
                    for (int64_t x = 0; x < w; x++)
                        out[(ch * Ho + oy + y) * Wo + ox + x] = b->d[(ch * b->h + y) * b->w + x];
            ox += w;
        }
        oy += h;
    }
}

/* Untiled result(s) of one crop of x (what diffusers runs per tile): decoded image, or mean and logvar. */
static int untiled_crop(const rb_vae *m, rb_tensor *x, int64_t i0, int64_t j0, int64_t T, int decode,
                        rb_tensor **r) {
    rb_tensor v1, v2;
    int64_t H = x->shape[2], W = x->shape[3];
    rb_view_slice(&v1, x, 2, i0, i0 + T < H ? i0 + T : H);
    rb_view_slice(&v2, &v1, 3, j0, j0 + T < W ? j0 + T : W);
    rb_tensor *crop = rb_contiguous(&ctx, &v2);
    if (decode)
        return (r[0] = rb_vae_decode(&ctx, m, crop, 0, NULL)) != NULL;
    rb_vae_posterior p;
    rb_vae_encode(&ctx, m, crop, NULL, 0, NULL, &p);
    r[0] = p.mean;
    r[1] = p.logvar;
    return ctx.status == RB_OK;
}

/* Compares the tiled outputs got[0..n) (decoded, or mean and logvar) with the double re-blend of
 * untiled crops of x. */
static void check_tiles(const rb_vae *m, rb_tensor *x, const rb_tensor *const *got, int n, int decode, int64_t T,
                        int64_t out_tile) {
    int64_t step = T * 3 / 4, ext = out_tile / 4, limit = out_tile - ext;
    int rows = (int)((x->shape[2] + step - 1) / step), cols = (int)((x->shape[3] + step - 1) / step);
    dtile *t = calloc((size_t)(2 * rows * cols), sizeof *t);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            size_t mk = rb_arena_mark(&arena);
            rb_tensor *r[2];
            REQUIRE(untiled_crop(m, x, i * step, j * step, T, decode, r), "tile %d,%d: %s", i, j, rb_last_error());
            for (int k = 0; k < n; k++) {
                dtile *d = &t[k * rows * cols + i * cols + j];
                d->h = r[k]->shape[2];
                d->w = r[k]->shape[3];
                d->d = malloc((size_t)rb_numel(r[k]) * sizeof(double));
                for (int64_t e = 0; e < rb_numel(r[k]); e++)
                    d->d[e] = rb_tensor_get(r[k], e);
            }
            rb_arena_reset(&arena, mk);
        }
    for (int k = 0; k < n; k++) {
        int64_t C = got[k]->shape[1], Ho = got[k]->shape[2], Wo = got[k]->shape[3];
        double *ref = calloc((size_t)(C * Ho * Wo), sizeof(double));
        ref_blend(t + k * rows * cols, rows, cols, C, ext, limit, ref, Ho, Wo);
        double md = 0, mx = 0;
        for (int64_t e = 0; e < C * Ho * Wo; e++) {
            md = fmax(md, fabs(rb_tensor_get(got[k], e) - ref[e]));
            mx = fmax(mx, fabs(ref[e]));
        }
        /* the same per-tile computation; only the blend's float rounding differs */
        CHECK(md <= 1e-6 * fmax(mx, 1.0), "tiled output %d/%d vs re-blended untiled tiles: max |diff| %g", k,
              decode, md);
        fprintf(stderr, "  tiled %d/%d vs re-blend: %.3g\n", k, decode, md);
        free(ref);
    }
    for (int k = 0; k < 2 * rows * cols; k++)
        free(t[k].d);
    free(t);
}

/* Tiled vs untiled on 256x256 (tile 128 px / 16 latents with the golden config). The seams differ
 * by design (GroupNorm statistics and attention are per tile); docs/models.md states the measured
 * figures, which these bounds pin with some margin. */
static void t_vae_tiled(void) {
    const char *g = t_golden_path("vae");
    if (!g)
        return;
    static rb_vae m;
    REQUIRE(rb_vae_load(&m, g, NULL) == RB_OK, "%s", rb_last_error());
    REQUIRE(m.cfg.sample_size == 128, "golden sample_size");
    ctx_reset(256 << 20);
    rb_tensor *img = rb_arena_tensor(&arena, RB_F32, 4, (int64_t[]){1, 3, 256, 256});
    rb_tensor *z = rb_arena_tensor(&arena, RB_F32, 4, (int64_t[]){1, 4, 32, 32});
    uint32_t s = 12345;
    for (int64_t i = 0; i < rb_numel(img); i++)
        ((float *)img->data)[i] = urand(&s) * 0.8f;
    for (int64_t i = 0; i < rb_numel(z); i++)
        ((float *)z->data)[i] = urand(&s) * 2.0f;

    rb_vae_posterior pt, pu;
    REQUIRE(rb_vae_encode(&ctx, &m, img, NULL, 1, NULL, &pt) == RB_OK, "tiled encode: %s", rb_last_error());
    REQUIRE(rb_vae_encode(&ctx, &m, img, NULL, 0, NULL, &pu) == RB_OK, "encode: %s", rb_last_error());
    REQUIRE(pt.mean->shape[2] == 32 && pt.mean->shape[3] == 32, "tiled latent size");
    check_tiles(&m, img, (const rb_tensor *const[]){pt.mean, pt.logvar}, 2, 0, 128, 16);
    double d_mean = max_diff(pt.mean, pu.mean), d_std = max_diff(pt.std, pu.std);

    rb_tensor *dt = rb_vae_decode(&ctx, &m, z, 1, NULL);
    rb_tensor *du = rb_vae_decode(&ctx, &m, z, 0, NULL);
    REQUIRE(dt && du, "decode: %s", rb_last_error());
    REQUIRE(dt->shape[2] == 256 && dt->shape[3] == 256, "tiled decode size");
    check_tiles(&m, z, (const rb_tensor *const[]){dt}, 1, 1, 16, 128);
    double d_dec = max_diff(dt, du);
    fprintf(stderr, "  tiled vs untiled: mean %.3g std %.3g decoded %.3g (max|mean| %.3g, max|dec| %.3g)\n", d_mean,
            d_std, d_dec, tol_for(pu.mean) * 1e5, tol_for(du) * 1e5);
    /* measured: mean 0.68, std 0.46, decoded 1.05 (random weights, uniform-noise image) */
    CHECK(d_mean > 0 && d_mean < 1.0, "tiled vs untiled mean: %g", d_mean);
    CHECK(d_std > 0 && d_std < 0.75, "tiled vs untiled std: %g", d_std);
    CHECK(d_dec > 0 && d_dec < 1.5, "tiled vs untiled decoded: %g", d_dec);

    /* tiling on but the input fits one tile: identical to untiled */
    rb_tensor v;
    rb_view_slice(&v, z, 2, 0, 16);
    rb_tensor *small = rb_contiguous(&ctx, &v);
    rb_tensor *zs = rb_arena_tensor(&arena, RB_F32, 4, (int64_t[]){1, 4, 16, 16});
    rb_view_slice(&v, small, 3, 0, 16);
    rb_tensor_copy(zs, &v);
    rb_tensor *a = rb_vae_decode(&ctx, &m, zs, 1, NULL), *b = rb_vae_decode(&ctx, &m, zs, 0, NULL);
    CHECK(a && b && max_diff(a, b) == 0, "one tile: tiling is a no-op");
    rb_vae_free(&m);
}

/* ---- arena reuse ---- */

static void t_vae_arena_bounded(void) {
    const char *g = t_golden_path("vae");
    if (!g)
        return;
    static rb_vae m;
    REQUIRE(rb_vae_load(&m, g, NULL) == RB_OK, "%s", rb_last_error());
    ctx_reset(256 << 20);
    rb_tensor *z = rb_arena_tensor(&arena, RB_F32, 4, (int64_t[]){1, 4, 16, 16});
    uint32_t s = 7;
    for (int64_t i = 0; i < rb_numel(z); i++)
        ((float *)z->data)[i] = urand(&s);
    size_t m0 = rb_arena_mark(&arena);
    arena.peak = m0;
    static rb_vae_trace tr; /* tracing keeps every activation */
    rb_tensor *keep_all = rb_vae_decode(&ctx, &m, z, 0, &tr);
    REQUIRE(keep_all, "%s", rb_last_error());
    size_t peak_all = arena.peak - m0, out_bytes = rb_nbytes(keep_all);
    size_t m1 = rb_arena_mark(&arena);
    arena.peak = m1;
    rb_tensor *reused = rb_vae_decode(&ctx, &m, z, 0, NULL);
    REQUIRE(reused, "%s", rb_last_error());
    size_t peak_reuse = arena.peak - m1, left = rb_arena_mark(&arena) - m1;
    CHECK(max_diff(reused, keep_all) == 0, "same result with and without arena reuse");
    /* largest activation [1, 16, 128, 128] f32 = 1 MiB; one resnet's working set is a few of them */
    CHECK(peak_reuse * 4 < peak_all, "peak %zu with reuse vs %zu without", peak_reuse, peak_all);
    CHECK(left <= out_bytes + 4096, "after decode the arena holds only the output (%zu vs %zu)", left, out_bytes);
    fprintf(stderr, "  decode 128x128: arena peak %zu (reuse) vs %zu (trace)\n", peak_reuse, peak_all);
    rb_vae_free(&m);
}

/* ---- config ---- */

static int write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f)
        return 0;
    fputs(text, f);
    return fclose(f) == 0;
}

static void t_vae_config(void) {
    rb_vae_config c;
    const char *g = t_golden_path("vae/config.json");
    if (!g)
        return;
    REQUIRE(rb_vae_config_load(&c, g) == RB_OK, "%s", rb_last_error());
    CHECK(c.n_blocks == 4 && c.block_out_channels[0] == 8 && c.block_out_channels[3] == 32, "blocks");
    CHECK(c.layers_per_block == 2 && c.norm_num_groups == 4 && c.latent_channels == 4, "sizes");
    CHECK(c.sample_size == 128 && fabsf(c.scaling_factor - 0.13025f) < 1e-7f && c.force_upcast, "sample/scale");
    CHECK(c.mid_block_add_attention && c.use_quant_conv && c.use_post_quant_conv, "defaults of absent keys");
    /* SD 1.5's vae/config.json (diffusers 0.6), which predates force_upcast and the other flags */
    char path[4096];
    snprintf(path, sizeof path, "%s/sd15_config.json", t_tmpdir());
    REQUIRE(write_file(path, "{\"_class_name\": \"AutoencoderKL\", \"_diffusers_version\": \"0.6.0\", \"act_fn\": "
                             "\"silu\", \"block_out_channels\": [128, 256, 512, 512], \"down_block_types\": "
                             "[\"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\", "
                             "\"DownEncoderBlock2D\"], \"in_channels\": 3, \"latent_channels\": 4, "
                             "\"layers_per_block\": 2, \"norm_num_groups\": 32, \"out_channels\": 3, "
                             "\"sample_size\": 512, \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", "
                             "\"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]}"),
            "write");
    REQUIRE(rb_vae_config_load(&c, path) == RB_OK, "%s", rb_last_error());
    rb_vae_config p;
    rb_vae_config_sd15(&p);
    CHECK(fabsf(c.scaling_factor - 0.18215f) < 1e-7f, "SD1.x default scaling factor: %g", c.scaling_factor);
    CHECK(!memcmp(&c, &p, sizeof c), "SD 1.5 config equals the preset");
    rb_vae_config_sdxl(&p);
    CHECK(p.sample_size == 1024 && fabsf(p.scaling_factor - 0.13025f) < 1e-7f && p.norm_num_groups == 32, "sdxl");
    /* sample_size as a list, and unsupported content */
    REQUIRE(write_file(path, "{\"block_out_channels\": [32, 64], \"latent_channels\": 16, \"layers_per_block\": 1, "
                             "\"sample_size\": [256, 256], \"mid_block_add_attention\": false, "
                             "\"use_quant_conv\": false, \"scaling_factor\": 0.3611, \"shift_factor\": 0.1159}"),
            "write");
    REQUIRE(rb_vae_config_load(&c, path) == RB_OK, "%s", rb_last_error());
    CHECK(c.sample_size == 256 && c.n_blocks == 2 && c.latent_channels == 16 && !c.mid_block_add_attention &&
              !c.use_quant_conv && c.use_post_quant_conv && fabsf(c.shift_factor - 0.1159f) < 1e-6f,
          "list sample_size and flags");
    REQUIRE(write_file(path, "{\"block_out_channels\": [32], \"latent_channels\": 4, \"layers_per_block\": 1, "
                             "\"down_block_types\": [\"CrossAttnDownBlock2D\"]}"),
            "write");
    CHECK(rb_vae_config_load(&c, path) == RB_ERR_UNSUPPORTED && strstr(rb_last_error(), "CrossAttnDownBlock2D"),
          "block type: %s", rb_last_error());
    REQUIRE(write_file(path, "{\"block_out_channels\": [30], \"latent_channels\": 4, \"layers_per_block\": 1}"),
            "write");
    CHECK(rb_vae_config_load(&c, path) == RB_ERR_FORMAT && strstr(rb_last_error(), "multiple of 32"),
          "channels vs groups: %s", rb_last_error());
}

static void t_vae_errors(void) {
    static rb_vae m;
    CHECK(rb_vae_load(&m, "/nonexistent", NULL) != RB_OK && strstr(rb_last_error(), "/nonexistent"),
          "missing path named: %s", rb_last_error());
    const char *g = t_golden_path("clip_text_l/model.safetensors");
    if (!g)
        return;
    rb_vae_config cfg;
    rb_vae_config_sdxl(&cfg);
    CHECK(rb_vae_load(&m, g, &cfg) == RB_ERR_FORMAT && strstr(rb_last_error(), "not an AutoencoderKL"),
          "not a VAE: %s", rb_last_error());
    /* the golden weights with SD-sized config: shape mismatch names the tensor */
    g = t_golden_path("vae/diffusion_pytorch_model.safetensors");
    CHECK(rb_vae_load(&m, g, &cfg) == RB_ERR_FORMAT && strstr(rb_last_error(), "encoder.conv_in.weight"),
          "shape mismatch: %s", rb_last_error());
    REQUIRE(rb_vae_load(&m, t_golden_path("vae"), NULL) == RB_OK, "%s", rb_last_error());
    ctx_reset(16 << 20);
    rb_tensor *bad = rb_arena_zeros(&arena, RB_F32, 4, (int64_t[]){1, 4, 64, 64});
    rb_vae_posterior p;
    CHECK(rb_vae_encode(&ctx, &m, bad, NULL, 0, NULL, &p) == RB_ERR_INVALID, "4-channel image refused");
    rb_ctx_clear(&ctx);
    rb_tensor *odd = rb_arena_zeros(&arena, RB_F32, 4, (int64_t[]){1, 3, 60, 64});
    CHECK(rb_vae_encode(&ctx, &m, odd, NULL, 0, NULL, &p) == RB_ERR_INVALID && strstr(rb_last_error(), "multiples of 8"),
          "size not a multiple of 8: %s", rb_last_error());
    rb_ctx_clear(&ctx);
    rb_tensor *z3 = rb_arena_zeros(&arena, RB_F32, 4, (int64_t[]){1, 3, 8, 8});
    CHECK(!rb_vae_decode(&ctx, &m, z3, 0, NULL) && ctx.status == RB_ERR_INVALID, "3-channel latent refused");
    rb_vae_free(&m);
}

int main(void) {
    RUN(t_vae_config);
    RUN(t_vae_golden_diffusers);
    RUN(t_vae_golden_sgm);
    RUN(t_vae_key_table_variants);
    RUN(t_vae_tiled);
    RUN(t_vae_arena_bounded);
    RUN(t_vae_errors);
    rb_arena_free(&arena);
    return t_done();
}
