/* The fuzz targets that build a structured input (QMP arguments, command
 * sequences) from libFuzzer's bytes read them through this cursor: past the
 * end every byte reads as 0, so any input, however short, is a whole run. */
#ifndef VBD_FUZZ_INPUT_H
#define VBD_FUZZ_INPUT_H

#include <stddef.h>
#include <stdint.h>

struct input {
    const uint8_t *p;
    size_t left;
};

static inline unsigned input_next(struct input *in)
{
    if (!in->left)
        return 0;
    in->left--;
    return *in->p++;
}

#endif
