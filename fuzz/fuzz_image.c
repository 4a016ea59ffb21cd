/* libFuzzer target: the image decoding wrapper (rb_image_decode: PNG, JPEG, WebP by content). The
 * requested channel count comes from the input length so all conversions are reached without
 * changing the file's leading bytes; every decoded pixel is read back. */
#include "fuzz.h"
#include "io/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const int wants[4] = {0, 1, 3, 4};
    rb_set_mem_limit(FUZZ_MEM_LIMIT);
    (void)rb_image_sniff(data, size);
    rb_image img;
    if (rb_image_decode(&img, data, size, wants[size % 4], "fuzz.img") != RB_OK) {
        if (img.data)
            __builtin_trap(); /* documented: img zeroed on error */
        return 0;
    }
    size_t n = (size_t)img.width * (size_t)img.height * (size_t)img.channels;
    if (!img.data || n == 0 || (wants[size % 4] && img.channels != wants[size % 4]))
        __builtin_trap();
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc ^= img.data[i];
    fuzz_sink ^= acc;
    rb_image_free(&img);
    return 0;
}
