// CudaOps: the DeviceOps of a CUDA build (kernels/device_ops.h). Each op checks its tensors
// (on the GPU, dtypes of the bf16 policy, shapes) and launches the kernels of
// kernels/cuda/*.h on their raw device pointers.
//
// Every launch goes to the legacy default stream, as the backend's copies do, so ops,
// host <-> device copies and the caching allocator's reuse of a freed block are ordered
// without events; only the ops that return a number (sum_squares and sum_squares_each, find_nonfinite) wait
// for the device, to copy it back (losses are added up in device scalars instead).
//
// Where a kernel differs from the CPU op's contract (kernels/*.h):
//   - ids and targets are on the device, so they are not range-checked as the CPU ops do
//     (that would cost a copy and a wait per call); the batch is validated on the host
//     when it is built. An embedding id outside [0, V) gives a NaN row and no gradient,
//     a target outside [0, V) other than -100 a NaN log-prob, hence a NaN loss: loud, not
//     silent.
//   - token weights are f32 only (the CPU also takes f64); dloss and scales are applied
//     in f32.
//   - ops whose kernels mark their buffers __restrict__ refuse overlapping outputs that
//     the CPU loops would tolerate (named in each error).
//   - attention and attention_decode compute in bf16 only.
#include "kernels/cuda/device_ops.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <utility>

#include "engine/core/error.h"
#include "kernels/attention.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_decode.h"
#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/hidden_loss.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/numerics.h"
#include "kernels/cuda/optim.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/runtime.h"
#include "kernels/cuda/sample.h"
#include "kernels/cuda/swiglu.h"

namespace lethe {
static_assert(cuda::kDecodeKeyTile == ops::kAttentionKeyTile, "decode rounds P per tile of the CPU reference's keys");

namespace {

constexpr const char* kPolicy =
    "the CUDA kernels take bf16 weights and activations; f32 statistics, token weights, weight gradients and "
    "optimizer state, docs/cuda.md";

void expect_cuda(const Tensor& t, const char* op, const char* arg) {
  LETHE_CHECK(t.defined(), op, ": ", arg, " is undefined");
  LETHE_CHECK(t.device() == Device::cuda, op, ": ", arg, " is on ", device_name(t.device()),
              ", expected cuda (", t.describe(), ")");
}

// On the GPU and of the dtype the kernel reads: the kernels reinterpret raw bytes, so a
// wrong dtype would not fail, it would compute garbage.
void expect(const Tensor& t, DType dtype, const char* op, const char* arg) {
  expect_cuda(t, op, arg);
  LETHE_CHECK(t.dtype() == dtype, op, ": ", arg, " is ", dtype_name(t.dtype()), ", expected ", dtype_name(dtype),
              " (", kPolicy, ")");
}

void expect_bf16_or_f32(const Tensor& t, const char* op, const char* arg) {
  expect_cuda(t, op, arg);
  LETHE_CHECK(t.dtype() == DType::bf16 || t.dtype() == DType::f32, op, ": ", arg, " is ", dtype_name(t.dtype()),
              ", expected bf16 or f32 (", kPolicy, ")");
}

// Checked before dim(i) is read, so a wrong rank is named with the layout it should have.
void expect_ndim(const Tensor& t, int ndim, const char* op, const char* arg, const char* layout) {
  LETHE_CHECK(t.ndim() == ndim, op, ": expected ", arg, layout, ", got ", t.describe());
}

// A device accumulator: f64 [1].
void expect_loss_scalar(const Tensor& t, const char* op, const char* arg) {
  expect(t, DType::f64, op, arg);
  check_shape(t, {1}, op, arg);
}

template <typename T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw());
}

bool overlap(const Tensor& a, const Tensor& b) {
  const char* pa = ptr<const char>(a);
  const char* pb = ptr<const char>(b);
  return a.nbytes() > 0 && b.nbytes() > 0 && pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

// For kernels that declare their buffers __restrict__: an output sharing memory with an
// input is undefined behaviour there, though the CPU loop would accept it.
void expect_disjoint(const Tensor& out, const char* out_arg, const Tensor& in, const char* in_arg, const char* op) {
  check_disjoint(op, {{out_arg, &out}}, {{in_arg, &in}});
}

// For element-wise kernels that allow in place: the same buffer, or separate ones. A
// shifted overlap would make the result depend on thread order.
void expect_same_or_disjoint(const Tensor& out, const char* out_arg, const Tensor& in, const char* in_arg,
                             const char* op) {
  LETHE_CHECK(out.raw() == in.raw() || !overlap(out, in), op, ": ", out_arg, " partly overlaps ", in_arg,
              "; the CUDA kernel runs in place only on the same buffer");
}

// The attention kernels load rows of q, k, v and dout as 16-byte vectors.
void expect_aligned16(const Tensor& t, const char* op, const char* arg) {
  LETHE_CHECK(reinterpret_cast<uintptr_t>(t.raw()) % 16 == 0, op, ": ", arg,
              " must start on a 16-byte boundary for the CUDA kernel (a view at an odd offset?)");
}

// The matrix products report errors as gemm_bf16's (the launcher every product shares):
// say which op, product and shapes they came from (described only on failure).
template <class Run, class What>
void products_of(const char* op, Run&& run, What&& what) {
  try {
    run();
  } catch (const Error& e) {
    LETHE_FAIL(op, " (", what(), "): ", e.what());
  }
}

void expect_bf16_precision(Precision precision, const char* op) {
  LETHE_CHECK(precision == Precision::bf16, op, ": precision ", precision_name(precision),
              " has no CUDA kernel: the CUDA attention computes in bf16 (run with precision bf16, or on the CPU)");
}

class CudaOps final : public DeviceOps {
 public:
  // Makes no CUDA call: see make_cuda_device_ops.
  CudaOps() = default;
  // Only reached when a test swaps the ops out (the registry never destroys them). The
  // scratch tensors go back to the caching allocator by themselves.
  ~CudaOps() override { cuda::gemm_destroy(gemm_); }
  CudaOps(const CudaOps&) = delete;
  CudaOps& operator=(const CudaOps&) = delete;

  const char* name() const override { return "cuda"; }

  void embedding_forward(const Tensor& ids, const Tensor& table, int64_t first, int64_t vocab,
                         Tensor& out) override {
    const char* op = "embedding_forward";
    expect(ids, DType::i32, op, "ids");
    expect(table, DType::bf16, op, "table");
    expect(out, DType::bf16, op, "out");
    expect_ndim(table, 2, op, "table", "[V, C]");
    const int64_t N = ids.numel(), Vr = table.dim(0), C = table.dim(1);
    check_vocab_shard(first, Vr, vocab, op);
    check_shape(out, {N, C}, op, "out");
    cuda::embedding_forward(ptr<int32_t>(ids), ptr<bf16>(table), ptr<bf16>(out), N, first, Vr, vocab, C);
  }

  void embedding_backward(const Tensor& ids, const Tensor& dout, int64_t first, int64_t vocab,
                          Tensor& dtable) override {
    const char* op = "embedding_backward";
    expect(ids, DType::i32, op, "ids");
    expect(dout, DType::bf16, op, "dout");
    expect(dtable, DType::f32, op, "dtable");
    expect_ndim(dtable, 2, op, "dtable", "[V, C]");
    const int64_t N = ids.numel(), Vr = dtable.dim(0), C = dtable.dim(1);
    check_vocab_shard(first, Vr, vocab, op);
    check_shape(dout, {N, C}, op, "dout");
    // The kernel adds with atomics: dtable += scatter, the CPU contract.
    cuda::embedding_backward(ptr<int32_t>(ids), ptr<bf16>(dout), ptr<float>(dtable), N, first, Vr, vocab, C);
  }

  void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd) override {
    const char* op = "rmsnorm_forward";
    expect(x, DType::bf16, op, "x");
    expect(w, DType::bf16, op, "w");
    expect(y, DType::bf16, op, "y");
    expect(rstd, DType::f32, op, "rstd");
    expect_ndim(x, 2, op, "x", "[N, C]");
    const int64_t N = x.dim(0), C = x.dim(1);
    check_shape(w, {C}, op, "w");
    check_shape(y, {N, C}, op, "y");
    check_shape(rstd, {N}, op, "rstd");
    expect_disjoint(y, "y", w, "w", op);
    expect_same_or_disjoint(y, "y", x, "x", op);
    cuda::rmsnorm_forward(ptr<bf16>(x), ptr<bf16>(w), float(eps), ptr<bf16>(y), ptr<float>(rstd), N, C);
  }

  void residual_rmsnorm_forward(const Tensor& x, const Tensor& delta, Tensor& sum, const Tensor& w, double eps,
                                Tensor& y, Tensor& rstd, Precision precision) override {
    // The bf16 storage is the policy here: the kernel stores the sum in bf16 and normalises it.
    const char* op = "residual_rmsnorm_forward";
    expect_bf16_precision(precision, op);
    expect(x, DType::bf16, op, "x");
    expect(delta, DType::bf16, op, "delta");
    expect(sum, DType::bf16, op, "sum");
    expect(w, DType::bf16, op, "w");
    expect(y, DType::bf16, op, "y");
    expect(rstd, DType::f32, op, "rstd");
    expect_ndim(x, 2, op, "x", "[N, C]");
    const int64_t N = x.dim(0), C = x.dim(1);
    check_shape(delta, {N, C}, op, "delta");
    check_shape(sum, {N, C}, op, "sum");
    check_shape(w, {C}, op, "w");
    check_shape(y, {N, C}, op, "y");
    check_shape(rstd, {N}, op, "rstd");
    // Each thread reads its elements of x and delta before writing them to sum.
    expect_same_or_disjoint(sum, "sum", x, "x", op);
    expect_disjoint(sum, "sum", delta, "delta", op);
    expect_disjoint(y, "y", sum, "sum", op);
    expect_disjoint(y, "y", x, "x", op);
    expect_disjoint(y, "y", delta, "delta", op);
    expect_disjoint(y, "y", w, "w", op);
    cuda::residual_rmsnorm_forward(ptr<bf16>(x), ptr<bf16>(delta), ptr<bf16>(sum), ptr<bf16>(w), float(eps),
                                   ptr<bf16>(y), ptr<float>(rstd), N, C);
  }

  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx,
                        bool accumulate_dx, Tensor& dw) override {
    const char* op = "rmsnorm_backward";
    expect(dy, DType::bf16, op, "dy");
    expect(x, DType::bf16, op, "x");
    expect(w, DType::bf16, op, "w");
    expect(rstd, DType::f32, op, "rstd");
    expect(dx, DType::bf16, op, "dx");
    expect(dw, DType::f32, op, "dw");
    expect_ndim(x, 2, op, "x", "[N, C]");
    const int64_t N = x.dim(0), C = x.dim(1);
    check_shape(dy, {N, C}, op, "dy");
    check_shape(w, {C}, op, "w");
    check_shape(rstd, {N}, op, "rstd");
    check_shape(dx, {N, C}, op, "dx");
    check_shape(dw, {C}, op, "dw");
    expect_disjoint(dx, "dx", dy, "dy", op);
    expect_disjoint(dx, "dx", x, "x", op);
    expect_disjoint(dx, "dx", w, "w", op);
    // dx overwritten or accumulated, dw += (atomics): both as the CPU contract.
    cuda::rmsnorm_backward(ptr<bf16>(dy), ptr<bf16>(x), ptr<bf16>(w), ptr<float>(rstd), ptr<bf16>(dx), accumulate_dx,
                           ptr<float>(dw), N, C);
  }

  void linear_forward(const Tensor& x, const Tensor& w, Tensor& y) override {
    const char* op = "linear_forward";
    expect(x, DType::bf16, op, "x");
    expect(w, DType::bf16, op, "w");
    // y is bf16, or f32 for a partial sum that a tensor-parallel all-reduce completes.
    expect_bf16_or_f32(y, op, "y");
    expect_ndim(x, 2, op, "x", "[N, in]");
    expect_ndim(w, 2, op, "w", "[out, in]");
    const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(0);
    check_shape(w, {out, in}, op, "w");
    check_shape(y, {N, out}, op, "y");
    // cuBLASLt's output may not overlap its inputs.
    check_disjoint(op, {{"y", &y}}, {{"x", &x}, {"w", &w}});
    if (N == 0 || out == 0) return;
    // A product over an empty inner dimension is zero; cuBLASLt is not asked for one.
    if (in == 0) return y.zero_();
    products_of(
        op,
        [&] {
          if (y.dtype() == DType::f32)
            cuda::gemm_bf16(gemm(), false, true, N, out, in, 1.f, ptr<bf16>(x), in, ptr<bf16>(w), in, 0.f,
                            ptr<float>(y), true, out);
          else
            cuda::linear_forward(gemm(), ptr<bf16>(x), ptr<bf16>(w), ptr<bf16>(y), N, in, out);
        },
        [&] { return "y = x w^T, x " + x.describe() + ", w " + w.describe(); });
  }

  void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor* dx, bool accumulate_dx,
                       Tensor* dw) override {
    const char* op = "linear_backward";
    expect(dy, DType::bf16, op, "dy");
    expect(x, DType::bf16, op, "x");
    expect(w, DType::bf16, op, "w");
    if (dx) expect_bf16_or_f32(*dx, op, "dx");  // f32: a tensor-parallel partial sum
    if (dw) expect(*dw, DType::f32, op, "dw");
    expect_ndim(x, 2, op, "x", "[N, in]");
    expect_ndim(w, 2, op, "w", "[out, in]");
    const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(0);
    check_shape(dy, {N, out}, op, "dy");
    check_shape(w, {out, in}, op, "w");
    if (dx) check_shape(*dx, {N, in}, op, "dx");
    if (dw) check_shape(*dw, {out, in}, op, "dw");
    // dx may not overlap the product's inputs, nor x, which dW reads after dx is written.
    check_disjoint(op, {{"dx", dx}}, {{"dy", &dy}, {"x", &x}, {"w", &w}});
    // Empty rows or inputs leave nothing to write (dx is empty) or to add (dw += 0).
    if (N == 0 || in == 0 || (!dx && !dw)) return;
    // dx = dy W sums over `out`: when that is empty cuBLASLt is not asked for the product,
    // and dx is cleared unless accumulating, as the CPU's beta = 0 product does.
    if (out == 0) {
      if (dx && !accumulate_dx) dx->zero_();
      return;
    }
    // The launcher matches the contract: dx written (beta 0) or added to (beta 1), dw
    // (fp32) += dy^T x.
    auto shapes = [&] { return "dy " + dy.describe() + ", x " + x.describe() + ", w " + w.describe(); };
    if (dx && dx->dtype() == DType::f32) {
      products_of(
          op,
          [&] {
            cuda::gemm_bf16(gemm(), false, false, N, in, out, 1.f, ptr<bf16>(dy), out, ptr<bf16>(w), in,
                            accumulate_dx ? 1.f : 0.f, ptr<float>(*dx), true, in);
          },
          [&] { return "dx = dy w into f32, " + shapes(); });
      products_of(
          op,
          [&] {
            cuda::linear_backward(gemm(), ptr<bf16>(dy), ptr<bf16>(x), ptr<bf16>(w), nullptr, false,
                                  dw ? ptr<float>(*dw) : nullptr, N, in, out);
          },
          [&] { return "dw += dy^T x, " + shapes(); });
      return;
    }
    products_of(
        op,
        [&] {
          cuda::linear_backward(gemm(), ptr<bf16>(dy), ptr<bf16>(x), ptr<bf16>(w), dx ? ptr<bf16>(*dx) : nullptr,
                                accumulate_dx, dw ? ptr<float>(*dw) : nullptr, N, in, out);
        },
        [&] {
          return std::string(dx ? "dx = dy w" : "") + (dx && dw ? " and " : "") + (dw ? "dw += dy^T x" : "") + ", " +
                 shapes();
        });
  }

  void rope_forward(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y) override {
    rotate(x, "x", cos, sin, y, "y", true, "rope_forward");
  }

  void rope_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin, Tensor& dx) override {
    rotate(dy, "dy", cos, sin, dx, "dx", false, "rope_backward");
  }

  void qkv_split_rope(const Tensor& qkv, const Tensor& cos, const Tensor& sin, Tensor& q, Tensor& k,
                      Tensor& v) override {
    const char* op = "qkv_split_rope";
    const auto [B, T, H, KV, D] = qkv_layout(qkv, "qkv", cos, sin, q, "q", k, "k", v, "v", op);
    check_disjoint(op, {{"q", &q}, {"k", &k}, {"v", &v}}, {{"qkv", &qkv}});
    cuda::qkv_split_rope(ptr<bf16>(qkv), ptr<float>(cos), ptr<float>(sin), ptr<bf16>(q), ptr<bf16>(k), ptr<bf16>(v), B,
                         T, H, KV, D);
  }

  void qkv_merge_rope_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& cos,
                               const Tensor& sin, Tensor& dqkv) override {
    const char* op = "qkv_merge_rope_backward";
    const auto [B, T, H, KV, D] = qkv_layout(dqkv, "dqkv", cos, sin, dq, "dq", dk, "dk", dv, "dv", op);
    check_disjoint(op, {{"dqkv", &dqkv}}, {{"dq", &dq}, {"dk", &dk}, {"dv", &dv}});
    cuda::qkv_merge_rope_backward(ptr<bf16>(dq), ptr<bf16>(dk), ptr<bf16>(dv), ptr<float>(cos), ptr<float>(sin),
                                  ptr<bf16>(dqkv), B, T, H, KV, D);
  }

  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor& o, Tensor& lse,
                         Precision precision) override {
    const char* op = "attention_forward";
    expect_bf16_precision(precision, op);
    expect(q, DType::bf16, op, "q");
    expect(k, DType::bf16, op, "k");
    expect(v, DType::bf16, op, "v");
    expect(o, DType::bf16, op, "o");
    expect(lse, DType::f32, op, "lse");
    const Dims d = attention_dims(q, k, op);
    check_shape(v, k.shape(), op, "v");
    check_shape(o, q.shape(), op, "o");
    check_shape(lse, {d.B, d.H, d.T}, op, "lse");
    if (d.B == 0 || d.T == 0) return;
    expect_aligned16(q, op, "q");
    expect_aligned16(k, op, "k");
    expect_aligned16(v, op, "v");
    expect_aligned16(o, op, "o");  // the mma kernel stores o 16 bytes at a time
    // The kernels declare their buffers __restrict__.
    check_disjoint(op, {{"o", &o}}, {{"q", &q}, {"k", &k}, {"v", &v}});
    cuda::attention_forward(ptr<bf16>(q), ptr<bf16>(k), ptr<bf16>(v), float(scale), ptr<bf16>(o), ptr<float>(lse),
                            d.B, d.T, d.H, d.KV, d.D);
  }

  void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                          const Tensor& lse, double scale, Tensor& dq, Tensor& dk, Tensor& dv,
                          Precision precision) override {
    const char* op = "attention_backward";
    expect_bf16_precision(precision, op);
    expect(dout, DType::bf16, op, "dout");
    expect(q, DType::bf16, op, "q");
    expect(k, DType::bf16, op, "k");
    expect(v, DType::bf16, op, "v");
    expect(o, DType::bf16, op, "o");
    expect(lse, DType::f32, op, "lse");
    expect(dq, DType::bf16, op, "dq");
    expect(dk, DType::bf16, op, "dk");
    expect(dv, DType::bf16, op, "dv");
    const Dims d = attention_dims(q, k, op);
    check_shape(v, k.shape(), op, "v");
    check_shape(o, q.shape(), op, "o");
    check_shape(dout, q.shape(), op, "dout");
    check_shape(lse, {d.B, d.H, d.T}, op, "lse");
    check_shape(dq, q.shape(), op, "dq");
    check_shape(dk, k.shape(), op, "dk");
    check_shape(dv, k.shape(), op, "dv");
    if (d.B == 0 || d.T == 0) return;
    expect_aligned16(dout, op, "dout");
    expect_aligned16(q, op, "q");
    expect_aligned16(k, op, "k");
    expect_aligned16(v, op, "v");
    // The mma kernels store dk, dv and (deterministic) dq in pairs of bf16.
    expect_aligned16(dq, op, "dq");
    expect_aligned16(dk, op, "dk");
    expect_aligned16(dv, op, "dv");
    check_disjoint(op, {{"dq", &dq}, {"dk", &dk}, {"dv", &dv}},
                   {{"dout", &dout}, {"q", &q}, {"k", &k}, {"v", &v}, {"o", &o}});
    void* ws = attention_workspace(cuda::attention_backward_workspace_bytes(d.B, d.T, d.H, d.D));
    cuda::attention_backward(ptr<bf16>(dout), ptr<bf16>(q), ptr<bf16>(k), ptr<bf16>(v), ptr<bf16>(o),
                             ptr<float>(lse), float(scale), ptr<bf16>(dq), ptr<bf16>(dk), ptr<bf16>(dv), ws, d.B, d.T,
                             d.H, d.KV, d.D);
  }

  void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int64_t n, double scale,
                        Tensor& o, Precision precision) override {
    const char* op = "attention_decode";
    expect_bf16_precision(precision, op);
    expect(q, DType::bf16, op, "q");
    expect(k_cache, DType::bf16, op, "k_cache");
    expect(v_cache, DType::bf16, op, "v_cache");
    expect(o, DType::bf16, op, "o");
    const auto [B, H, D, S, KV] = ops::check_decode_shapes(q, k_cache, v_cache, n, o, op);
    LETHE_CHECK(D <= 256, op, ": head dimension ", D, " is above the kernel's 256");
    expect_same_or_disjoint(o, "o", q, "q", op);
    cuda::attention_decode(ptr<bf16>(q), ptr<bf16>(k_cache), ptr<bf16>(v_cache), n, float(scale), ptr<bf16>(o), B, S,
                           H, KV, D);
  }

  void swiglu_forward(const Tensor& gu, Tensor& a) override {
    const char* op = "swiglu_forward";
    expect(gu, DType::bf16, op, "gu");
    expect(a, DType::bf16, op, "a");
    expect_ndim(a, 2, op, "a", "[N, F]");
    check_shape(gu, {a.dim(0), 2 * a.dim(1)}, op, "gu (gate then up in each row)");
    check_disjoint(op, {{"a", &a}}, {{"gu", &gu}});
    cuda::swiglu_forward(ptr<bf16>(gu), ptr<bf16>(a), a.dim(0), a.dim(1));
  }

  void swiglu_backward(const Tensor& da, const Tensor& gu, Tensor& dgu) override {
    const char* op = "swiglu_backward";
    expect(da, DType::bf16, op, "da");
    expect(gu, DType::bf16, op, "gu");
    expect(dgu, DType::bf16, op, "dgu");
    expect_ndim(da, 2, op, "da", "[N, F]");
    check_shape(gu, {da.dim(0), 2 * da.dim(1)}, op, "gu (gate then up in each row)");
    check_shape(dgu, gu.shape(), op, "dgu");
    check_disjoint(op, {{"dgu", &dgu}}, {{"da", &da}, {"gu", &gu}});
    cuda::swiglu_backward(ptr<bf16>(da), ptr<bf16>(gu), ptr<bf16>(dgu), da.dim(0), da.dim(1));
  }

  void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& weights, Tensor& logprobs,
                             Tensor& lse, Tensor& loss) override {
    const char* op = "cross_entropy_forward";
    const auto [N, V] = cross_entropy_dims(logits, targets, weights, op);
    expect(logprobs, DType::f32, op, "logprobs");
    expect(lse, DType::f32, op, "lse");
    check_shape(logprobs, {N}, op, "logprobs");
    check_shape(lse, {N}, op, "lse");
    expect_loss_scalar(loss, op, "loss");
    if (N == 0) return;
    // No fused gradient (dlogits null): the backward runs later from the saved lse.
    cuda::cross_entropy_forward(ptr<bf16>(logits), ptr<int32_t>(targets), ptr<float>(weights), ptr<float>(logprobs),
                                ptr<float>(lse), nullptr, 0.f, N, V);
    // -sum w_i logp_i over rows whose target is not -100, in double and a fixed order (the
    // kernel's logprobs are already 0 on those rows, as the CPU's), added on the device.
    cuda::weighted_nll(ptr<float>(logprobs), ptr<int32_t>(targets), ptr<float>(weights), ptr<double>(loss), N, true);
  }

  void cross_entropy_shard_finish(const Tensor& rowmax, const Tensor& sumexp, const Tensor& target_logit,
                                  const Tensor& targets, const Tensor& weights, Tensor& lse, Tensor& logprobs,
                                  Tensor& loss) override {
    const char* op = "cross_entropy_shard_finish";
    expect(rowmax, DType::f32, op, "rowmax");
    expect_ndim(rowmax, 1, op, "rowmax", "[N]");
    const int64_t N = rowmax.dim(0);
    expect(sumexp, DType::f64, op, "sumexp");
    check_shape(sumexp, {N}, op, "sumexp");
    LETHE_CHECK(lse.dtype() == DType::f32 || lse.dtype() == DType::f64, op, ": lse must be f32 or f64, got ",
                lse.describe());
    check_shape(lse, {N}, op, "lse");
    const bool with_targets = targets.defined();
    if (with_targets) {
      expect(target_logit, DType::f32, op, "target_logit");
      expect(targets, DType::i32, op, "targets");
      expect(weights, DType::f32, op, "weights");
      expect(logprobs, DType::f32, op, "logprobs");
      for (const auto& [t, name] : {std::pair{&target_logit, "target_logit"}, {&targets, "targets"},
                                    {&weights, "weights"}, {&logprobs, "logprobs"}})
        check_shape(*t, {N}, op, name);
      expect_loss_scalar(loss, op, "loss");
    } else {
      LETHE_CHECK(!target_logit.defined() && !weights.defined() && !logprobs.defined() && !loss.defined(), op,
                  ": target_logit, weights, logprobs and loss come with targets");
    }
    const bool f64 = lse.dtype() == DType::f64;
    cuda::cross_entropy_shard_finish(
        ptr<float>(rowmax), ptr<double>(sumexp), with_targets ? ptr<float>(target_logit) : nullptr,
        with_targets ? ptr<int32_t>(targets) : nullptr, with_targets ? ptr<float>(weights) : nullptr,
        f64 ? nullptr : ptr<float>(lse), f64 ? ptr<double>(lse) : nullptr,
        with_targets ? ptr<float>(logprobs) : nullptr, with_targets ? ptr<double>(loss) : nullptr, N);
  }

  void weighted_row_sum(const Tensor& values, const Tensor& weights, Tensor& total) override {
    const char* op = "weighted_row_sum";
    expect(values, DType::f64, op, "values");
    expect_ndim(values, 1, op, "values", "[N]");
    const int64_t N = values.dim(0);
    expect(weights, DType::f64, op, "weights");
    check_shape(weights, {N}, op, "weights");
    expect_loss_scalar(total, op, "total");
    cuda::weighted_row_sum(ptr<double>(values), ptr<double>(weights), ptr<double>(total), N);
  }

  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& weights, const Tensor& lse,
                              int64_t first, int64_t vocab, double dloss, Tensor& dlogits) override {
    const char* op = "cross_entropy_backward";
    const auto [N, V] = cross_entropy_dims(logits, targets, weights, op);
    check_vocab_shard(first, V, vocab, op);
    expect(lse, DType::f32, op, "lse");
    expect(dlogits, DType::bf16, op, "dlogits");
    check_shape(lse, {N}, op, "lse");
    check_shape(dlogits, {N, V}, op, "dlogits");
    expect_same_or_disjoint(dlogits, "dlogits", logits, "logits", op);
    // Overwrites dlogits with dloss * w_i * (softmax - onehot); ignored rows get a zero
    // weight, hence zeros (the CPU writes them directly; equal for a finite saved lse).
    cuda::cross_entropy_backward(ptr<bf16>(logits), ptr<int32_t>(targets), ptr<float>(weights), ptr<float>(lse),
                                 float(dloss), ptr<bf16>(dlogits), N, first, V, vocab);
  }

  void cross_entropy_shard_max(const Tensor& logits, const Tensor& targets, int64_t first, int64_t vocab,
                               Tensor& rowmax, Tensor& target_logit) override {
    const char* op = "cross_entropy_shard_max";
    expect(logits, DType::bf16, op, "logits");
    expect_ndim(logits, 2, op, "logits", "[N, Vr]");
    const int64_t N = logits.dim(0), V = logits.dim(1);
    check_vocab_shard(first, V, vocab, op);
    expect(rowmax, DType::f32, op, "rowmax");
    check_shape(rowmax, {N}, op, "rowmax");
    LETHE_CHECK(targets.defined() == target_logit.defined(), op, ": targets and target_logit go together");
    if (targets.defined()) {
      expect(targets, DType::i32, op, "targets");
      expect(target_logit, DType::f32, op, "target_logit");
      check_shape(targets, {N}, op, "targets");
      check_shape(target_logit, {N}, op, "target_logit");
    }
    cuda::cross_entropy_shard_max(ptr<bf16>(logits), targets.defined() ? ptr<int32_t>(targets) : nullptr,
                                  ptr<float>(rowmax), target_logit.defined() ? ptr<float>(target_logit) : nullptr, N,
                                  first, V);
  }

  void cross_entropy_shard_sumexp(const Tensor& logits, const Tensor& rowmax, Tensor& sumexp,
                                  bool difference_in_double) override {
    const char* op = "cross_entropy_shard_sumexp";
    expect(logits, DType::bf16, op, "logits");
    expect_ndim(logits, 2, op, "logits", "[N, Vr]");
    const int64_t N = logits.dim(0), V = logits.dim(1);
    expect(rowmax, DType::f32, op, "rowmax");
    expect(sumexp, DType::f64, op, "sumexp");
    check_shape(rowmax, {N}, op, "rowmax");
    check_shape(sumexp, {N}, op, "sumexp");
    cuda::cross_entropy_shard_sumexp(ptr<bf16>(logits), ptr<float>(rowmax), ptr<double>(sumexp),
                                     difference_in_double, N, V);
  }

  void softmax_moment_shard(const Tensor& logits, const Tensor& rowmax, const Tensor& sumexp, const Tensor& center,
                            Tensor& out) override {
    const char* op = "softmax_moment_shard";
    expect(logits, DType::bf16, op, "logits");
    expect_ndim(logits, 2, op, "logits", "[N, Vr]");
    const int64_t N = logits.dim(0), V = logits.dim(1);
    expect(rowmax, DType::f32, op, "rowmax");
    expect(sumexp, DType::f64, op, "sumexp");
    expect(out, DType::f64, op, "out");
    check_shape(rowmax, {N}, op, "rowmax");
    check_shape(sumexp, {N}, op, "sumexp");
    check_shape(out, {N}, op, "out");
    if (center.defined()) {
      expect(center, DType::f64, op, "center");
      check_shape(center, {N}, op, "center");
    }
    cuda::softmax_moment_shard(ptr<bf16>(logits), ptr<float>(rowmax), ptr<double>(sumexp),
                               center.defined() ? ptr<double>(center) : nullptr, ptr<double>(out), N, V);
  }

  void argmax_shard(const Tensor& logits, const Tensor& exclude, int64_t first, Tensor& best, Tensor& arg) override {
    const char* op = "argmax_shard";
    expect(logits, DType::bf16, op, "logits");
    expect_ndim(logits, 2, op, "logits", "[N, Vr]");
    const int64_t N = logits.dim(0), V = logits.dim(1);
    expect(best, DType::f32, op, "best");
    expect(arg, DType::i32, op, "arg");
    check_shape(best, {N}, op, "best");
    check_shape(arg, {N}, op, "arg");
    if (exclude.defined()) {
      expect(exclude, DType::i32, op, "exclude");
      check_shape(exclude, {N}, op, "exclude");
    }
    cuda::argmax_shard(ptr<bf16>(logits), exclude.defined() ? ptr<int32_t>(exclude) : nullptr, first,
                       ptr<float>(best), ptr<int32_t>(arg), N, V);
  }

  void inverse_cdf_shard(const Tensor& logits, const Tensor& rowmax, const Tensor& target, int64_t first,
                         Tensor& arg) override {
    const char* op = "inverse_cdf_shard";
    expect(logits, DType::bf16, op, "logits");
    expect_ndim(logits, 2, op, "logits", "[N, Vr]");
    const int64_t N = logits.dim(0), V = logits.dim(1);
    expect(rowmax, DType::f32, op, "rowmax");
    expect(target, DType::f64, op, "target");
    expect(arg, DType::i32, op, "arg");
    check_shape(rowmax, {N}, op, "rowmax");
    check_shape(target, {N}, op, "target");
    check_shape(arg, {N}, op, "arg");
    cuda::inverse_cdf_shard(ptr<bf16>(logits), ptr<float>(rowmax), ptr<double>(target), first, ptr<int32_t>(arg),
                            N, V);
  }

  void topk_shard(const Tensor& logits, int64_t first, Tensor& values, Tensor& ids) override {
    const char* op = "topk_shard";
    expect(logits, DType::bf16, op, "logits");
    expect_ndim(logits, 2, op, "logits", "[N, Vr]");
    expect(values, DType::f32, op, "values");
    expect_ndim(values, 2, op, "values", "[N, K]");
    const int64_t N = logits.dim(0), V = logits.dim(1), K = values.dim(1);
    LETHE_CHECK(K >= 1, op, ": values ", values.describe(), " must hold at least one column");
    check_shape(values, {N, K}, op, "values");
    expect(ids, DType::i32, op, "ids");
    check_shape(ids, {N, K}, op, "ids");
    cuda::topk_shard(ptr<bf16>(logits), first, ptr<float>(values), ptr<int32_t>(ids), N, V, K);
  }

  void kl_shard(const Tensor& ref_logits, const Tensor& logits, const Tensor& lse_q, const Tensor& lse_p,
                const Tensor& row_weight, double grad_scale, Tensor& kl, Tensor* dlogits) override {
    const char* op = "kl_shard";
    expect(logits, DType::bf16, op, "logits");
    expect(ref_logits, DType::bf16, op, "ref_logits");
    expect_ndim(logits, 2, op, "logits", "[N, Vr]");
    const int64_t N = logits.dim(0), V = logits.dim(1);
    check_shape(ref_logits, {N, V}, op, "ref_logits");
    for (const auto& [t, name] : {std::pair{&lse_q, "lse_q"}, {&lse_p, "lse_p"}, {&row_weight, "row_weight"},
                                  {&kl, "kl"}}) {
      expect(*t, DType::f64, op, name);
      check_shape(*t, {N}, op, name);
    }
    if (dlogits) {
      expect(*dlogits, DType::bf16, op, "dlogits");
      check_shape(*dlogits, {N, V}, op, "dlogits");
      // Each element is read before it is written by the same thread: aliasing the logits
      // is safe, aliasing the reference is not.
      expect_same_or_disjoint(*dlogits, "dlogits", logits, "logits", op);
      expect_disjoint(*dlogits, "dlogits", ref_logits, "ref_logits", op);
    }
    cuda::kl_shard(ptr<bf16>(ref_logits), ptr<bf16>(logits), ptr<double>(lse_q), ptr<double>(lse_p),
                   ptr<double>(row_weight), grad_scale, ptr<double>(kl), dlogits ? ptr<bf16>(*dlogits) : nullptr, N,
                   V);
  }

  void hidden_mse(const Tensor& h, const Tensor& target, const Tensor& steer, const Tensor& targets, double grad_scale,
                  double denom, Tensor& dh, Tensor& loss) override {
    const char* op = "hidden_mse";
    expect(h, DType::bf16, op, "h");
    expect_ndim(h, 2, op, "h", "[N, C]");
    const int64_t N = h.dim(0), C = h.dim(1);
    LETHE_CHECK(target.defined() != steer.defined(), op, ": give target or steer, not both");
    if (target.defined()) {
      expect(target, DType::bf16, op, "target");
      check_shape(target, {N, C}, op, "target");
    } else {
      expect(steer, DType::f64, op, "steer");
      check_shape(steer, {C}, op, "steer");
    }
    expect(targets, DType::i32, op, "targets");
    check_shape(targets, {N}, op, "targets");
    expect(dh, DType::f32, op, "dh");
    check_shape(dh, {N, C}, op, "dh");
    expect_loss_scalar(loss, op, "loss");
    Tensor row_sq = Tensor::empty({std::max<int64_t>(N, 1)}, DType::f64, Device::cuda);
    cuda::hidden_mse(ptr<bf16>(h), target.defined() ? ptr<bf16>(target) : nullptr,
                     steer.defined() ? ptr<double>(steer) : nullptr, ptr<int32_t>(targets), grad_scale, denom,
                     ptr<float>(dh), ptr<double>(row_sq), ptr<double>(loss), N, C);
  }

  void add_at_targets_(Tensor& x, const Tensor& targets, int64_t first, double value) override {
    const char* op = "add_at_targets_";
    expect(x, DType::bf16, op, "x");
    expect_ndim(x, 2, op, "x", "[N, Vr]");
    expect(targets, DType::i32, op, "targets");
    check_shape(targets, {x.dim(0)}, op, "targets");
    cuda::add_at_targets(ptr<bf16>(x), ptr<int32_t>(targets), first, float(value), x.dim(0), x.dim(1));
  }

  void add(const Tensor& a, const Tensor& b, Tensor& out) override {
    const char* op = "add";
    expect_cuda(out, op, "out");
    LETHE_CHECK(out.dtype() == DType::bf16 || out.dtype() == DType::f32, op, ": out is ", dtype_name(out.dtype()),
                ", expected bf16 or f32 (", kPolicy, ")");
    expect(a, out.dtype(), op, "a");
    expect(b, out.dtype(), op, "b");
    check_shape(a, out.shape(), op, "a");
    check_shape(b, out.shape(), op, "b");
    expect_same_or_disjoint(out, "out", a, "a", op);
    expect_same_or_disjoint(out, "out", b, "b", op);
    if (out.dtype() == DType::bf16) cuda::add(ptr<bf16>(a), ptr<bf16>(b), ptr<bf16>(out), out.numel());
    else cuda::add(ptr<float>(a), ptr<float>(b), ptr<float>(out), out.numel());
  }

  void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const ops::AdamWArgs& a) override {
    const char* op = "adamw_update";
    expect(p, DType::f32, op, "p");
    expect(g, DType::f32, op, "g");
    expect(m, DType::f32, op, "m");
    expect(v, DType::f32, op, "v");
    check_shape(g, p.shape(), op, "g");
    check_shape(m, p.shape(), op, "m");
    check_shape(v, p.shape(), op, "v");
    LETHE_CHECK(a.step >= 1, op, ": step must be >= 1, got ", a.step);
    const int64_t n = p.numel();
    if (n == 0) return;
    // The caller keeps the bf16 copy (param null) and clips beforehand (grad_scale null).
    const cuda::AdamWTensor t{ptr<float>(p), ptr<float>(g), ptr<float>(m), ptr<float>(v), nullptr, n,
                              a.weight_decay};
    cuda::adamw_multi(&t, 1, cuda::AdamWHyper{a.lr, a.beta1, a.beta2, a.eps, a.step}, nullptr);
  }

  void sgd_update(Tensor& p, const Tensor& g, Tensor& buf, const ops::SGDArgs& a) override {
    const char* op = "sgd_update";
    expect(p, DType::f32, op, "p");
    expect(g, DType::f32, op, "g");
    check_shape(g, p.shape(), op, "g");
    const bool mom = a.momentum != 0;
    if (mom) {
      expect(buf, DType::f32, op, "buf");
      check_shape(buf, p.shape(), op, "buf");
    }
    // The CPU twin rounds lr, mu and wd to f32 first, as here.
    cuda::sgd_update(ptr<float>(p), ptr<float>(g), mom ? ptr<float>(buf) : nullptr, p.numel(), float(a.lr),
                     float(a.momentum), float(a.weight_decay), a.first_step);
  }

  double sum_squares(const Tensor& x) override {
    expect(x, DType::f32, "sum_squares", "x");
    return sum_squares_each({x})[0];
  }

  std::vector<double> sum_squares_each(const std::vector<Tensor>& xs) override {
    const char* op = "sum_squares_each";
    std::vector<double> out(xs.size(), 0.0);
    if (xs.empty()) return out;
    // Each tensor's sum in its own slot, every launch in stream order (the partials are
    // reused), then one copy back: the host waits once.
    Tensor sums = Tensor::empty({int64_t(xs.size())}, DType::f64, Device::cuda);
    double* partials = reduce_scratch();
    for (size_t i = 0; i < xs.size(); ++i) {
      expect(xs[i], DType::f32, op, ("xs[" + std::to_string(i) + "]").c_str());
      const float* tensors[1] = {ptr<float>(xs[i])};
      const int64_t sizes[1] = {xs[i].numel()};
      cuda::sum_squares_multi(tensors, sizes, sizes[0] > 0 ? 1 : 0, partials, ptr<double>(sums) + i);
    }
    cuda::copy_to_host(out.data(), ptr<double>(sums), out.size() * sizeof(double));
    return out;
  }

  void scale_(Tensor& x, double s) override {
    expect(x, DType::f32, "scale_", "x");
    cuda::scale(ptr<float>(x), x.numel(), float(s));
  }

  // The debug-mode guard's scan: in place, two numbers back (it waits for the device).
  ops::NonFiniteScan find_nonfinite(const Tensor& x) override {
    const int64_t n = x.numel();
    if (n == 0 || x.dtype() == DType::i32) return {};
    cuda::DeviceNonFinite r;
    if (x.dtype() == DType::bf16) r = cuda::find_nonfinite(ptr<bf16>(x), n);
    else if (x.dtype() == DType::f32) r = cuda::find_nonfinite(ptr<float>(x), n);
    else LETHE_FAIL("find_nonfinite: no CUDA kernel for ", x.describe());
    return {r.count, r.count ? r.first : -1};
  }

 private:
  struct Dims {
    int64_t B, T, H, KV, D;
  };

  // q[B, T, H, D], k[B, T, KV, D]: the sizes and the conditions the kernels have.
  static Dims attention_dims(const Tensor& q, const Tensor& k, const char* op) {
    expect_ndim(q, 4, op, "q", "[B, T, H, D]");
    expect_ndim(k, 4, op, "k", "[B, T, KV, D]");
    const Dims d{q.dim(0), q.dim(1), q.dim(2), k.dim(2), q.dim(3)};
    check_shape(k, {d.B, d.T, d.KV, d.D}, op, "k");
    LETHE_CHECK(cuda::attention_supports_head_dim(d.D), op, ": head_dim ", d.D,
                " has no CUDA kernel (16, 32, 64 or 128)");
    LETHE_CHECK(d.KV > 0 && d.H % d.KV == 0, op, ": ", d.H, " query heads are not a multiple of ", d.KV,
                " kv heads");
    return d;
  }

  static void check_vocab_shard(int64_t first, int64_t rows, int64_t vocab, const char* op) {
    LETHE_CHECK(first >= 0 && first + rows <= vocab, op, ": ", rows, " rows from id ", first,
                " do not fit the vocabulary of ", vocab);
  }

  struct RowsVocab {
    int64_t N, V;
  };

  static RowsVocab cross_entropy_dims(const Tensor& logits, const Tensor& targets, const Tensor& weights,
                                      const char* op) {
    expect(logits, DType::bf16, op, "logits");
    expect(targets, DType::i32, op, "targets");
    expect(weights, DType::f32, op, "weights");
    expect_ndim(logits, 2, op, "logits", "[N, V]");
    const int64_t N = logits.dim(0), V = logits.dim(1);
    check_shape(targets, {N}, op, "targets");
    check_shape(weights, {N}, op, "weights");
    return {N, V};
  }

  // cos, sin [>= T, D/2] fp32, row t for position t (the kernels read rows of exactly D/2).
  static void expect_rope_tables(const Tensor& cos, const Tensor& sin, int64_t T, int64_t D, const char* op) {
    expect(cos, DType::f32, op, "cos");
    expect(sin, DType::f32, op, "sin");
    LETHE_CHECK(D > 0 && D % 2 == 0, op, ": head_dim must be even and positive, got ", D);
    LETHE_CHECK(cos.ndim() == 2 && cos.dim(0) >= T && cos.dim(1) == D / 2, op, ": cos table ", cos.describe(),
                " does not cover T=", T, ", D=", D);
    check_shape(sin, cos.shape(), op, "sin");
  }

  // The fused q/k/v layout's checks: q [B, T, H, D], k and v [B, T, KV, D], fused [B*T, (H + 2 KV) D].
  static std::array<int64_t, 5> qkv_layout(const Tensor& fused, const char* fused_arg, const Tensor& cos,
                                           const Tensor& sin, const Tensor& q, const char* q_arg, const Tensor& k,
                                           const char* k_arg, const Tensor& v, const char* v_arg, const char* op) {
    for (auto [t, name] : {std::pair{&fused, fused_arg}, {&q, q_arg}, {&k, k_arg}, {&v, v_arg}})
      expect(*t, DType::bf16, op, name);
    expect_ndim(q, 4, op, q_arg, "[B, T, H, D]");
    expect_ndim(k, 4, op, k_arg, "[B, T, KV, D]");
    const int64_t B = q.dim(0), T = q.dim(1), H = q.dim(2), KV = k.dim(2), D = q.dim(3);
    expect_rope_tables(cos, sin, T, D, op);
    check_shape(k, {B, T, KV, D}, op, k_arg);
    check_shape(v, {B, T, KV, D}, op, v_arg);
    check_shape(fused, {B * T, (H + 2 * KV) * D}, op, fused_arg);
    return {B, T, H, KV, D};
  }

  // x[B, T, H, D] -> y (may alias x).
  static void rotate(const Tensor& x, const char* x_arg, const Tensor& cos, const Tensor& sin, Tensor& y,
                     const char* y_arg, bool forward, const char* op) {
    expect(x, DType::bf16, op, x_arg);
    expect(y, DType::bf16, op, y_arg);
    expect_ndim(x, 4, op, x_arg, "[B, T, H, D]");
    const int64_t B = x.dim(0), T = x.dim(1), H = x.dim(2), D = x.dim(3);
    expect_rope_tables(cos, sin, T, D, op);
    check_shape(y, x.shape(), op, y_arg);
    expect_same_or_disjoint(y, y_arg, x, x_arg, op);
    if (forward)
      cuda::rope_forward(ptr<bf16>(x), ptr<float>(cos), ptr<float>(sin), ptr<bf16>(y), B, T, H, D);
    else
      cuda::rope_backward(ptr<bf16>(x), ptr<float>(cos), ptr<float>(sin), ptr<bf16>(y), B, T, H, D);
  }

  // Made at the first product, not in the constructor: gemm_create allocates its
  // workspace on the device, and the ops are constructed at start-up, GPU or not.
  cuda::GemmContext* gemm() {
    if (!gemm_) gemm_ = cuda::gemm_create();
    return gemm_;
  }

  // Kept across calls and grown when a larger problem comes: every layer's backward asks
  // for the same size, so a step allocates it once. Replacing it is safe while a kernel
  // still reads the old one, because the allocator hands that block out again only to
  // work queued later on the same stream.
  void* attention_workspace(size_t bytes) {
    if (!attn_workspace_.defined() || attn_workspace_.nbytes() < bytes)
      attn_workspace_ = Tensor::empty({int64_t((bytes + sizeof(float) - 1) / sizeof(float))}, DType::f32,
                                      Device::cuda);
    return attn_workspace_.raw();
  }

  // kNormPartials doubles of sum_squares partials: every sum's launches run in stream
  // order, so one buffer serves every call.
  double* reduce_scratch() {
    if (!reduce_.defined()) reduce_ = Tensor::empty({cuda::kNormPartials}, DType::f64, Device::cuda);
    return ptr<double>(reduce_);
  }

  cuda::GemmContext* gemm_ = nullptr;
  Tensor attn_workspace_;
  Tensor reduce_;
};

}  // namespace

std::unique_ptr<DeviceOps> make_cuda_device_ops() { return std::make_unique<CudaOps>(); }

}  // namespace lethe
