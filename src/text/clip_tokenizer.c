/* CLIP BPE tokenizer. The steps mirror transformers' CLIPTokenizer without ftfy:
 *   1. split out added tokens (<|startoftext|>, <|endoftext|>, and the pad token when it is not
 *      <|endoftext|>: SDXL's tokenizer_2 pads with "!" and therefore splits every literal "!");
 *   2. BERT BasicTokenizer clean-up on each remaining piece: drop NUL, U+FFFD and control/format
 *      characters, map whitespace to ' ', isolate CJK ideographs, NFC, split on whitespace,
 *      lower-case each word (no accent stripping, no punctuation split), join with ' ';
 *   3. the CLIP pre-tokenisation regex
 *      <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 *   4. GPT-2 byte-to-unicode mapping, "</w>" on the last symbol, BPE merges by lowest rank.
 * Unicode properties, case mapping and NFC come from utf8proc. */
#include "clip_tokenizer.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <utf8proc.h>

#include "core/file.h"
#include "core/mem.h"
#include "core/strmap.h"
#include "io/json.h"

#define MAX_VOCAB_BYTES (64u << 20)
#define MAX_TEXT_BYTES (1u << 20)

struct rb_clip_tokenizer {
    rb_strmap vocab;  /* token string -> id */
    rb_strmap merges; /* "a b" -> rank */
    char **id_to_token;
    int32_t n_tokens;
    int32_t bos, eos, pad, unk;
    char pad_str[64];     /* pad token text when it is split out of the input ("!") */
    char byte_sym[256][3]; /* GPT-2 byte -> unicode symbol, UTF-8 encoded */
};

/* ---- loading ---- */

static void init_byte_map(rb_clip_tokenizer *t) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        int cp = printable ? b : 256 + n++;
        utf8proc_ssize_t k = utf8proc_encode_char(cp, (utf8proc_uint8_t *)t->byte_sym[b]);
        t->byte_sym[b][k] = 0;
    }
}

static rb_status load_vocab(rb_clip_tokenizer *t, const char *path) {
    json_t *root;
    RB_TRY(rb_json_load_object(path, &root));
    size_t n = json_object_size(root);
    rb_status s = rb_strmap_init(&t->vocab, (uint32_t)n);
    t->id_to_token = s == RB_OK ? rb_calloc(n * sizeof(char *), "vocabulary") : NULL;
    if (s == RB_OK && !t->id_to_token)
        s = RB_ERR_OOM;
    t->n_tokens = (int32_t)n;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (s != RB_OK)
            break;
        json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
        if (id < 0 || (size_t)id >= n || t->id_to_token[id]) {
            s = rb_error(RB_ERR_FORMAT, "%s: token '%s' has an invalid or repeated id", path, key);
            break;
        }
        s = rb_strmap_put(&t->vocab, key, strlen(key), (int32_t)id);
        if (s == RB_OK) /* keys are unique in a JSON object, so this key was just appended */
            t->id_to_token[id] = t->vocab.keys[t->vocab.n - 1];
    }
    json_decref(root);
    return s;
}

static rb_status load_merges(rb_clip_tokenizer *t, const char *path) {
    char *text;
    size_t len;
    RB_TRY(rb_read_file(path, MAX_VOCAB_BYTES, &text, &len));
    rb_status s = rb_strmap_init(&t->merges, 65536);
    int32_t rank = 0;
    char *line = text;
    int first = 1;
    while (s == RB_OK && line < text + len) {
        char *end = memchr(line, '\n', (size_t)(text + len - line));
        if (!end)
            end = text + len;
        size_t n = (size_t)(end - line);
        if (n && line[n - 1] == '\r')
            n--;
        if (first && n >= 8 && !memcmp(line, "#version", 8)) {
            /* header line */
        } else if (n) {
            const char *sp = memchr(line, ' ', n);
            if (!sp || sp == line || sp == line + n - 1 || memchr(sp + 1, ' ', (size_t)(line + n - sp - 1)))
                s = rb_error(RB_ERR_FORMAT, "%s: merge %d is not two symbols separated by one space", path, rank);
            else
                s = rb_strmap_put(&t->merges, line, n, rank++);
        }
        first = 0;
        line = end + 1;
    }
    rb_free(text);
    return s;
}

/* The pad token of special_tokens_map.json: a plain string or {"content": ...}. */
static rb_status load_pad(rb_clip_tokenizer *t, const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/special_tokens_map.json", dir);
    t->pad = t->eos;
    t->pad_str[0] = 0;
    json_t *root;
    if (rb_json_load_object(path, &root) != RB_OK) {
        rb_clear_error();
        return RB_OK; /* optional: CLIP's default pads with <|endoftext|> */
    }
    json_t *pad = json_object_get(root, "pad_token");
    if (json_is_object(pad))
        pad = json_object_get(pad, "content");
    rb_status s = RB_OK;
    if (json_is_string(pad)) {
        const char *p = json_string_value(pad);
        int32_t id;
        if (strlen(p) >= sizeof t->pad_str || !rb_strmap_get(&t->vocab, p, strlen(p), &id))
            s = rb_error(RB_ERR_FORMAT, "%s: pad token '%.40s' is not in the vocabulary", path, p);
        else {
            t->pad = id;
            if (id != t->eos && id != t->bos)
                strcpy(t->pad_str, p);
        }
    }
    json_decref(root);
    return s;
}

rb_status rb_clip_tokenizer_load(rb_clip_tokenizer **out, const char *dir) {
    *out = NULL;
    rb_clip_tokenizer *t = rb_calloc(sizeof *t, "tokenizer");
    if (!t)
        return RB_ERR_OOM;
    init_byte_map(t);
    char path[4096];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    rb_status s = load_vocab(t, path);
    if (s == RB_OK) {
        snprintf(path, sizeof path, "%s/merges.txt", dir);
        s = load_merges(t, path);
    }
    if (s == RB_OK && (!rb_strmap_get(&t->vocab, "<|startoftext|>", 15, &t->bos) ||
                       !rb_strmap_get(&t->vocab, "<|endoftext|>", 13, &t->eos)))
        s = rb_error(RB_ERR_FORMAT, "%s/vocab.json: no <|startoftext|> / <|endoftext|> tokens", dir);
    t->unk = t->eos;
    if (s == RB_OK)
        s = load_pad(t, dir);
    if (s != RB_OK) {
        rb_clip_tokenizer_free(t);
        return s;
    }
    *out = t;
    return RB_OK;
}

void rb_clip_tokenizer_free(rb_clip_tokenizer *t) {
    if (!t)
        return;
    rb_strmap_free(&t->vocab);
    rb_strmap_free(&t->merges);
    rb_free(t->id_to_token);
    rb_free(t);
}

int32_t rb_clip_tokenizer_bos(const rb_clip_tokenizer *t) { return t->bos; }
int32_t rb_clip_tokenizer_eos(const rb_clip_tokenizer *t) { return t->eos; }
int32_t rb_clip_tokenizer_pad(const rb_clip_tokenizer *t) { return t->pad; }
const char *rb_clip_token_str(const rb_clip_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_tokens ? t->id_to_token[id] : NULL;
}

/* ---- text clean-up (BERT BasicTokenizer, as CLIPTokenizer configures it) ---- */

static int is_cjk(int32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static int is_letter(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}
static int is_number(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}
/* Python's str.isspace / the regex module's \s: the Unicode White_Space characters. */
static int is_space(int32_t c) {
    if ((c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
        (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000)
        return 1;
    return 0;
}

typedef struct {
    int32_t *cp;
    size_t n, cap;
} cpbuf;

static int cp_push(cpbuf *b, int32_t c) {
    if (b->n == b->cap)
        return 0;
    b->cp[b->n++] = c;
    return 1;
}

/* Python str.lower() on one word (utf8proc's simple mappings plus the two contextual/multi-char
 * cases that occur in practice: U+0130 -> "i\u0307" and final sigma). */
static int lower_word(cpbuf *out, const int32_t *w, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int32_t c = w[i];
        if (c == 0x130) {
            if (!cp_push(out, 'i') || !cp_push(out, 0x307))
                return 0;
            continue;
        }
        if (c == 0x3A3) {
            int before = i > 0 && is_letter(w[i - 1]), after = i + 1 < n && is_letter(w[i + 1]);
            if (!cp_push(out, before && !after ? 0x3C2 : 0x3C3))
                return 0;
            continue;
        }
        if (!cp_push(out, utf8proc_tolower(c)))
            return 0;
    }
    return 1;
}

/* Cleans `text` (n bytes of UTF-8) into space-joined lower-cased words, as code points. */
static rb_status basic_clean(const char *text, size_t n, cpbuf *out) {
    /* clean + CJK isolation into UTF-8, then NFC through utf8proc */
    size_t cap = n * 3 + 16;
    utf8proc_uint8_t *tmp = rb_alloc(cap * 4, "tokenizer text");
    if (!tmp)
        return RB_ERR_OOM;
    size_t k = 0;
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)text;
    utf8proc_ssize_t left = (utf8proc_ssize_t)n;
    while (left > 0) {
        utf8proc_int32_t c;
        utf8proc_ssize_t used = utf8proc_iterate(p, left, &c);
        if (used < 0) {
            rb_free(tmp);
            return rb_error(RB_ERR_INVALID, "prompt is not valid UTF-8 (byte %zu)", n - (size_t)left);
        }
        p += used;
        left -= used;
        utf8proc_category_t cat = utf8proc_category(c);
        int control = c != '\t' && c != '\n' && c != '\r' && cat >= UTF8PROC_CATEGORY_CC && cat <= UTF8PROC_CATEGORY_CO;
        if (c == 0 || c == 0xFFFD || control || (cat == UTF8PROC_CATEGORY_CN && c > 0x7F))
            continue;
        int ws = c == ' ' || c == '\t' || c == '\n' || c == '\r' || cat == UTF8PROC_CATEGORY_ZS;
        if (ws)
            c = ' ';
        if (is_cjk(c))
            tmp[k++] = ' ';
        k += (size_t)utf8proc_encode_char(c, tmp + k);
        if (is_cjk(c))
            tmp[k++] = ' ';
    }
    utf8proc_uint8_t *nfc = NULL;
    utf8proc_ssize_t m = utf8proc_map(tmp, (utf8proc_ssize_t)k, &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    rb_free(tmp);
    if (m < 0)
        return rb_error(RB_ERR_INVALID, "prompt: Unicode normalisation failed (%s)", utf8proc_errmsg(m));
    /* decode, split on whitespace, lower-case each word, join with single spaces */
    int32_t *cps = rb_alloc(((size_t)m + 1) * sizeof *cps, "tokenizer text");
    out->cap = (size_t)m * 2 + 16;
    out->cp = rb_alloc(out->cap * sizeof *out->cp, "tokenizer text");
    out->n = 0;
    if (!cps || !out->cp) {
        free(nfc);
        rb_free(cps);
        return RB_ERR_OOM;
    }
    size_t nc = 0;
    for (utf8proc_ssize_t i = 0; i < m;) {
        utf8proc_int32_t c;
        i += utf8proc_iterate(nfc + i, m - i, &c);
        cps[nc++] = c;
    }
    free(nfc);
    for (size_t i = 0; i < nc;) {
        while (i < nc && is_space(cps[i]))
            i++;
        size_t j = i;
        while (j < nc && !is_space(cps[j]))
            j++;
        if (j > i) {
            if (out->n && !cp_push(out, ' '))
                break;
            if (!lower_word(out, cps + i, j - i))
                break;
        }
        i = j;
    }
    rb_free(cps);
    return RB_OK;
}

/* ---- BPE ---- */

typedef struct {
    const rb_clip_tokenizer *t;
    int32_t *ids;
    int cap, n;
} encoder;

static int emit(encoder *e, int32_t id) {
    if (e->n < e->cap)
        e->ids[e->n] = id;
    e->n++;
    return 1;
}

static int32_t merge_rank(const rb_clip_tokenizer *t, const char *a, const char *b, char *key) {
    size_t la = strlen(a), lb = strlen(b);
    memcpy(key, a, la);
    key[la] = ' ';
    memcpy(key + la + 1, b, lb);
    int32_t r;
    return rb_strmap_get(&t->merges, key, la + lb + 1, &r) ? r : INT32_MAX;
}

/* BPE-encodes one pre-token (UTF-8 bytes) and appends its ids. */
static rb_status bpe_piece(encoder *e, const unsigned char *s, size_t n) {
    /* each byte becomes a symbol of <= 2 UTF-8 bytes; "</w>" adds 4; merged symbols never exceed the
     * total, so 2 * (3n + 8) bytes of pool cover the symbols plus one merge key */
    size_t need = 2 * (3 * n + 8);
    char *pool = rb_alloc(need, "tokenizer word"), *key = rb_alloc(need, "tokenizer word");
    char **syms = rb_alloc((n + 1) * sizeof *syms, "tokenizer word");
    if (!pool || !key || !syms) {
        rb_free(pool);
        rb_free(key);
        rb_free(syms);
        return RB_ERR_OOM;
    }
    /* Symbols live in `pool` as consecutive strings; a merge writes the joined string in place of
     * the first (its bytes are exactly first+second, so it fits where first and second were). */
    size_t ns = 0, k = 0;
    for (size_t i = 0; i < n; i++) {
        syms[ns++] = pool + k;
        size_t l = strlen(e->t->byte_sym[s[i]]);
        memcpy(pool + k, e->t->byte_sym[s[i]], l);
        k += l;
        if (i == n - 1) {
            memcpy(pool + k, "</w>", 4);
            k += 4;
        }
        pool[k++] = 0;
    }
    while (ns > 1) {
        int32_t best = INT32_MAX;
        size_t bi = 0;
        for (size_t i = 0; i + 1 < ns; i++) {
            int32_t r = merge_rank(e->t, syms[i], syms[i + 1], key);
            if (r < best) {
                best = r;
                bi = i;
            }
        }
        if (best == INT32_MAX)
            break;
        /* merge every occurrence of the best pair, left to right, like the reference */
        char first[256], second[256];
        snprintf(first, sizeof first, "%s", syms[bi]);
        snprintf(second, sizeof second, "%s", syms[bi + 1]);
        size_t out = 0;
        for (size_t i = 0; i < ns;) {
            if (i + 1 < ns && !strcmp(syms[i], first) && !strcmp(syms[i + 1], second)) {
                size_t la = strlen(syms[i]);
                memmove(syms[i] + la, syms[i + 1], strlen(syms[i + 1]) + 1);
                syms[out++] = syms[i];
                i += 2;
            } else {
                syms[out++] = syms[i++];
            }
        }
        ns = out;
    }
    for (size_t i = 0; i < ns; i++) {
        int32_t id;
        emit(e, rb_strmap_get(&e->t->vocab, syms[i], strlen(syms[i]), &id) ? id : e->t->unk);
    }
    rb_free(pool);
    rb_free(key);
    rb_free(syms);
    return RB_OK;
}

static int prefix_at(const int32_t *c, size_t n, const char *lit) {
    size_t l = strlen(lit);
    if (l > n)
        return 0;
    for (size_t i = 0; i < l; i++)
        if (c[i] != (unsigned char)lit[i])
            return 0;
    return 1;
}

/* Pre-tokenises cleaned code points with the CLIP regex and BPE-encodes each piece. */
static rb_status encode_clean(encoder *e, const int32_t *c, size_t n) {
    static const char *contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    static const char *specials[] = {"<|startoftext|>", "<|endoftext|>"};
    unsigned char *bytes = rb_alloc(n * 4 + 4, "tokenizer piece");
    if (!bytes)
        return RB_ERR_OOM;
    rb_status s = RB_OK;
    for (size_t i = 0; i < n && s == RB_OK;) {
        size_t len = 0;
        for (int k = 0; k < 2 && !len; k++)
            if (prefix_at(c + i, n - i, specials[k]))
                len = strlen(specials[k]);
        for (int k = 0; k < 7 && !len; k++)
            if (prefix_at(c + i, n - i, contractions[k]))
                len = strlen(contractions[k]);
        if (!len && is_letter(c[i]))
            while (i + len < n && is_letter(c[i + len]))
                len++;
        if (!len && is_number(c[i]))
            len = 1;
        if (!len && !is_space(c[i]))
            while (i + len < n && !is_space(c[i + len]) && !is_letter(c[i + len]) && !is_number(c[i + len]))
                len++;
        if (!len) { /* whitespace is not part of any piece */
            i++;
            continue;
        }
        size_t nb = 0;
        for (size_t j = 0; j < len; j++)
            nb += (size_t)utf8proc_encode_char(c[i + j], bytes + nb);
        s = bpe_piece(e, bytes, nb);
        i += len;
    }
    rb_free(bytes);
    return s;
}

static rb_status encode_segment(encoder *e, const char *text, size_t n) {
    cpbuf clean = {0};
    rb_status s = basic_clean(text, n, &clean);
    if (s == RB_OK)
        s = encode_clean(e, clean.cp, clean.n);
    rb_free(clean.cp);
    return s;
}

int rb_clip_encode(const rb_clip_tokenizer *t, const char *text, int32_t *ids, int cap) {
    size_t n = strlen(text);
    if (n > MAX_TEXT_BYTES) {
        rb_error(RB_ERR_INVALID, "prompt: %zu bytes, more than the %u accepted", n, MAX_TEXT_BYTES);
        return -1;
    }
    encoder e = {.t = t, .ids = ids, .cap = cap};
    /* added tokens are matched first (longest at the earliest position), the rest is text */
    const char *added[3] = {"<|startoftext|>", "<|endoftext|>", t->pad_str[0] ? t->pad_str : NULL};
    int32_t added_id[3] = {t->bos, t->eos, t->pad};
    size_t start = 0;
    for (size_t i = 0; i <= n;) {
        int hit = -1;
        size_t hl = 0;
        for (int k = 0; k < 3 && i < n; k++) {
            size_t l = added[k] ? strlen(added[k]) : 0;
            if (l && l > hl && !strncmp(text + i, added[k], l))
                hit = k, hl = l;
        }
        if (hit < 0 && i < n) {
            i++;
            continue;
        }
        if (i > start && encode_segment(&e, text + start, i - start) != RB_OK)
            return -1;
        if (hit < 0)
            break;
        emit(&e, added_id[hit]);
        i += hl;
        start = i;
    }
    return e.n;
}

rb_status rb_clip_tokenize(const rb_clip_tokenizer *t, const char *text, int64_t ids[RB_CLIP_CONTEXT],
                           int64_t mask[RB_CLIP_CONTEXT], int *n_untruncated) {
    int32_t bpe[RB_CLIP_CONTEXT];
    int n = rb_clip_encode(t, text, bpe, RB_CLIP_CONTEXT - 2);
    if (n < 0)
        return RB_ERR_INVALID;
    if (n_untruncated)
        *n_untruncated = n + 2;
    int kept = n < RB_CLIP_CONTEXT - 2 ? n : RB_CLIP_CONTEXT - 2;
    int k = 0;
    ids[k++] = t->bos;
    for (int i = 0; i < kept; i++)
        ids[k++] = bpe[i];
    ids[k++] = t->eos;
    for (int i = 0; i < RB_CLIP_CONTEXT; i++) {
        if (mask)
            mask[i] = i < k;
        if (i >= k)
            ids[i] = t->pad;
    }
    return RB_OK;
}
