/* relbooth: thin command-line front end; every command lives in its own file. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "relbooth.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"generate", cmd_generate, "generate images: SDXL, or relation-aware customized (DreamRelation)"},
    {"info", cmd_info, "show what a checkpoint or image file holds"},
    {"predicate", cmd_predicate, "print the relation predicate of a prompt template"},
    {"eval", cmd_eval, "generate and score a relation benchmark (metrics.json, cases.csv, report.html)"},
    {"train", cmd_train, "fine-tune a RelationLoRA on a relation dataset"},
    {"distill", cmd_distill, "CLIPSelf-distil the local image encoder (--local-encoder) on a folder of images"},
    {"demo", cmd_demo, "run the whole generation path on tiny random-weight models (no downloads)"},
    {"bench", cmd_bench, "measure kernels against this machine's matrix-multiply peak"},
};

int cli_fail(const char *cmd) {
    fprintf(stderr, "relbooth %s: %s\n", cmd, rb_last_error()[0] ? rb_last_error() : "failed");
    return RB_EXIT_FAIL;
}

static void usage(FILE *f) {
    fprintf(f, "usage: relbooth <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n`relbooth <command> --help` describes a command; `relbooth --version` prints the version.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return RB_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return RB_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("relbooth %s\n", RELBOOTH_VERSION);
        return RB_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "relbooth: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return RB_EXIT_USAGE;
}
