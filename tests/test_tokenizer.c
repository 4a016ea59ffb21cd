/* CLIP BPE tokenizer against golden/clip_tokenizer: every string, both SDXL tokenizers, exact ids. */
#include <jansson.h>

#include "harness.h"
#include "io/safetensors.h"
#include "text/clip_tokenizer.h"
#include "text/phrase_span.h"

/* Compares all 153 strings for one tokenizer folder against tokens.json; returns mismatches. */
static int check_all(const char *name, const char *ids_key, const char *mask_key) {
    char dir[8192], path[8192];
    const char *g = t_golden_path("clip_tokenizer");
    if (!g)
        return 0;
    snprintf(dir, sizeof dir, "%s/%s", g, name);
    rb_clip_tokenizer *tok;
    if (rb_clip_tokenizer_load(&tok, dir) != RB_OK) {
        CHECK(0, "load %s: %s", dir, rb_last_error());
        return 1;
    }
    snprintf(path, sizeof path, "%s/tokens.json", g);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) {
        CHECK(0, "%s: %s", path, err.text);
        rb_clip_tokenizer_free(tok);
        return 1;
    }
    int bad = 0;
    size_t i;
    json_t *row;
    json_array_foreach(root, i, row) {
        const char *text = json_string_value(json_object_get(row, "text"));
        json_t *want = json_object_get(row, ids_key), *want_mask = json_object_get(row, mask_key);
        int64_t ids[77], mask[77];
        int n_untr = 0;
        if (rb_clip_tokenize(tok, text, ids, mask, &n_untr) != RB_OK) {
            fprintf(stderr, "  %s #%zu: %s\n", name, i, rb_last_error());
            bad++;
            continue;
        }
        int diff = 0;
        for (int k = 0; k < 77; k++)
            diff |= ids[k] != json_integer_value(json_array_get(want, (size_t)k)) ||
                    mask[k] != json_integer_value(json_array_get(want_mask, (size_t)k));
        if (!strcmp(name, "tokenizer"))
            diff |= n_untr != json_integer_value(json_object_get(row, "num_tokens_untruncated"));
        if (diff) {
            bad++;
            fprintf(stderr, "  %s #%zu %s: got", name, i, text);
            for (int k = 0; k < 12; k++)
                fprintf(stderr, " %lld", (long long)ids[k]);
            fprintf(stderr, " want");
            for (int k = 0; k < 12; k++)
                fprintf(stderr, " %lld", (long long)json_integer_value(json_array_get(want, (size_t)k)));
            fprintf(stderr, "\n");
        }
    }
    json_decref(root);
    rb_clip_tokenizer_free(tok);
    return bad;
}

static void t_tokenizer_golden(void) {
    int bad = check_all("tokenizer", "input_ids_tokenizer", "attention_mask_tokenizer");
    CHECK(bad == 0, "tokenizer: %d strings differ", bad);
}

static void t_tokenizer_2_golden(void) {
    int bad = check_all("tokenizer_2", "input_ids_tokenizer_2", "attention_mask_tokenizer_2");
    CHECK(bad == 0, "tokenizer_2: %d strings differ", bad);
}

static void t_tokenizer_errors(void) {
    rb_clip_tokenizer *tok;
    CHECK(rb_clip_tokenizer_load(&tok, "/nonexistent-dir") == RB_ERR_IO &&
              strstr(rb_last_error(), "/nonexistent-dir/vocab.json"),
          "missing folder: %s", rb_last_error());
    const char *g = t_golden_path("clip_tokenizer/tokenizer");
    if (!g)
        return;
    REQUIRE(rb_clip_tokenizer_load(&tok, g) == RB_OK, "load: %s", rb_last_error());
    int64_t ids[77], mask[77];
    CHECK(rb_clip_tokenize(tok, "bad \xff\xfe utf8", ids, mask, NULL) == RB_ERR_INVALID &&
              strstr(rb_last_error(), "UTF-8"),
          "invalid UTF-8 is refused: %s", rb_last_error());
    CHECK(!strcmp(rb_clip_token_str(tok, 2368), "cat</w>"), "id 2368 = cat</w>");
    rb_clip_tokenizer_free(tok);
}

/* Phrase token spans against MS-Diffusion's get_phrase_idx in golden/pipeline_ms_diffusion. */
static void t_phrase_spans(void) {
    const char *g = t_golden_path("clip_tokenizer/tokenizer");
    if (!g)
        return;
    char dir[4096], io_path[8192];
    snprintf(dir, sizeof dir, "%s", g);
    snprintf(io_path, sizeof io_path, "%s", t_golden_path("pipeline_ms_diffusion/io.safetensors"));
    rb_clip_tokenizer *tok;
    REQUIRE(rb_clip_tokenizer_load(&tok, dir) == RB_OK, "%s", rb_last_error());
    rb_safetensors io;
    REQUIRE(rb_st_open(&io, io_path) == RB_OK, "%s", rb_last_error());
    const rb_tensor *want = rb_st_get(&io, "phrase_idxes"); /* [1, 2, 2] */
    const char *prompt = "best quality, high quality, a cat and a dog on the beach", *phrases[] = {"cat", "dog"};
    for (int j = 0; want && j < 2; j++) {
        int64_t span[2];
        CHECK(rb_phrase_span(tok, prompt, phrases[j], span) == RB_OK && span[0] == (int64_t)rb_tensor_get(want, 2 * j) &&
                  span[1] == (int64_t)rb_tensor_get(want, 2 * j + 1),
              "%s: [%lld, %lld)", phrases[j], (long long)span[0], (long long)span[1]);
    }
    CHECK(want != NULL, "phrase_idxes in the golden");
    rb_st_close(&io);
    rb_clip_tokenizer_free(tok);
}

int main(void) {
    RUN(t_phrase_spans);
    RUN(t_tokenizer_golden);
    RUN(t_tokenizer_2_golden);
    RUN(t_tokenizer_errors);
    return t_done();
}
