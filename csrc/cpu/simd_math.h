// glibc's libmvec has SIMD expf/sinf/cosf (and the double versions); <math.h> declares them only
// under -ffast-math, which would also relax every other float operation of a kernel, so they are
// declared here for the kernels' `omp simd` loops directly (setup.py links -lmvec).
#pragma once
#include <cmath>

#if defined(__x86_64__) && defined(__GLIBC__)
extern "C" {
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
double exp(double);
#pragma omp declare simd notinbranch
float sinf(float);
#pragma omp declare simd notinbranch
double sin(double);
#pragma omp declare simd notinbranch
float cosf(float);
#pragma omp declare simd notinbranch
double cos(double);
}
#endif
