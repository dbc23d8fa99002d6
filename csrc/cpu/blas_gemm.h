// The BLAS route of the fused CPU kernels' products, in tile_gemm's terms: C (M×N, rows ldc
// apart) = init + A·B for a strided A (a row-major matrix, col = 1, or the transpose of one,
// row = 1) and a row-major B (rows ldb apart), on the same buffers as the column-major
// Cᵀ = Bᵀ·Aᵀ. Calls the Fortran BLAS libtorch_cpu links (MKL on x86-64); single-threaded inside
// the callers' parallel regions.
#pragma once
#include <algorithm>
#include <cstdint>

#include "tile_gemm.h"

extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc);
}

namespace hyperkd {

// The column-major C (m×n, rows ldc apart) = Aᵀ?·Bᵀ? + beta·C of the Fortran BLAS, fp32 or fp64.
template <typename T>
void fortran_gemm(char ta, char tb, int m, int n, int k, const T* A, int lda, const T* B, int ldb, T beta, T* C,
                  int ldc) {
  const T one = 1;
  if constexpr (sizeof(T) == 4)
    sgemm_(&ta, &tb, &m, &n, &k, &one, A, &lda, B, &ldb, &beta, C, &ldc);
  else
    dgemm_(&ta, &tb, &m, &n, &k, &one, A, &lda, B, &ldb, &beta, C, &ldc);
}

// init is the N-vector `bias` when given (copied into C's rows first), else C itself when
// `accumulate`, else zero. (The callers pass a bias only to products that do not accumulate, where
// this is tile_gemm's init.)
template <typename T>
void blas_gemm(int64_t M, int64_t N, int64_t K, StridedMatrix<T> A, const T* B, int64_t ldb, T* C,
               int64_t ldc, const T* bias, bool accumulate) {
  if (bias)
    for (int64_t r = 0; r < M; ++r) std::copy_n(bias, N, C + r * ldc);
  const bool a_transposed = A.col != 1;
  fortran_gemm<T>('N', a_transposed ? 'T' : 'N', N, M, K, B, ldb, A.p, a_transposed ? A.col : A.row,
                  accumulate || bias ? T(1) : T(0), C, ldc);
}

// C[i, j] += Σ_k X[i, k]·Y[j, k] for i < nx, j < ny and k < K: X and Y row-major (rows ld apart),
// C row-major (rows ldc apart). In BLAS's column-major terms Cᵀ = Yᵀ·X, one call with Y transposed.
template <typename T>
void blas_rows_dot(const T* X, int64_t nx, const T* Y, int64_t ny, int64_t K, int64_t ld, T* C, int64_t ldc) {
  fortran_gemm<T>('T', 'N', ny, nx, K, Y, ld, X, ld, T(1), C, ldc);
}

}  // namespace hyperkd
