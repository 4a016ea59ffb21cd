/* relbooth predicate [--subjects A[,B]] PROMPT: prints the relation predicate of a prompt template
 * ("A {} is hugging a {}." -> "hugging") on one line; rules in docs/predicate.md.
 * Exit status: 0 ok, 1 usage, 2 no predicate (one line "relbooth predicate: <problem>" on stderr). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "text/predicate.h"

static void usage(FILE *f) {
    fprintf(f, "usage: relbooth predicate [--subjects A[,B]] PROMPT\n"
               "  Prints the relation predicate of PROMPT, whose subjects are \"{}\" slots:\n"
               "    two slots: the words between them, without leading is/are/was/were and without\n"
               "               the article before the second slot (\"A {} is hugging a {}.\" -> hugging);\n"
               "    one slot:  the words after it (and is/are/was/were) up to the first preposition or\n"
               "               punctuation (\"A {} is riding a horse through a forest.\" -> riding a horse).\n"
               "  --subjects A[,B]  the prompt names its subjects with words instead of slots; each is\n"
               "                    matched as whole words, case-insensitively, first occurrence in order.\n"
               "  Rules and word tables: docs/predicate.md.\n");
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "relbooth predicate: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    usage(stderr);
    return RB_EXIT_USAGE;
}

int cmd_predicate(int argc, char **argv) {
    const char *prompt = NULL, *subject_list = NULL;
    int only_positional = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!only_positional && (!strcmp(a, "--help") || !strcmp(a, "-h"))) {
            usage(stdout);
            return RB_EXIT_OK;
        } else if (!only_positional && !strcmp(a, "--")) {
            only_positional = 1;
        } else if (!only_positional && !strcmp(a, "--subjects")) {
            if (i + 1 >= argc)
                return usage_error("%s needs a value", a);
            subject_list = argv[++i];
        } else if (!only_positional && !strncmp(a, "--subjects=", 11)) {
            subject_list = a + 11;
        } else if (!only_positional && a[0] == '-' && a[1]) {
            return usage_error("unknown option '%s'", a);
        } else if (prompt) {
            return usage_error("unexpected argument '%s' (quote the prompt)", a);
        } else {
            prompt = a;
        }
    }
    if (!prompt)
        return usage_error("%s", "missing PROMPT");

    /* "A,B" -> subjects; more than two is bad input (exit 2), like a prompt with three slots. */
    char buf[4096];
    const char *subjects[RB_PREDICATE_MAX_SLOTS];
    int n_subjects = 0;
    if (subject_list) {
        if (strlen(subject_list) >= sizeof buf)
            return usage_error("%s", "--subjects value too long");
        strcpy(buf, subject_list);
        int pieces = 1;
        for (const char *q = buf; *q; q++)
            pieces += *q == ',';
        if (pieces > RB_PREDICATE_MAX_SLOTS) {
            fprintf(stderr, "relbooth predicate: %d subjects given; at most %d are supported\n", pieces,
                    RB_PREDICATE_MAX_SLOTS);
            return RB_EXIT_FAIL;
        }
        for (char *p = buf;;) {
            char *comma = strchr(p, ',');
            subjects[n_subjects++] = p;
            if (!comma)
                break;
            *comma = 0;
            p = comma + 1;
        }
    }
    char out[4096];
    if (rb_predicate_extract(prompt, subjects, n_subjects, out, sizeof out) != RB_OK)
        return cli_fail("predicate");
    printf("%s\n", out);
    return RB_EXIT_OK;
}
