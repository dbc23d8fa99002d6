// Fused weight decoding on the CPU (NeRN / SIREN predictor, paper §2): every kernel coordinate
// (ℓ, f, c) goes through the whole MLP while its block of activations stays in cache.
//   z₀ = T_ℓ[ℓ] + T_f[f] + T_c[c]         (first layer of a separable encoding, as three tables)
//   hᵢ = act(zᵢ),  zᵢ₊₁ = hᵢ Wᵢᵀ + bᵢ      (hidden layers, act = ReLU or sin)
//   out = h_last W_outᵀ + b_out
// Backward recomputes the block's pre-activations instead of storing them: they are N×H per
// layer (hundreds of MB for a wide predictor over a large net) while a block's recomputation is
// one forward GEMM chain that is already in cache. sin' = cos needs z, not sin(z), so the
// pre-activations (not the outputs) are what is kept, per block, during backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace hyperkd {
namespace {

constexpr int64_t kBlockRows = 32;
enum Activation { kReLU = 0, kSine = 1 };

template <typename T>
inline T activate(T z, int64_t act) { return act == kSine ? std::sin(z) : (z > 0 ? z : T(0)); }

template <typename T>
inline T activation_grad(T z, int64_t act) { return act == kSine ? std::cos(z) : T(z > 0); }

// Everything one block needs, as raw pointers; weights are pre-transposed to in×out so the inner
// loops are contiguous axpys that vectorise without fast-math.
template <typename T>
struct Net {
  const int64_t* index;
  const T *tl, *tf, *tc;
  const T* hidden_wt;  // NH × H(in) × H(out)
  const T* hidden_w;   // NH × H(out) × H(in)
  const T* hidden_b;   // NH × H
  const T* out_wt;     // H × O
  const T* out_w;      // O × H
  const T* out_b;      // O
  int64_t NH, H, O, act;
};

// Pre-activations z₀..z_NH of rows [r0, r0+B) into z ((NH+1)×B×H).
template <typename T>
void block_forward(const Net<T>& n, int64_t r0, int64_t B, T* z) {
  const int64_t H = n.H;
  for (int64_t r = 0; r < B; ++r) {
    const int64_t* ix = n.index + (r0 + r) * 3;
    const T *a = n.tl + ix[0] * H, *b = n.tf + ix[1] * H, *c = n.tc + ix[2] * H;
    T* zr = z + r * H;
    for (int64_t j = 0; j < H; ++j) zr[j] = a[j] + b[j] + c[j];
  }
  for (int64_t layer = 0; layer < n.NH; ++layer) {
    const T* zin = z + layer * B * H;
    T* zout = z + (layer + 1) * B * H;
    const T* wt = n.hidden_wt + layer * H * H;
    const T* bias = n.hidden_b + layer * H;
    for (int64_t r = 0; r < B; ++r) std::copy(bias, bias + H, zout + r * H);
    for (int64_t i = 0; i < H; ++i) {
      const T* wrow = wt + i * H;
      for (int64_t r = 0; r < B; ++r) {
        const T h = activate(zin[r * H + i], n.act);
        T* zr = zout + r * H;
        for (int64_t j = 0; j < H; ++j) zr[j] += h * wrow[j];
      }
    }
  }
}

template <typename T>
void block_output(const Net<T>& n, const T* zlast, int64_t B, T* out) {
  const int64_t H = n.H, O = n.O;
  for (int64_t r = 0; r < B; ++r) std::copy(n.out_b, n.out_b + O, out + r * O);
  for (int64_t i = 0; i < H; ++i) {
    const T* wrow = n.out_wt + i * O;
    for (int64_t r = 0; r < B; ++r) {
      const T h = activate(zlast[r * H + i], n.act);
      T* orow = out + r * O;
      for (int64_t j = 0; j < O; ++j) orow[j] += h * wrow[j];
    }
  }
}

template <typename T>
Net<T> make_net(const at::Tensor& index, at::TensorList tables, const at::Tensor& hidden_wt,
                const at::Tensor& hidden_w, const at::Tensor& hidden_b, const at::Tensor& out_wt,
                const at::Tensor& out_w, const at::Tensor& out_b, int64_t act) {
  return {index.data_ptr<int64_t>(), tables[0].data_ptr<T>(), tables[1].data_ptr<T>(),
          tables[2].data_ptr<T>(), hidden_wt.data_ptr<T>(), hidden_w.data_ptr<T>(),
          hidden_b.data_ptr<T>(), out_wt.data_ptr<T>(), out_w.data_ptr<T>(), out_b.data_ptr<T>(),
          hidden_w.size(0), out_w.size(1), out_w.size(0), act};
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
    TORCH_CHECK(t->scalar_type() == ow.scalar_type(), "siren_decode: all weights must share one dtype");
}

at::Tensor siren_decode_cpu(const at::Tensor& index_, const at::Tensor& tl, const at::Tensor& tf,
                            const at::Tensor& tc, const at::Tensor& hw, const at::Tensor& hb,
                            const at::Tensor& ow, const at::Tensor& ob, int64_t act) {
  check_inputs(index_, tl, tf, tc, hw, hb, ow, ob, act);
  auto index = index_.contiguous();
  const int64_t N = index.size(0), H = ow.size(1), O = ow.size(0), NH = hw.size(0);
  auto out = at::empty({N, O}, ow.options());
  std::vector<at::Tensor> tables = {tl.contiguous(), tf.contiguous(), tc.contiguous()};
  auto hwt = hw.transpose(1, 2).contiguous(), owt = ow.t().contiguous();
  auto hwc = hw.contiguous(), hbc = hb.contiguous(), owc = ow.contiguous(), obc = ob.contiguous();
  AT_DISPATCH_FLOATING_TYPES(ow.scalar_type(), "siren_decode_cpu", [&] {
    const auto net = make_net<scalar_t>(index, tables, hwt, hwc, hbc, owt, owc, obc, act);
    scalar_t* po = out.data_ptr<scalar_t>();
    const int64_t blocks = (N + kBlockRows - 1) / kBlockRows;
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> z((NH + 1) * kBlockRows * H);
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t r0 = blk * kBlockRows, B = std::min(kBlockRows, N - r0);
        block_forward(net, r0, B, z.data());
        block_output(net, z.data() + NH * B * H, B, po + r0 * O);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
siren_decode_backward_cpu(const at::Tensor& grad_, const at::Tensor& index_, const at::Tensor& tl,
                          const at::Tensor& tf, const at::Tensor& tc, const at::Tensor& hw,
                          const at::Tensor& hb, const at::Tensor& ow, const at::Tensor& ob,
                          int64_t act) {
  check_inputs(index_, tl, tf, tc, hw, hb, ow, ob, act);
  auto index = index_.contiguous();
  auto grad = grad_.contiguous().to(ow.scalar_type());
  const int64_t N = index.size(0), H = ow.size(1), O = ow.size(0), NH = hw.size(0);
  std::vector<at::Tensor> tables = {tl.contiguous(), tf.contiguous(), tc.contiguous()};
  auto hwt = hw.transpose(1, 2).contiguous(), owt = ow.t().contiguous();
  auto hwc = hw.contiguous(), hbc = hb.contiguous(), owc = ow.contiguous(), obc = ob.contiguous();
  // One accumulator per chunk of rows (not per thread) so the sums do not depend on scheduling.
  const int64_t blocks = (N + kBlockRows - 1) / kBlockRows;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks));
  const int64_t rows_l = tl.size(0), rows_f = tf.size(0), rows_c = tc.size(0);
  const int64_t sizes[7] = {rows_l * H, rows_f * H, rows_c * H, NH * H * H, NH * H, O * H, O};
  int64_t total = 0;
  for (auto s : sizes) total += s;
  auto acc = at::zeros({chunks, total}, ow.options());
  AT_DISPATCH_FLOATING_TYPES(ow.scalar_type(), "siren_decode_backward_cpu", [&] {
    const auto net = make_net<scalar_t>(index, tables, hwt, hwc, hbc, owt, owc, obc, act);
    const scalar_t* pg = grad.data_ptr<scalar_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      std::vector<scalar_t> z((NH + 1) * kBlockRows * H), dh(kBlockRows * H), dz(kBlockRows * H),
          h(kBlockRows * H);
      for (int64_t chunk = c0; chunk < c1; ++chunk) {
        scalar_t* g = acc.data_ptr<scalar_t>() + chunk * total;
        scalar_t *g_tl = g, *g_tf = g_tl + sizes[0], *g_tc = g_tf + sizes[1];
        scalar_t *g_hw = g_tc + sizes[2], *g_hb = g_hw + sizes[3], *g_ow = g_hb + sizes[4];
        scalar_t* g_ob = g_ow + sizes[5];
        const int64_t first = chunk * blocks / chunks, last = (chunk + 1) * blocks / chunks;
        for (int64_t blk = first; blk < last; ++blk) {
          const int64_t r0 = blk * kBlockRows, B = std::min(kBlockRows, N - r0);
          block_forward(net, r0, B, z.data());
          // Output layer: dW_out += gᵀ h, db_out += Σ g, dh = g W_out.
          const scalar_t* zl = z.data() + NH * B * H;
          for (int64_t k = 0; k < B * H; ++k) h[k] = activate(zl[k], act);
          std::fill(dh.begin(), dh.begin() + B * H, scalar_t(0));
          for (int64_t r = 0; r < B; ++r) {
            const scalar_t* gr = pg + (r0 + r) * O;
            for (int64_t o = 0; o < O; ++o) {
              const scalar_t go = gr[o];
              g_ob[o] += go;
              scalar_t* dw = g_ow + o * H;
              const scalar_t* w = net.out_w + o * H;
              for (int64_t j = 0; j < H; ++j) {
                dw[j] += go * h[r * H + j];
                dh[r * H + j] += go * w[j];
              }
            }
          }
          for (int64_t layer = NH; layer >= 0; --layer) {
            const scalar_t* zin = z.data() + layer * B * H;
            for (int64_t k = 0; k < B * H; ++k) dz[k] = dh[k] * activation_grad(zin[k], act);
            if (layer == 0) break;
            // Hidden layer `layer-1` maps h_{layer-1} to z_layer.
            const scalar_t* zprev = z.data() + (layer - 1) * B * H;
            for (int64_t k = 0; k < B * H; ++k) h[k] = activate(zprev[k], act);
            const scalar_t* w = net.hidden_w + (layer - 1) * H * H;
            scalar_t* dw = g_hw + (layer - 1) * H * H;
            scalar_t* db = g_hb + (layer - 1) * H;
            std::fill(dh.begin(), dh.begin() + B * H, scalar_t(0));
            for (int64_t r = 0; r < B; ++r) {
              for (int64_t o = 0; o < H; ++o) {
                const scalar_t d = dz[r * H + o];
                db[o] += d;
                scalar_t* dwr = dw + o * H;
                const scalar_t* wr = w + o * H;
                for (int64_t j = 0; j < H; ++j) {
                  dwr[j] += d * h[r * H + j];
                  dh[r * H + j] += d * wr[j];
                }
              }
            }
          }
          for (int64_t r = 0; r < B; ++r) {
            const int64_t* ix = net.index + (r0 + r) * 3;
            scalar_t *a = g_tl + ix[0] * H, *b = g_tf + ix[1] * H, *c = g_tc + ix[2] * H;
            for (int64_t j = 0; j < H; ++j) {
              a[j] += dz[r * H + j];
              b[j] += dz[r * H + j];
              c[j] += dz[r * H + j];
            }
          }
        }
      }
    });
  });
  auto sum = acc.sum(0);
  auto parts = sum.split(at::IntArrayRef(sizes, 7));
  return {parts[0].view({rows_l, H}), parts[1].view({rows_f, H}), parts[2].view({rows_c, H}),
          parts[3].view({NH, H, H}), parts[4].view({NH, H}), parts[5].view({O, H}),
          parts[6].view({O})};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hyperkd, m) {
  m.def("siren_decode(Tensor index, Tensor table_l, Tensor table_f, Tensor table_c, "
        "Tensor hidden_weight, Tensor hidden_bias, Tensor out_weight, Tensor out_bias, "
        "int activation) -> Tensor");
  m.def("siren_decode_backward(Tensor grad, Tensor index, Tensor table_l, Tensor table_f, "
        "Tensor table_c, Tensor hidden_weight, Tensor hidden_bias, Tensor out_weight, "
        "Tensor out_bias, int activation) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hyperkd, CPU, m) {
  m.impl("siren_decode", &siren_decode_cpu);
  m.impl("siren_decode_backward", &siren_decode_backward_cpu);
}

}  // namespace hyperkd
