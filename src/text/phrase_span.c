/* Token spans of phrases in a prompt, as DreamRelation's train.py get_phrases_idx and MS-Diffusion's
 * get_phrase_idx compute them (whitespace words, BPE counts of the words before). */
#include "phrase_span.h"

#include <stdio.h>
#include <string.h>

static int bpe_count(const rb_clip_tokenizer *tok, const char *word) {
    int32_t ids[256];
    return rb_clip_encode(tok, word, ids, 256);
}

static size_t strip_punct(const char *w, size_t n) {
    while (n > 0 && strchr(".!?,:", w[n - 1]))
        n--;
    return n;
}

static int word_matches(const char *pw, size_t pn, const char *w, size_t wn) {
    pn = strip_punct(pw, pn);
    if (pn == wn && !strncmp(pw, w, wn))
        return 1;
    return pn > wn && pw[pn - wn - 1] == '-' && !strncmp(pw + pn - wn, w, wn);
}

rb_status rb_phrase_span(const rb_clip_tokenizer *tok, const char *prompt, const char *phrase, int64_t span[2]) {
    enum { MAXW = 128 };
    const char *pw[MAXW], *fw[MAXW];
    size_t pl[MAXW], fl[MAXW];
    int np = 0, nf = 0;
    for (const char *s = prompt; *s && np < MAXW;) {
        while (*s == ' ' || *s == '\t' || *s == '\n')
            s++;
        if (!*s)
            break;
        pw[np] = s;
        while (*s && *s != ' ' && *s != '\t' && *s != '\n')
            s++;
        pl[np] = (size_t)(s - pw[np]), np++;
    }
    for (const char *s = phrase; *s && nf < MAXW;) {
        while (*s == ' ')
            s++;
        if (!*s)
            break;
        fw[nf] = s;
        while (*s && *s != ' ')
            s++;
        fl[nf] = (size_t)(s - fw[nf]), nf++;
    }
    span[0] = span[1] = 0;
    int64_t pos = 1; /* after BOS */
    char buf[512];
    for (int i = 0; i < np; i++) {
        int ok = nf > 0 && i + nf <= np;
        for (int k = 0; ok && k < nf; k++)
            ok = word_matches(pw[i + k], pl[i + k], fw[k], fl[k]);
        if (ok) {
            int64_t n = 0;
            for (int k = 0; k < nf; k++) {
                snprintf(buf, sizeof buf, "%.*s", (int)fl[k], fw[k]); /* the phrase's own words */
                int c = bpe_count(tok, buf);
                if (c < 0)
                    return RB_ERR_INVALID;
                n += c;
            }
            span[0] = pos, span[1] = pos + n;
            return RB_OK;
        }
        snprintf(buf, sizeof buf, "%.*s", (int)pl[i], pw[i]);
        int c = bpe_count(tok, buf);
        if (c < 0)
            return RB_ERR_INVALID;
        pos += c;
    }
    return RB_OK;
}
