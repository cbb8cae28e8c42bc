/* kn_act: the GELU table (see kn_act.h). */
#include "kernels/kn_act.h"

#include <pthread.h>

static uint16_t gelu_tab[65536];
static pthread_once_t gelu_once = PTHREAD_ONCE_INIT;

/* NOTE: the f32 formula of the tanh GELU as llama.cpp evaluates it,
 * 0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2))), at every f16 value, stored
 * rounded to f16; that rounding is part of the definition. */
static void gelu_build(void) {
    for (uint32_t h = 0; h < 65536; h++) {
        const float x = kn_f16_to_f32((uint16_t)h);
        const float g = 0.5f * x * (1.0f + tanhf(0.79788456080286535588f * x * (1.0f + 0.044715f * x * x)));
        gelu_tab[h] = kn_f32_to_f16(g);
    }
}

const uint16_t *kn_gelu_table(void) {
    pthread_once(&gelu_once, gelu_build);
    return gelu_tab;
}
