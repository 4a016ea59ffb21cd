/* libFuzzer target: the CLIP BPE tokenizer on arbitrary text (any bytes, invalid UTF-8 included),
 * with both SDXL vocabularies loaded once from the golden folder (RELBOOTH_GOLDEN, default
 * ../shared/golden): clip_tokenizer/tokenizer (pad <|endoftext|>) and tokenizer_2 (pad "!"). */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "text/clip_tokenizer.h"

static rb_clip_tokenizer *tok[2];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *g = getenv("RELBOOTH_GOLDEN");
    char dir[4096];
    static const char *const sub[2] = {"tokenizer", "tokenizer_2"};
    for (int k = 0; k < 2; k++) {
        snprintf(dir, sizeof dir, "%s/clip_tokenizer/%s", g && *g ? g : "../shared/golden", sub[k]);
        if (rb_clip_tokenizer_load(&tok[k], dir) != RB_OK) {
            fprintf(stderr, "fuzz_clip_tokenizer: cannot load %s: %s\n", dir, rb_last_error());
            exit(1);
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0; /* the API takes a C string: an embedded NUL ends it */
    for (int k = 0; k < 2; k++) {
        int64_t ids[RB_CLIP_CONTEXT], mask[RB_CLIP_CONTEXT];
        int n_full = 0;
        if (rb_clip_tokenize(tok[k], text, ids, mask, &n_full) == RB_OK) {
            for (int i = 0; i < RB_CLIP_CONTEXT; i++)
                if (!rb_clip_token_str(tok[k], (int32_t)ids[i]) || (mask[i] != 0 && mask[i] != 1))
                    __builtin_trap();
        }
        int32_t few[8];
        int n = rb_clip_encode(tok[k], text, few, 8);
        if (n > 0)
            for (int i = 0; i < (n < 8 ? n : 8); i++)
                if (!rb_clip_token_str(tok[k], few[i]))
                    __builtin_trap();
    }
    free(text);
    return 0;
}
