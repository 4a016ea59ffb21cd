#include <stdio.h>

#include "cli.h"

int cmd_bench(int argc, char **argv) {
    fprintf(stderr, "relbooth bench: not built yet\n");
    return RB_EXIT_FAIL;
}
