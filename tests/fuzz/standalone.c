/* Without libFuzzer (gcc builds, make check): replay files given on the
 * command line, or run N deterministic pseudo-random inputs. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
    if (argc > 1 && argv[1][0] != '-') {
        for (int i = 1; i < argc; i++) {
            FILE *f = fopen(argv[i], "rb");
            if (!f) {
                perror(argv[i]);
                return 1;
            }
            static uint8_t buf[1 << 20];
            size_t n = fread(buf, 1, sizeof(buf), f);
            fclose(f);
            LLVMFuzzerTestOneInput(buf, n);
        }
        return 0;
    }
    long runs = argc > 1 ? strtol(argv[1] + 1, NULL, 10) : 20000;
    uint64_t s = 0x9e3779b97f4a7c15ull;
    static uint8_t buf[4096];
    for (long r = 0; r < runs; r++) {
        size_t n = 4 + (size_t)(s % (sizeof(buf) - 4));
        for (size_t i = 0; i < n; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            /* small values make plausible rings: indices, lengths, flags */
            buf[i] = (uint8_t)((s >> 32) % ((r & 1) ? 256 : 20));
        }
        LLVMFuzzerTestOneInput(buf, n);
    }
    printf("%ld inputs, no crash\n", runs);
    return 0;
}
