/* Shared by the C kernels of policies/: the float type and the sigmoid. */
#ifndef LIQUID_DRONES_KERNEL_COMMON_H
#define LIQUID_DRONES_KERNEL_COMMON_H

#include <stdint.h>
#include <string.h>
#include <tgmath.h> /* exp(), tanh() follow REAL */

#ifndef REAL
#define REAL float /* policies/native.py builds each kernel with REAL=float and REAL=double */
#endif

#define ONE ((REAL)1)

static inline REAL sigmoid(REAL x) {
    return ONE / (ONE + exp(-x));
}

#endif
