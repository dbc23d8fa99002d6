// Fused weight decoding on the CPU (NeRN / SIREN predictor, paper §2): every kernel coordinate
// (ℓ, f, c) goes through the whole MLP while its block of activations stays in cache.
//   z₀ = T_ℓ[ℓ] + T_f[f] + T_c[c]         (first layer of a separable encoding, as three tables)
//   hᵢ = act(zᵢ),  zᵢ₊₁ = hᵢ Wᵢᵀ + bᵢ      (hidden layers, act = ReLU or sin)
//   out = h_last W_outᵀ + b_out
// Each block of kBlockRows coordinates is carried through all layers by single-threaded BLAS
// calls (at::parallel_for runs one chunk of blocks per thread, where ATen does not nest threads),
// so the N×H activations of a layer never exist unless the caller asks to keep them.
// Backward needs every layer's pre-activation: sin' = cos needs z, not sin(z). The forward either
// stores them, (NH+1)×N×H, when the caller asks (`save_pre_activations`, the default for
// training batches that fit the Python side's budget), or the backward recomputes each block's
// chain of forward GEMMs — a third more GEMM work, but no N×H×depth buffer for a wide predictor
// over a whole large net.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace hyperkd {
namespace {

constexpr int64_t kBlockRows = 256;
enum Activation { kReLU = 0, kSine = 1 };

at::Tensor activate(const at::Tensor& z, int64_t act) { return act == kSine ? z.sin() : z.relu(); }

at::Tensor activation_grad(const at::Tensor& z, int64_t act) {
  return act == kSine ? z.cos() : (z > 0).to(z.scalar_type());
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
  // The kernels gather table rows by these indices without further checks.
  const at::Tensor* tables[3] = {&tl, &tf, &tc};
  const char* axes[3] = {"layer", "filter", "channel"};
  for (int k = 0; k < 3 && index.size(0) > 0; ++k) {
    auto [lo, hi] = at::aminmax(index.select(1, k));
    TORCH_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < tables[k]->size(0), "index: ",
                axes[k], " indices must lie in [0, ", tables[k]->size(0), "), got [",
                lo.item<int64_t>(), ", ", hi.item<int64_t>(), "]");
  }
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
    for (int64_t j = 0; j < H; ++j) zr[j] = a[j] + b[j] + c[j];
  }
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
  return {index.contiguous(), tl.contiguous(), tf.contiguous(), tc.contiguous(), hw.contiguous(),
          hb.contiguous(), ow.contiguous(), ob.contiguous(), act};
}

// Pre-activations z₀..z_NH of rows [r0, r0+B), written into rows [row, row+B) of the
// (NH+1)×rows×H buffer `z` (a block's scratch, or the stored pre-activations of all N rows).
std::vector<at::Tensor> block_forward(const Weights& w, const at::Tensor& z, int64_t row,
                                      int64_t r0, int64_t B) {
  const int64_t H = w.H();
  std::vector<at::Tensor> zs;
  for (int64_t i = 0; i <= w.NH(); ++i) zs.push_back(z[i].narrow(0, row, B));
  AT_DISPATCH_FLOATING_TYPES(w.ow.scalar_type(), "siren_decode_gather", [&] {
    gather_first_layer(w.index.data_ptr<int64_t>(), w.tl.data_ptr<scalar_t>(),
                       w.tf.data_ptr<scalar_t>(), w.tc.data_ptr<scalar_t>(), H, r0, B,
                       zs[0].data_ptr<scalar_t>());
  });
  for (int64_t i = 0; i < w.NH(); ++i)
    at::addmm_out(zs[i + 1], w.hb[i], activate(zs[i], w.act), w.hw[i].t());
  return zs;
}

// The stored pre-activations of rows [r0, r0+B).
std::vector<at::Tensor> stored_block(const at::Tensor& saved, int64_t r0, int64_t B) {
  std::vector<at::Tensor> zs;
  for (int64_t i = 0; i < saved.size(0); ++i) zs.push_back(saved[i].narrow(0, r0, B));
  return zs;
}

int64_t block_count(int64_t N) { return (N + kBlockRows - 1) / kBlockRows; }

std::tuple<at::Tensor, at::Tensor> siren_decode_cpu(
    const at::Tensor& index, const at::Tensor& tl, const at::Tensor& tf, const at::Tensor& tc,
    const at::Tensor& hw, const at::Tensor& hb, const at::Tensor& ow, const at::Tensor& ob,
    int64_t act, bool save_pre_activations) {
  const Weights w = contiguous(index, tl, tf, tc, hw, hb, ow, ob, act);
  const int64_t N = index.size(0), H = w.H();
  auto out = at::empty({N, ow.size(0)}, ow.options());
  auto saved = save_pre_activations ? at::empty({w.NH() + 1, N, H}, ow.options())
                                    : at::empty({0}, ow.options());
  at::parallel_for(0, block_count(N), 1, [&](int64_t b0, int64_t b1) {
    // Kernels run below autograd; worker threads must be told so for their own ATen calls.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto scratch = save_pre_activations ? saved : at::empty({w.NH() + 1, kBlockRows, H}, ow.options());
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * kBlockRows, B = std::min(kBlockRows, N - r0);
      auto zs = block_forward(w, scratch, save_pre_activations ? r0 : 0, r0, B);
      auto o = out.narrow(0, r0, B);
      at::addmm_out(o, w.ob, activate(zs.back(), act), w.ow.t());
    }
  });
  return {out, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
siren_decode_backward_cpu(const at::Tensor& grad_, const at::Tensor& index, const at::Tensor& tl,
                          const at::Tensor& tf, const at::Tensor& tc, const at::Tensor& hw,
                          const at::Tensor& hb, const at::Tensor& ow, const at::Tensor& ob,
                          int64_t act, const at::Tensor& saved_) {
  const Weights w = contiguous(index, tl, tf, tc, hw, hb, ow, ob, act);
  const auto grad = grad_.contiguous().to(ow.scalar_type());
  const int64_t N = index.size(0), H = w.H(), NH = w.NH();
  const bool stored = saved_.numel() > 0;
  TORCH_CHECK(!stored || saved_.sizes() == at::IntArrayRef({NH + 1, N, H}),
              "pre_activations: expected (NH+1)×N×H = ", NH + 1, "×", N, "×", H,
              " from the forward, or an empty tensor to recompute them; got ", saved_.sizes());
  const auto saved = saved_.contiguous().to(ow.scalar_type());
  // One accumulator per chunk of blocks (not per thread), so the sums do not depend on scheduling.
  const int64_t blocks = block_count(N);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks));
  auto g_tl = at::zeros({chunks, tl.size(0), H}, ow.options());
  auto g_tf = at::zeros({chunks, tf.size(0), H}, ow.options());
  auto g_tc = at::zeros({chunks, tc.size(0), H}, ow.options());
  auto g_hw = at::zeros({chunks, NH, H, H}, ow.options());
  auto g_hb = at::zeros({chunks, NH, H}, ow.options());
  auto g_ow = at::zeros({chunks, ow.size(0), H}, ow.options());
  auto g_ob = at::zeros({chunks, ow.size(0)}, ow.options());
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto scratch = stored ? at::Tensor() : at::empty({NH + 1, kBlockRows, H}, ow.options());
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      for (int64_t blk = chunk * blocks / chunks; blk < (chunk + 1) * blocks / chunks; ++blk) {
        const int64_t r0 = blk * kBlockRows, B = std::min(kBlockRows, N - r0);
        auto zs = stored ? stored_block(saved, r0, B) : block_forward(w, scratch, 0, r0, B);
        auto g = grad.narrow(0, r0, B);
        g_ow[chunk].addmm_(g.t(), activate(zs[NH], act));
        g_ob[chunk].add_(g.sum(0));
        auto dh = g.mm(w.ow);
        for (int64_t i = NH; i > 0; --i) {
          // Hidden layer i−1 maps h_{i−1} = act(z_{i−1}) to z_i.
          auto dz = dh * activation_grad(zs[i], act);
          g_hw[chunk][i - 1].addmm_(dz.t(), activate(zs[i - 1], act));
          g_hb[chunk][i - 1].add_(dz.sum(0));
          dh = dz.mm(w.hw[i - 1]);
        }
        auto dz0 = (dh * activation_grad(zs[0], act)).contiguous();
        auto rows = w.index.narrow(0, r0, B);
        g_tl[chunk].index_add_(0, rows.select(1, 0), dz0);
        g_tf[chunk].index_add_(0, rows.select(1, 1), dz0);
        g_tc[chunk].index_add_(0, rows.select(1, 2), dz0);
      }
    }
  });
  return {g_tl.sum(0), g_tf.sum(0), g_tc.sum(0), g_hw.sum(0), g_hb.sum(0), g_ow.sum(0), g_ob.sum(0)};
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
