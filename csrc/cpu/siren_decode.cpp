// Fused weight decoding on the CPU (NeRN / SIREN predictor, paper §2): every kernel coordinate
// (ℓ, f, c) goes through the whole MLP while its block of activations stays in cache.
//   z₀ = T_ℓ[ℓ] + T_f[f] + T_c[c]         (first layer of a separable encoding, as three tables)
//   hᵢ = act(zᵢ),  zᵢ₊₁ = hᵢ Wᵢᵀ + bᵢ      (hidden layers, act = ReLU or sin)
//   out = h_last W_outᵀ + b_out
// Each block of kBlockRows coordinates is carried through all layers by single-threaded
// register-tiled products (tile_gemm.h: the weights packed once per call, the block's
// activations read in place, the bias loaded into the tiles; BLAS for wide predictors, see
// `product`) and `omp simd` loops for the epilogues, one chunk of blocks per thread of
// at::parallel_for, so the N×H activations of a layer never exist unless the caller asks to keep
// them, and a block pays no tensor-op overhead.
// Backward needs every layer's pre-activation: sin' = cos needs z, not sin(z). The forward either
// stores them, (NH+1)×N×H, when the caller asks (`save_pre_activations`, the default for
// training batches that fit the Python side's budget), or the backward recomputes each block's
// chain of forward products — a third more GEMM work, but no N×H×depth buffer for a wide predictor
// over a whole large net.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <utility>
#include <vector>

#include "blas_gemm.h"
#include "simd_math.h"
#include "tile_gemm.h"

namespace hyperkd {
namespace {

constexpr int64_t kBlockRows = 256;
enum Activation { kReLU = 0, kSine = 1 };

// C (M×N, rows ldc apart) = init + A·B, as tile_gemm takes them (A a row-major matrix, col = 1,
// or the transpose of one, row = 1; B row-major, rows ldb apart, readable to a whole panel).
// Single-threaded either way: the register tiles where their operands fit the TLB
// (tile_gemm_fits: every product up to width 240 in fp32 and 120 in fp64 with 32-byte vectors,
// 224 and 112 with AVX-512's 64-byte ones, whose wider panels pad the rows further), else the
// BLAS (blas_gemm).
template <typename T>
void product(int64_t M, int64_t N, int64_t K, StridedMatrix<T> A, const T* B, int64_t ldb, T* C,
             int64_t ldc, const T* bias, bool accumulate) {
  if (tile_gemm_fits(A, ldb)) return tile_gemm(M, N, K, A, B, ldb, C, ldc, bias, accumulate);
  blas_gemm(M, N, K, A, B, ldb, C, ldc, bias, accumulate);
}

// h = act(z), n elements.
template <typename T>
void activate(const T* z, T* h, int64_t n, int64_t act) {
  if (act == kSine) {
    int out_of_range = 0;
#pragma omp simd reduction(| : out_of_range)
    for (int64_t j = 0; j < n; ++j) {
      h[j] = sin_fast(z[j]);
      out_of_range |= !fast_trig_valid(z[j]);
    }
    if (out_of_range)  // |z| beyond kFastTrigBound, inf, NaN
      for (int64_t j = 0; j < n; ++j)
        if (!fast_trig_valid(z[j])) h[j] = std::sin(z[j]);
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) h[j] = z[j] > T(0) ? z[j] : T(0);
  }
}

void check_inputs(const at::Tensor& index, const at::Tensor& tl, const at::Tensor& tf,
                  const at::Tensor& tc, const at::Tensor& hw, const at::Tensor& hb,
                  const at::Tensor& ow, const at::Tensor& ob, int64_t act) {
  TORCH_CHECK(index.dim() == 2 && index.size(1) == 3 && index.scalar_type() == at::kLong,
              "index: expected an int64 N×3 tensor, got ", index.sizes(), " ", index.scalar_type());
  const int64_t H = ow.size(1);
  for (const auto* t : {&tl, &tf, &tc})
    TORCH_CHECK(t->dim() == 2 && t->size(1) == H, "tables: expected rows of width ", H);
  TORCH_CHECK(hw.dim() == 3 && hw.size(1) == H && hw.size(2) == H, "hidden_weight: expected NH×",
              H, "×", H, ", got ", hw.sizes());
  TORCH_CHECK(hb.dim() == 2 && hb.size(0) == hw.size(0) && hb.size(1) == H,
              "hidden_bias: expected NH×", H, ", got ", hb.sizes());
  TORCH_CHECK(ob.dim() == 1 && ob.size(0) == ow.size(0), "out_bias: expected ", ow.size(0), " entries");
  TORCH_CHECK(act == kReLU || act == kSine, "activation: expected 0 (ReLU) or 1 (sin), got ", act);
  for (const auto* t : {&tl, &tf, &tc, &hw, &hb, &ow, &ob})
    TORCH_CHECK(t->scalar_type() == ow.scalar_type() && t->scalar_type() != at::kHalf &&
                    t->scalar_type() != at::kBFloat16,
                "siren_decode: on the CPU all weights must share one dtype, fp32 or fp64");
}

// The first layer's pre-activation of rows [r0, r0+B): the sum of three gathered table rows.
template <typename T>
void gather_first_layer(const int64_t* index, const T* tl, const T* tf, const T* tc, int64_t H,
                        int64_t r0, int64_t B, T* z) {
  for (int64_t r = 0; r < B; ++r) {
    const int64_t* ix = index + (r0 + r) * 3;
    const T *a = tl + ix[0] * H, *b = tf + ix[1] * H, *c = tc + ix[2] * H;
    T* zr = z + r * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) zr[j] = a[j] + b[j] + c[j];
  }
}

// The kernels gather table rows by these indices without further checks. One pass over the N×3
// indices (ATen's aminmax would take three strided reductions and six host reads per call).
void check_index_range(const at::Tensor& index, std::array<int64_t, 3> rows) {
  const int64_t* ix = index.data_ptr<int64_t>();
  std::array<int64_t, 3> lo{0, 0, 0}, hi{0, 0, 0};
  if (index.size(0) > 0) lo = hi = {ix[0], ix[1], ix[2]};
  for (int64_t r = 0; r < index.size(0); ++r)
    for (int k = 0; k < 3; ++k) {
      lo[k] = std::min(lo[k], ix[r * 3 + k]);
      hi[k] = std::max(hi[k], ix[r * 3 + k]);
    }
  const char* axes[3] = {"layer", "filter", "channel"};
  for (int k = 0; k < 3; ++k)
    TORCH_CHECK(lo[k] >= 0 && hi[k] < rows[k], "index: ", axes[k], " indices must lie in [0, ",
                rows[k], "), got [", lo[k], ", ", hi[k], "]");
}

struct Weights {
  at::Tensor index, tl, tf, tc, hw, hb, ow, ob;
  int64_t act;
  int64_t NH() const { return hw.size(0); }
  int64_t H() const { return ow.size(1); }
};

Weights contiguous(const at::Tensor& index, const at::Tensor& tl, const at::Tensor& tf,
                   const at::Tensor& tc, const at::Tensor& hw, const at::Tensor& hb,
                   const at::Tensor& ow, const at::Tensor& ob, int64_t act) {
  check_inputs(index, tl, tf, tc, hw, hb, ow, ob, act);
  Weights w{index.contiguous(), tl.contiguous(), tf.contiguous(), tc.contiguous(), hw.contiguous(),
            hb.contiguous(), ow.contiguous(), ob.contiguous(), act};
  check_index_range(w.index, {tl.size(0), tf.size(0), tc.size(0)});
  return w;
}

// The pre-activations z₀..z_NH of one block: layer i's B×H rows start at z + i·layer_stride.
template <typename T>
struct BlockZ {
  T* z;
  int64_t layer_stride;
  T* operator[](int64_t i) const { return z + i * layer_stride; }
};

// Rows [r0, …) of the stored (NH+1)×N×H pre-activations, or else the block's own
// (NH+1)×kBlockRows×H scratch.
template <typename T>
BlockZ<T> block_z(const at::Tensor& saved, bool stored, T* scratch, int64_t r0, int64_t N,
                  int64_t H) {
  return stored ? BlockZ<T>{saved.data_ptr<T>() + r0 * H, N * H}
                : BlockZ<T>{scratch, kBlockRows * H};
}

// h (rows ldh apart) = act(z) (rows H apart) over B rows.
template <typename T>
void activate_rows(const T* z, T* h, int64_t ldh, int64_t B, int64_t H, int64_t act) {
  for (int64_t r = 0; r < B; ++r) activate(z + r * H, h + r * ldh, H, act);
}

// The weights as the tile products read them (their B operand), packed once per call: rows of
// width H are `ld` apart, rows of width O `ld_out`.
template <typename T>
struct PackedMlp {
  int64_t ld, ld_out;
  std::vector<T> hidden_t, out_t;  // Wᵢᵀ (NH×H rows), W_outᵀ (H rows): zᵢ₊₁ = hᵢ·Wᵢᵀ
  std::vector<T> hidden, out;      // Wᵢ (NH×H rows), W_out (O rows): dhᵢ = dzᵢ₊₁·Wᵢ (backward)
};

template <typename T>
PackedMlp<T> pack_mlp(const Weights& w, bool forward, bool backward) {
  const int64_t H = w.H(), O = w.ow.size(0), NH = w.NH();
  PackedMlp<T> p{padded_ld<T>(H), padded_ld<T>(O)};
  const T *hw = w.hw.data_ptr<T>(), *ow = w.ow.data_ptr<T>();
  if (forward) {
    p.hidden_t.resize(NH * H * p.ld);
    for (int64_t i = 0; i < NH; ++i)
      pack_rows(hw + i * H * H, H, H, 1, H, p.hidden_t.data() + i * H * p.ld, p.ld);
    p.out_t.resize(H * p.ld_out);
    pack_rows(ow, H, O, 1, H, p.out_t.data(), p.ld_out);
  }
  if (backward) {
    p.hidden.resize(NH * H * p.ld);
    pack_rows(hw, NH * H, H, H, 1, p.hidden.data(), p.ld);
    p.out.resize(O * p.ld);
    pack_rows(ow, O, H, H, 1, p.out.data(), p.ld);
  }
  return p;
}

// z₀..z_NH of rows [r0, r0+B) written into `zs`; `h` is scratch of kBlockRows rows ld apart.
template <typename T>
void block_forward(const Weights& w, const PackedMlp<T>& p, BlockZ<T> zs, T* h, int64_t r0,
                   int64_t B) {
  const int64_t H = w.H();
  gather_first_layer(w.index.data_ptr<int64_t>(), w.tl.data_ptr<T>(), w.tf.data_ptr<T>(),
                     w.tc.data_ptr<T>(), H, r0, B, zs[0]);
  const T* hb = w.hb.data_ptr<T>();
  for (int64_t i = 0; i < w.NH(); ++i) {
    activate_rows(zs[i], h, p.ld, B, H, w.act);
    product<T>(B, H, H, {h, p.ld, 1}, p.hidden_t.data() + i * H * p.ld, p.ld, zs[i + 1], H,
                 hb + i * H, false);
  }
}

int64_t block_count(int64_t N) { return (N + kBlockRows - 1) / kBlockRows; }

template <typename T>
void decode_blocks(const Weights& w, at::Tensor& out, at::Tensor& saved, bool save) {
  const int64_t N = w.index.size(0), H = w.H(), O = w.ow.size(0), NH = w.NH();
  const PackedMlp<T> p = pack_mlp<T>(w, true, false);
  at::parallel_for(0, block_count(N), 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> h(kBlockRows * p.ld), z_scratch(save ? 0 : (NH + 1) * kBlockRows * H);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * kBlockRows, B = std::min(kBlockRows, N - r0);
      const BlockZ<T> zs = block_z(saved, save, z_scratch.data(), r0, N, H);
      block_forward(w, p, zs, h.data(), r0, B);
      activate_rows(zs[NH], h.data(), p.ld, B, H, w.act);
      product<T>(B, O, H, {h.data(), p.ld, 1}, p.out_t.data(), p.ld_out,
                   out.data_ptr<T>() + r0 * O, O, w.ob.data_ptr<T>(), false);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> siren_decode_cpu(
    const at::Tensor& index, const at::Tensor& tl, const at::Tensor& tf, const at::Tensor& tc,
    const at::Tensor& hw, const at::Tensor& hb, const at::Tensor& ow, const at::Tensor& ob,
    int64_t act, bool save_pre_activations) {
  const Weights w = contiguous(index, tl, tf, tc, hw, hb, ow, ob, act);
  const int64_t N = index.size(0);
  auto out = at::empty({N, ow.size(0)}, ow.options());
  auto saved = save_pre_activations ? at::empty({w.NH() + 1, N, w.H()}, ow.options())
                                    : at::empty({0}, ow.options());
  AT_DISPATCH_FLOATING_TYPES(ow.scalar_type(), "siren_decode",
                             [&] { decode_blocks<scalar_t>(w, out, saved, save_pre_activations); });
  return {out, saved};
}

// Gradient accumulators of one chunk of blocks.
template <typename T>
struct Grads {
  T *tl, *tf, *tc, *hw, *hb, *ow, *ob;
};

// The backward's elementwise work between its GEMMs, one pass per layer over the block: going
// down from layer i to i−1 it turns dh into dz_i = dh ⊙ act'(z_i), adds dz_i's column sums into the
// bias gradient, and activates z_{i−1} into h for the next weight gradient. For sin, act'(z_i) =
// cos z_i was left in `cos_z` by the pass before, and this pass takes sin z_{i−1} and cos z_{i−1}
// from one range reduction (sincos_fast), where a sin pass and a cos pass would each pay it.
template <typename T>
struct SineGrad {
  T* cos_z;    // scratch of kBlockRows rows, ld apart
  int64_t ld;  // the row stride of h, dh and cos_z (z's rows are H apart)
  // h = sin z and cos_z = cos z over B rows.
  void start(const T* z, T* h, int64_t B, int64_t H) const {
    int out_of_range = 0;
    for (int64_t r = 0; r < B; ++r) {
      const T* zr = z + r * H;
      T *hr = h + r * ld, *c = cos_z + r * ld;
#pragma omp simd reduction(| : out_of_range)
      for (int64_t j = 0; j < H; ++j) {
        const auto sc = sincos_fast(zr[j]);
        hr[j] = sc.sin;
        c[j] = sc.cos;
        out_of_range |= !fast_trig_valid(zr[j]);
      }
    }
    if (out_of_range) redo_out_of_range(z, h, B, H);
  }
  // dh ← dz_i and bias_grad += its column sums; h ← sin z_{i−1}, cos_z ← cos z_{i−1}. (z_i itself
  // is not read: cos z_i is already in cos_z.)
  void step(T* dh, const T*, const T* z_prev, T* h, T* bias_grad, int64_t B, int64_t H) const {
    int out_of_range = 0;
    for (int64_t r = 0; r < B; ++r) {
      T *d = dh + r * ld, *c = cos_z + r * ld, *hr = h + r * ld;
      const T* zp = z_prev + r * H;
#pragma omp simd reduction(| : out_of_range)
      for (int64_t j = 0; j < H; ++j) {
        d[j] *= c[j];
        bias_grad[j] += d[j];
        const auto sc = sincos_fast(zp[j]);
        hr[j] = sc.sin;
        c[j] = sc.cos;
        out_of_range |= !fast_trig_valid(zp[j]);
      }
    }
    if (out_of_range) redo_out_of_range(z_prev, h, B, H);
  }
  // dz₀ = dh ⊙ cos z₀ of row r for the first layer, which has no bias of its own (it is folded
  // into T_ℓ).
  T first_layer_grad(T d, const T*, int64_t r, int64_t j) const { return d * cos_z[r * ld + j]; }

 private:
  // The elements the fast reduction does not cover (|z| beyond kFastTrigBound, inf, NaN).
  void redo_out_of_range(const T* z, T* h, int64_t B, int64_t H) const {
    for (int64_t r = 0; r < B; ++r)
      for (int64_t j = 0; j < H; ++j)
        if (const T x = z[r * H + j]; !fast_trig_valid(x)) {
          h[r * ld + j] = std::sin(x);
          cos_z[r * ld + j] = std::cos(x);
        }
  }
};

template <typename T>
struct ReLUGrad {
  int64_t ld;
  void start(const T* z, T* h, int64_t B, int64_t H) const { activate_rows(z, h, ld, B, H, kReLU); }
  void step(T* dh, const T* z, const T* z_prev, T* h, T* bias_grad, int64_t B, int64_t H) const {
    for (int64_t r = 0; r < B; ++r) {
      T *d = dh + r * ld, *hr = h + r * ld;
      const T *zr = z + r * H, *zp = z_prev + r * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        d[j] = zr[j] > T(0) ? d[j] : T(0);
        bias_grad[j] += d[j];
        hr[j] = zp[j] > T(0) ? zp[j] : T(0);
      }
    }
  }
  T first_layer_grad(T d, const T* z0_row, int64_t, int64_t j) const {
    return z0_row[j] > T(0) ? d : T(0);
  }
};

// Adds one block's gradients into `g`; `zs` holds its pre-activations (rows H apart), `gy` its
// B×O output grads; h, dh, dh2 are scratch of kBlockRows rows p.ld apart, zero-initialised: the
// weight-gradient products read h's rows to a whole panel, padding included.
template <typename T, typename Grad>
void block_backward(const Weights& w, const PackedMlp<T>& p, const Grad& act, BlockZ<T> zs,
                    const T* gy, int64_t r0, int64_t B, const Grads<T>& g, T* h, T* dh, T* dh2) {
  const int64_t H = w.H(), O = w.ow.size(0), NH = w.NH();
  act.start(zs[NH], h, B, H);
  product<T>(O, H, B, {gy, 1, O}, h, p.ld, g.ow, H, nullptr, true);  // g_ow += gyᵀ·h
  for (int64_t r = 0; r < B; ++r)
    for (int64_t j = 0; j < O; ++j) g.ob[j] += gy[r * O + j];
  product<T>(B, H, O, {gy, O, 1}, p.out.data(), p.ld, dh, p.ld, nullptr, false);  // dh = gy·W_out
  for (int64_t i = NH; i > 0; --i) {
    // Hidden layer i−1 maps h_{i−1} = act(z_{i−1}) to z_i.
    act.step(dh, zs[i], zs[i - 1], h, g.hb + (i - 1) * H, B, H);  // dh is now dz_i
    product<T>(H, H, B, {dh, 1, p.ld}, h, p.ld, g.hw + (i - 1) * H * H, H, nullptr, true);
    product<T>(B, H, H, {dh, p.ld, 1}, p.hidden.data() + (i - 1) * H * p.ld, p.ld, dh2, p.ld,
                 nullptr, false);
    std::swap(dh, dh2);
  }
  const int64_t* index = w.index.data_ptr<int64_t>();
  for (int64_t r = 0; r < B; ++r) {
    const int64_t* ix = index + (r0 + r) * 3;
    const T* d = dh + r * p.ld;
    T *a = g.tl + ix[0] * H, *b = g.tf + ix[1] * H, *c = g.tc + ix[2] * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T dz = act.first_layer_grad(d[j], zs[0] + r * H, r, j);
      a[j] += dz;
      b[j] += dz;
      c[j] += dz;
    }
  }
}

// dst += src over n elements.
template <typename T>
void add_into(T* dst, const T* src, int64_t n) {
  at::parallel_for(0, n, 1 << 15, [&](int64_t j0, int64_t j1) {
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
siren_decode_backward_cpu(const at::Tensor& grad_, const at::Tensor& index, const at::Tensor& tl,
                          const at::Tensor& tf, const at::Tensor& tc, const at::Tensor& hw,
                          const at::Tensor& hb, const at::Tensor& ow, const at::Tensor& ob,
                          int64_t act, const at::Tensor& saved_) {
  const Weights w = contiguous(index, tl, tf, tc, hw, hb, ow, ob, act);
  const auto grad = grad_.contiguous().to(ow.scalar_type());
  const int64_t N = index.size(0), H = w.H(), NH = w.NH(), O = ow.size(0);
  const bool stored = saved_.numel() > 0;
  TORCH_CHECK(!stored || saved_.sizes() == at::IntArrayRef({NH + 1, N, H}),
              "pre_activations: expected (NH+1)×N×H = ", NH + 1, "×", N, "×", H,
              " from the forward, or an empty tensor to recompute them; got ", saved_.sizes());
  const auto saved = saved_.contiguous().to(ow.scalar_type());
  // One accumulator per chunk of blocks (not per thread), so the sums do not depend on scheduling:
  // chunk 0 adds into the returned gradients, the others into `partial`, added in at the end.
  const int64_t blocks = block_count(N);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks));
  std::vector<at::Tensor> grads;
  for (const auto* t : {&tl, &tf, &tc, &hw, &hb, &ow, &ob})
    grads.push_back(at::zeros(t->sizes(), ow.options()));
  int64_t per_chunk = 0;
  for (const auto& g : grads) per_chunk += g.numel();
  auto partial = at::zeros({(chunks - 1) * per_chunk}, ow.options());
  AT_DISPATCH_FLOATING_TYPES(ow.scalar_type(), "siren_decode_backward", [&] {
    using T = scalar_t;
    const auto chunk_grads = [&](int64_t chunk) {
      T* p[7];
      for (int64_t k = 0, offset = 0; k < 7; offset += grads[k].numel(), ++k)
        p[k] = chunk == 0 ? grads[k].data_ptr<T>()
                          : partial.data_ptr<T>() + (chunk - 1) * per_chunk + offset;
      return Grads<T>{p[0], p[1], p[2], p[3], p[4], p[5], p[6]};
    };
    const PackedMlp<T> p = pack_mlp<T>(w, !stored, true);
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      const int64_t rows = kBlockRows * p.ld;
      std::vector<T> scratch(4 * rows + (stored ? 0 : (NH + 1) * kBlockRows * H));
      T *h = scratch.data(), *dh = h + rows, *dh2 = dh + rows, *cos_z = dh2 + rows;
      for (int64_t chunk = c0; chunk < c1; ++chunk) {
        const Grads<T> g = chunk_grads(chunk);
        for (int64_t blk = chunk * blocks / chunks; blk < (chunk + 1) * blocks / chunks; ++blk) {
          const int64_t r0 = blk * kBlockRows, B = std::min(kBlockRows, N - r0);
          const BlockZ<T> zs = block_z(saved, stored, cos_z + rows, r0, N, H);
          if (!stored) block_forward(w, p, zs, h, r0, B);
          const T* gy = grad.data_ptr<T>() + r0 * O;
          if (act == kSine)
            block_backward(w, p, SineGrad<T>{cos_z, p.ld}, zs, gy, r0, B, g, h, dh, dh2);
          else
            block_backward(w, p, ReLUGrad<T>{p.ld}, zs, gy, r0, B, g, h, dh, dh2);
        }
      }
    });
    for (int64_t chunk = 1; chunk < chunks; ++chunk) {
      const T* src = partial.data_ptr<T>() + (chunk - 1) * per_chunk;
      for (auto& g : grads) {
        add_into(g.data_ptr<T>(), src, g.numel());
        src += g.numel();
      }
    }
  });
  return {grads[0], grads[1], grads[2], grads[3], grads[4], grads[5], grads[6]};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hyperkd, m) {
  m.def("siren_decode(Tensor index, Tensor table_l, Tensor table_f, Tensor table_c, "
        "Tensor hidden_weight, Tensor hidden_bias, Tensor out_weight, Tensor out_bias, "
        "int activation, bool save_pre_activations=False) -> (Tensor kernels, Tensor pre_activations)");
  m.def("siren_decode_backward(Tensor grad, Tensor index, Tensor table_l, Tensor table_f, "
        "Tensor table_c, Tensor hidden_weight, Tensor hidden_bias, Tensor out_weight, "
        "Tensor out_bias, int activation, Tensor pre_activations) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hyperkd, CPU, m) {
  m.impl("siren_decode", &siren_decode_cpu);
  m.impl("siren_decode_backward", &siren_decode_backward_cpu);
}

}  // namespace hyperkd
