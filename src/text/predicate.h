/* Rule-based predicate (relation phrase) extraction from prompt templates such as
 * "A {} is hugging a {} in front of the mountain." -> "hugging", without a parser model (no spaCy).
 * The rules and the word tables are documented in docs/predicate.md:
 *   two subject slots: the words between them, minus leading auxiliaries and the article right
 *                      before the second slot;
 *   one subject slot:  the words after the slot and its auxiliaries, up to the first preposition
 *                      or punctuation mark.
 * Prompts written with subject words instead of "{}" slots name those words in `subjects`. */
#ifndef RB_TEXT_PREDICATE_H
#define RB_TEXT_PREDICATE_H

#include <stddef.h>

#include "core/status.h"

#define RB_PREDICATE_MAX_SLOTS 2

/* Writes the predicate of `prompt` (words copied as written, joined by single spaces,
 * NUL-terminated) into out[cap].
 * n_subjects == 0: the prompt's "{}" slots ("{ }" with blanks inside also counts) mark the subjects.
 * n_subjects 1 or 2: the subjects (each one or more words) are found as whole words, case-insensitively,
 *   the first subject's first occurrence, then the second subject's first occurrence after it; the
 *   prompt must then hold no "{}" slot.
 * Fails with RB_ERR_INVALID and a one-line message when there is no slot and no subject, a subject is
 * not found, there are more than two slots or subjects, the predicate is empty, or it does not fit. */
rb_status rb_predicate_extract(const char *prompt, const char *const *subjects, int n_subjects, char *out,
                               size_t cap);

/* The word tables the rules use (for docs/tests): entries are lower-case; a preposition entry may be
 * several words separated by single spaces ("next to"). */
typedef enum { RB_PRED_AUXILIARIES, RB_PRED_ARTICLES, RB_PRED_PREPOSITIONS } rb_predicate_table_id;
const char *const *rb_predicate_table(rb_predicate_table_id id, int *n);

#endif
