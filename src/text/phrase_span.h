/* Where a phrase's tokens sit in a prompt's CLIP token ids. */
#ifndef RB_TEXT_PHRASE_SPAN_H
#define RB_TEXT_PHRASE_SPAN_H

#include <stdint.h>

#include "text/clip_tokenizer.h"

/* get_phrases_idx (DreamRelation train.py; MS-Diffusion's get_phrase_idx is the same rule) with CLIP
 * tokenizer 1: whitespace words of the prompt; a word matches when equal to the phrase's word after
 * dropping a trailing `.!?,:` (or ending in "-word"); start = 1 (BOS) + the BPE count of the preceding
 * words, end = start + the BPE count of the phrase's words. [0, 0] when the phrase is not found. */
rb_status rb_phrase_span(const rb_clip_tokenizer *tok, const char *prompt, const char *phrase, int64_t span[2]);

#endif
