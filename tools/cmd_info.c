/* relbooth info FILE [--json]: what a safetensors file, a PyTorch checkpoint or an image holds.
 * The type comes from the file's first bytes, never from its name. Exit status: 0 ok, 1 usage,
 * 2 unreadable or malformed file (one line "relbooth info: <file>: <problem>" on stderr). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "io/torchfile.h"

static void usage(FILE *f) {
    fprintf(f, "usage: relbooth info FILE [--json]\n"
               "  Lists the tensors (name, dtype, shape) of a .safetensors file or a PyTorch checkpoint\n"
               "  (torch.save zip or legacy format; plus metadata and scalar entries), or the format,\n"
               "  size and channels of a PNG/JPEG/WebP image. --json prints one JSON object.\n");
}

static int fail_json_oom(void) {
    fprintf(stderr, "relbooth info: out of memory\n");
    return RB_EXIT_FAIL;
}

static int emit(json_t *o) {
    if (!o)
        return fail_json_oom();
    int rc = json_dumpf(o, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER) ? fail_json_oom() : RB_EXIT_OK;
    json_decref(o);
    if (rc == RB_EXIT_OK)
        putchar('\n');
    return rc;
}

/* JSON string; names from pickles may not be UTF-8, so those get their non-ASCII bytes replaced. */
static json_t *jstr(const char *s) {
    json_t *j = json_string(s);
    if (j)
        return j;
    char buf[1024];
    size_t k = 0;
    for (; s[k] && k + 1 < sizeof buf; k++)
        buf[k] = (unsigned char)s[k] < 0x80 ? s[k] : '?';
    buf[k] = 0;
    return json_string(buf);
}

static json_t *int_array(const int64_t *v, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_integer(v[i]));
    return a;
}

static void shape_text(char *buf, size_t n, const int64_t *v, int nd) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < nd && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)v[i]);
    if (k < n)
        snprintf(buf + k, n - k, "]");
}

static int info_safetensors(const char *path, int as_json) {
    rb_safetensors f;
    if (rb_st_open(&f, path) != RB_OK)
        return cli_fail("info");
    size_t total = 0;
    for (int i = 0; i < f.n; i++)
        total += rb_nbytes(&f.entries[i].t);
    if (as_json) {
        json_t *o = json_object(), *meta = json_object(), *ts = json_array();
        json_object_set_new(o, "file", jstr(path));
        json_object_set_new(o, "format", json_string("safetensors"));
        json_object_set_new(o, "tensor_bytes", json_integer((json_int_t)total));
        for (int i = 0; i < f.n_meta; i++)
            json_object_set_new(meta, f.meta_keys[i], json_string(f.meta_values[i]));
        json_object_set_new(o, "metadata", meta);
        for (int i = 0; i < f.n; i++) {
            const rb_tensor *t = &f.entries[i].t;
            json_t *e = json_object();
            json_object_set_new(e, "name", json_string(f.entries[i].name));
            json_object_set_new(e, "dtype", json_string(rb_dtypes[t->dtype].safetensors));
            json_object_set_new(e, "shape", int_array(t->shape, t->ndim));
            json_array_append_new(ts, e);
        }
        json_object_set_new(o, "tensors", ts);
        rb_st_close(&f);
        return emit(o);
    }
    printf("file: %s\nformat: safetensors\ntensors: %d (%zu bytes)\n", path, f.n, total);
    for (int i = 0; i < f.n_meta; i++)
        printf("metadata: %s = %s\n", f.meta_keys[i], f.meta_values[i]);
    for (int i = 0; i < f.n; i++) {
        char sh[160];
        const rb_tensor *t = &f.entries[i].t;
        shape_text(sh, sizeof sh, t->shape, t->ndim);
        printf("  %s  %s  %s\n", f.entries[i].name, rb_dtypes[t->dtype].safetensors, sh);
    }
    rb_st_close(&f);
    return RB_EXIT_OK;
}

static json_t *scalar_json(const rb_torch_scalar *s) {
    switch (s->kind) {
    case RB_TS_BOOL: return json_boolean(s->i);
    case RB_TS_INT: return json_integer(s->i);
    case RB_TS_FLOAT: return json_real(s->f);
    case RB_TS_STR: return jstr(s->s);
    default: return json_null();
    }
}

static int info_torch(const char *path, int as_json) {
    rb_torchfile f;
    if (rb_torch_open(&f, path) != RB_OK)
        return cli_fail("info");
    size_t total = 0;
    for (int i = 0; i < f.n; i++)
        total += rb_nbytes(&f.entries[i].t);
    const char *fmt = f.format == RB_TORCH_ZIP ? "pytorch-zip" : "pytorch-legacy";
    if (as_json) {
        json_t *o = json_object(), *sc = json_object(), *ts = json_array();
        json_object_set_new(o, "file", jstr(path));
        json_object_set_new(o, "format", json_string(fmt));
        if (f.prefix)
            json_object_set_new(o, "record_prefix", json_string(f.prefix));
        json_object_set_new(o, "tensor_bytes", json_integer((json_int_t)total));
        for (int i = 0; i < f.n_scalars; i++) {
            json_t *key = jstr(f.scalars[i].name); /* a UTF-8-safe copy of the path */
            json_object_set_new(sc, key ? json_string_value(key) : "?", scalar_json(&f.scalars[i]));
            json_decref(key);
        }
        json_object_set_new(o, "scalars", sc);
        for (int i = 0; i < f.n; i++) {
            const rb_torch_entry *te = &f.entries[i];
            json_t *e = json_object();
            json_object_set_new(e, "name", jstr(te->name));
            json_object_set_new(e, "dtype", json_string(rb_dtypes[te->t.dtype].safetensors));
            json_object_set_new(e, "shape", int_array(te->t.shape, te->t.ndim));
            json_object_set_new(e, "stride", int_array(te->t.stride, te->t.ndim));
            json_object_set_new(e, "storage_offset", json_integer(te->storage_offset));
            json_object_set_new(e, "storage_numel", json_integer(te->storage_numel));
            json_object_set_new(e, "parameter", json_boolean(te->is_param));
            json_array_append_new(ts, e);
        }
        json_object_set_new(o, "tensors", ts);
        rb_torch_close(&f);
        return emit(o);
    }
    printf("file: %s\nformat: %s\n", path, fmt);
    if (f.prefix)
        printf("record prefix: %s\n", f.prefix);
    printf("tensors: %d (%zu bytes)\n", f.n, total);
    for (int i = 0; i < f.n_scalars; i++) {
        const rb_torch_scalar *s = &f.scalars[i];
        printf("scalar: %s = ", s->name[0] ? s->name : "(root)");
        switch (s->kind) {
        case RB_TS_BOOL: printf("%s\n", s->i ? "True" : "False"); break;
        case RB_TS_INT: printf("%lld\n", (long long)s->i); break;
        case RB_TS_FLOAT: printf("%.17g\n", s->f); break;
        case RB_TS_STR: printf("'%s'\n", s->s); break;
        default: printf("None\n"); break;
        }
    }
    for (int i = 0; i < f.n; i++) {
        const rb_torch_entry *te = &f.entries[i];
        char sh[160], sd[160];
        shape_text(sh, sizeof sh, te->t.shape, te->t.ndim);
        printf("  %s  %s  %s", te->name[0] ? te->name : "(root)", rb_dtypes[te->t.dtype].safetensors, sh);
        if (!rb_is_contiguous(&te->t) || te->storage_offset || te->storage_numel != rb_numel(&te->t)) {
            shape_text(sd, sizeof sd, te->t.stride, te->t.ndim);
            printf("  view: stride %s, offset %lld of %lld", sd, (long long)te->storage_offset,
                   (long long)te->storage_numel);
        }
        printf("%s\n", te->is_param ? "  parameter" : "");
    }
    rb_torch_close(&f);
    return RB_EXIT_OK;
}

static int info_image(const char *path, const char *fmt, int as_json) {
    rb_image img = {0};
    if (rb_image_probe(&img, path) != RB_OK)
        return cli_fail("info");
    int rc;
    if (as_json) {
        json_t *o = json_object();
        json_object_set_new(o, "file", jstr(path));
        json_object_set_new(o, "format", json_string(fmt));
        json_object_set_new(o, "width", json_integer(img.width));
        json_object_set_new(o, "height", json_integer(img.height));
        json_object_set_new(o, "channels", json_integer(img.source_channels));
        json_object_set_new(o, "bit_depth", json_integer(img.source_bit_depth));
        rc = emit(o);
    } else {
        printf("file: %s\nformat: %s\nsize: %dx%d\nchannels: %d\nbit depth: %d\n", path, fmt, img.width, img.height,
               img.source_channels, img.source_bit_depth);
        rc = RB_EXIT_OK;
    }
    rb_image_free(&img);
    return rc;
}

int cmd_info(int argc, char **argv) {
    const char *path = NULL;
    int as_json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            as_json = 1;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return RB_EXIT_OK;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "relbooth info: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return RB_EXIT_USAGE;
        } else if (path) {
            fprintf(stderr, "relbooth info: one file at a time\n");
            usage(stderr);
            return RB_EXIT_USAGE;
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        usage(stderr);
        return RB_EXIT_USAGE;
    }
    unsigned char head[16] = {0};
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "relbooth info: %s: cannot open: %s\n", path, strerror(errno));
        return RB_EXIT_FAIL;
    }
    size_t n = fread(head, 1, sizeof head, fp);
    fclose(fp);
    if (rb_st_sniff(head, n))
        return info_safetensors(path, as_json);
    if (rb_torch_sniff(head, n))
        return info_torch(path, as_json);
    if (n >= 8 && !memcmp(head, "\x89PNG\r\n\x1a\n", 8))
        return info_image(path, "png", as_json);
    if (n >= 3 && !memcmp(head, "\xff\xd8\xff", 3))
        return info_image(path, "jpeg", as_json);
    if (n >= 12 && !memcmp(head, "RIFF", 4) && !memcmp(head + 8, "WEBP", 4))
        return info_image(path, "webp", as_json);
    fprintf(stderr,
            "relbooth info: %s: unrecognised file type (expected safetensors, a PyTorch checkpoint or a "
            "PNG/JPEG/WebP image)\n",
            path);
    return RB_EXIT_FAIL;
}
