/* Rule-based predicate extraction (see predicate.h and docs/predicate.md).
 *
 * The prompt is split into tokens: words, single punctuation marks and "{}" subject slots. The rules
 * then look words up in the three tables below; every word list the extractor knows lives in these
 * tables (and is printed in docs/predicate.md, which tests/test_predicate.c keeps in sync). */
#include "text/predicate.h"

#include <string.h>

#include "core/mem.h"

/* Dropped at the start of the predicate ("is hugging" -> "hugging"). */
static const char *const auxiliaries[] = {"is", "are", "was", "were"};

/* Dropped when it is the last word before the second subject ("hugging a {}" -> "hugging"). */
static const char *const articles[] = {"a", "an", "the"};

/* End a one-subject predicate ("riding a horse through ..." -> "riding a horse"). An entry of several
 * words matches only that exact word sequence; the multi-word entries are those whose first word is not
 * a preposition by itself ("in front of" needs no entry: "in" already ends the predicate). */
static const char *const prepositions[] = {
    "aboard", "about", "above", "across", "after", "against", "along", "alongside", "amid", "amidst",
    "among", "amongst", "around", "as", "at", "atop", "before", "behind", "below", "beneath",
    "beside", "besides", "between", "beyond", "by", "despite", "down", "during", "except", "for",
    "from", "in", "inside", "into", "like", "near", "of", "off", "on", "onto",
    "opposite", "out", "outside", "over", "past", "per", "round", "since", "than", "through",
    "throughout", "till", "to", "toward", "towards", "under", "underneath", "unlike", "until", "up",
    "upon", "via", "with", "within", "without", "next to", "close to", "ahead of", "because of",
    "instead of",
};

#define COUNT(a) ((int)(sizeof(a) / sizeof *(a)))

const char *const *rb_predicate_table(rb_predicate_table_id id, int *n) {
    switch (id) {
    case RB_PRED_AUXILIARIES: *n = COUNT(auxiliaries); return auxiliaries;
    case RB_PRED_ARTICLES: *n = COUNT(articles); return articles;
    case RB_PRED_PREPOSITIONS: *n = COUNT(prepositions); return prepositions;
    }
    *n = 0;
    return NULL;
}

typedef enum { TOK_WORD, TOK_PUNCT, TOK_SLOT } tok_kind;
typedef struct {
    tok_kind kind;
    const char *s;
    size_t len;
} token;

static int is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
static int is_upper(unsigned char c) { return c >= 'A' && c <= 'Z'; }
static int is_alnum(unsigned char c) {
    return is_upper(c) || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c >= 0x80;
}
static unsigned char lower(unsigned char c) { return is_upper(c) ? (unsigned char)(c + ('a' - 'A')) : c; }

/* Word: a letter, digit or non-ASCII (UTF-8) byte, then more of those, apostrophes and hyphens
 * ("back-to-back", "dog's"). Slot: '{', optional blanks, '}'. Anything else that is not blank is a
 * one-byte punctuation token. Returns the token count (at most strlen(text)). */
static int tokenize(const char *text, token *toks) {
    int n = 0;
    const unsigned char *p = (const unsigned char *)text;
    while (*p) {
        if (is_space(*p)) {
            p++;
            continue;
        }
        const unsigned char *start = p;
        tok_kind kind = TOK_PUNCT;
        if (is_alnum(*p)) {
            kind = TOK_WORD;
            while (is_alnum(*p) || *p == '\'' || *p == '-')
                p++;
        } else if (*p == '{') {
            const unsigned char *q = p + 1;
            while (*q == ' ' || *q == '\t')
                q++;
            if (*q == '}') {
                kind = TOK_SLOT;
                p = q + 1;
            } else {
                p++;
            }
        } else {
            p++;
        }
        toks[n++] = (token){kind, (const char *)start, (size_t)(p - start)};
    }
    return n;
}

static int word_eq(const token *t, const char *w, size_t wlen) {
    if (t->kind != TOK_WORD || t->len != wlen)
        return 0;
    for (size_t i = 0; i < wlen; i++)
        if (lower((unsigned char)t->s[i]) != lower((unsigned char)w[i]))
            return 0;
    return 1;
}

/* Whether the (space-separated) words of `phrase` match toks[i..]; returns how many tokens. */
static int match_phrase(const token *toks, int n, int i, const char *phrase) {
    int k = 0;
    while (*phrase) {
        size_t len = strcspn(phrase, " ");
        if (i + k >= n || !word_eq(&toks[i + k], phrase, len))
            return 0;
        k++;
        phrase += len;
        phrase += *phrase == ' ';
    }
    return k;
}

static int in_table(const token *toks, int n, int i, const char *const *table, int count) {
    for (int e = 0; e < count; e++)
        if (match_phrase(toks, n, i, table[e]))
            return 1;
    return 0;
}

typedef struct {
    int begin, end; /* token range [begin, end) of one subject */
} span;

/* First whole-word, case-insensitive occurrence of the words of `subject` at or after token `from`. */
static rb_status find_subject(const token *toks, int n, int from, const char *subject, const char *after,
                              span *out) {
    size_t slen = strlen(subject);
    token *st = rb_alloc((slen + 1) * sizeof *st, "predicate subject tokens");
    if (!st)
        return RB_ERR_OOM;
    int m = tokenize(subject, st);
    rb_status s = RB_OK;
    for (int k = 0; k < m && s == RB_OK; k++)
        if (st[k].kind != TOK_WORD)
            s = rb_error(RB_ERR_INVALID, "subject '%s' is not made of words", subject);
    if (s == RB_OK && m == 0)
        s = rb_error(RB_ERR_INVALID, "empty subject");
    int found = -1;
    for (int i = from; s == RB_OK && found < 0 && i + m <= n; i++) {
        int k = 0;
        while (k < m && word_eq(&toks[i + k], st[k].s, st[k].len))
            k++;
        if (k == m)
            found = i;
    }
    if (s == RB_OK && found < 0)
        s = after ? rb_error(RB_ERR_INVALID, "subject '%s' not found as a whole word after '%s'", subject, after)
                  : rb_error(RB_ERR_INVALID, "subject '%s' not found as a whole word", subject);
    if (s == RB_OK)
        *out = (span){found, found + m};
    rb_free(st);
    return s;
}

/* Appends the words toks[from..to) (skipping punctuation) to out, separated by single spaces. */
static rb_status emit(const token *toks, int from, int to, char *out, size_t cap) {
    size_t k = 0;
    for (int i = from; i < to; i++) {
        if (toks[i].kind != TOK_WORD)
            continue;
        size_t need = toks[i].len + (k ? 1 : 0);
        if (k + need + 1 > cap)
            return rb_error(RB_ERR_INVALID, "predicate longer than the %zu-byte output buffer", cap);
        if (k)
            out[k++] = ' ';
        memcpy(out + k, toks[i].s, toks[i].len);
        k += toks[i].len;
    }
    out[k] = 0;
    return RB_OK;
}

static int is_aux(const token *toks, int n, int i) { return in_table(toks, n, i, auxiliaries, COUNT(auxiliaries)); }

/* Two subjects: the words between them, without leading auxiliaries and without an article that is
 * the last token before the second subject. Punctuation between the subjects is dropped. */
static rb_status two_slots(const token *toks, int n, span a, span b, char *out, size_t cap) {
    int from = a.end, to = b.begin;
    for (;;) {
        while (from < to && toks[from].kind == TOK_PUNCT)
            from++;
        if (from < to && is_aux(toks, n, from))
            from++;
        else
            break;
    }
    if (to > from && in_table(toks, to, to - 1, articles, COUNT(articles)))
        to--;
    int words = 0;
    for (int i = from; i < to; i++)
        words += toks[i].kind == TOK_WORD;
    if (!words)
        return rb_error(RB_ERR_INVALID, "no predicate words between the two subjects");
    return emit(toks, from, to, out, cap);
}

/* One subject: after it and its auxiliaries, the words up to the first preposition, punctuation mark,
 * slot or the end of the prompt. */
static rb_status one_slot(const token *toks, int n, span a, char *out, size_t cap) {
    int from = a.end;
    while (from < n && is_aux(toks, n, from))
        from++;
    int to = from;
    while (to < n && toks[to].kind == TOK_WORD && !in_table(toks, n, to, prepositions, COUNT(prepositions)))
        to++;
    if (to == from)
        return rb_error(RB_ERR_INVALID, "no predicate words after the subject (a preposition, punctuation "
                                        "or the end of the prompt follows it)");
    return emit(toks, from, to, out, cap);
}

rb_status rb_predicate_extract(const char *prompt, const char *const *subjects, int n_subjects, char *out,
                               size_t cap) {
    if (!prompt || !out || cap == 0 || n_subjects < 0 || (n_subjects && !subjects))
        return rb_error(RB_ERR_INVALID, "rb_predicate_extract: bad arguments");
    out[0] = 0;
    if (n_subjects > RB_PREDICATE_MAX_SLOTS)
        return rb_error(RB_ERR_INVALID, "%d subjects given; at most %d are supported", n_subjects,
                        RB_PREDICATE_MAX_SLOTS);
    size_t len = strlen(prompt), bytes;
    if (!rb_mul_size(len + 1, sizeof(token), &bytes))
        return rb_error(RB_ERR_INVALID, "prompt too long");
    token *toks = rb_alloc(bytes, "predicate tokens");
    if (!toks)
        return RB_ERR_OOM;
    int n = tokenize(prompt, toks);

    span sp[RB_PREDICATE_MAX_SLOTS];
    int n_slots = 0, slots_seen = 0;
    for (int i = 0; i < n; i++)
        if (toks[i].kind == TOK_SLOT) {
            if (n_slots < RB_PREDICATE_MAX_SLOTS)
                sp[n_slots++] = (span){i, i + 1};
            slots_seen++;
        }
    rb_status s = RB_OK;
    if (n_subjects && slots_seen)
        s = rb_error(RB_ERR_INVALID, "prompt has {} slots and subject words were given; use one or the other");
    else if (slots_seen > RB_PREDICATE_MAX_SLOTS)
        s = rb_error(RB_ERR_INVALID, "prompt has %d {} subject slots; at most %d are supported", slots_seen,
                     RB_PREDICATE_MAX_SLOTS);
    else if (!slots_seen && !n_subjects)
        s = rb_error(RB_ERR_INVALID, "prompt has no {} subject slot and no subject words were given");
    for (int k = 0; s == RB_OK && k < n_subjects; k++) {
        s = find_subject(toks, n, k ? sp[k - 1].end : 0, subjects[k], k ? subjects[k - 1] : NULL, &sp[k]);
        n_slots = k + 1;
    }
    if (s == RB_OK)
        s = n_slots == 2 ? two_slots(toks, n, sp[0], sp[1], out, cap) : one_slot(toks, n, sp[0], out, cap);
    if (s != RB_OK)
        out[0] = 0;
    rb_free(toks);
    return s;
}
