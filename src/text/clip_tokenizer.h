/* CLIP byte-level BPE tokenizer (the `tokenizer/` and `tokenizer_2/` folders of SDXL checkpoints),
 * reproducing transformers' slow CLIPTokenizer as the SDXL pipeline calls it:
 * tok(text, padding="max_length", max_length=77, truncation=True). See docs/tokenizer.md. */
#ifndef RB_TEXT_CLIP_TOKENIZER_H
#define RB_TEXT_CLIP_TOKENIZER_H

#include <stdint.h>

#include "core/status.h"

#define RB_CLIP_CONTEXT 77

typedef struct rb_clip_tokenizer rb_clip_tokenizer;

/* Loads vocab.json and merges.txt from `dir`; the pad token comes from special_tokens_map.json
 * ("<|endoftext|>" for SDXL's tokenizer, "!" for tokenizer_2). */
rb_status rb_clip_tokenizer_load(rb_clip_tokenizer **out, const char *dir);
void rb_clip_tokenizer_free(rb_clip_tokenizer *t);

int32_t rb_clip_tokenizer_bos(const rb_clip_tokenizer *t);
int32_t rb_clip_tokenizer_eos(const rb_clip_tokenizer *t);
int32_t rb_clip_tokenizer_pad(const rb_clip_tokenizer *t);

/* BPE ids of `text` without BOS/EOS, untruncated: writes up to `cap` ids and returns the total count
 * (which may exceed cap), or -1 with rb_last_error set. */
int rb_clip_encode(const rb_clip_tokenizer *t, const char *text, int32_t *ids, int cap);

/* [BOS] + first 75 BPE ids + [EOS], padded to 77 with the pad id; mask is 1 on BOS..EOS.
 * *n_untruncated (may be NULL) gets the length before truncation including BOS/EOS. */
rb_status rb_clip_tokenize(const rb_clip_tokenizer *t, const char *text, int64_t ids[RB_CLIP_CONTEXT],
                           int64_t mask[RB_CLIP_CONTEXT], int *n_untruncated);

/* Token string of an id ("cat</w>"), or NULL when out of range. */
const char *rb_clip_token_str(const rb_clip_tokenizer *t, int32_t id);

#endif
