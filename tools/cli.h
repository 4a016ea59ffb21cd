/* The relbooth command line: one function per command, each parsing its own flags and returning
 * the process exit status (0 success, 1 usage, 2 bad input or failure, with a one-line error). */
#ifndef RB_TOOLS_CLI_H
#define RB_TOOLS_CLI_H

enum { RB_EXIT_OK = 0, RB_EXIT_USAGE = 1, RB_EXIT_FAIL = 2 };

int cmd_generate(int argc, char **argv); /* tools/cmd_generate.c */
int cmd_info(int argc, char **argv);  /* tools/cmd_info.c */
int cmd_predicate(int argc, char **argv); /* tools/cmd_predicate.c */
int cmd_eval(int argc, char **argv);      /* tools/cmd_eval.c */
int cmd_train(int argc, char **argv);     /* tools/cmd_train.c */
int cmd_distill(int argc, char **argv);   /* tools/cmd_distill.c */
int cmd_bench(int argc, char **argv); /* bench/bench.c */
int cmd_demo(int argc, char **argv);  /* tools/cmd_demo.c */

/* Prints "relbooth <cmd>: <last error>" to stderr and returns RB_EXIT_FAIL. */
int cli_fail(const char *cmd);

#endif
