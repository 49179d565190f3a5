// One decoder layer at 7B width (Llama-2-7B: 32 heads of 128, ffn 11008; Yi-6B: GQA with
// 32 query / 4 kv heads) runs forward + backward in float64, and a finite-difference spot
// check agrees with every parameter's gradient: directional derivative along a random
// unit direction per tensor, relative tolerance 1e-6 (+1e-10 absolute). The vocabulary is cut to 512 so the
// test is about the layer, not the embedding.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/model/llama.h"
#include "kernels/optim.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
using namespace lethe::test;

void check_layer(int64_t n_kv_heads, double theta) {
  LlamaConfig c;
  c.vocab_size = 512;
  c.dim = 4096;
  c.n_layers = 1;
  c.n_heads = 32;
  c.n_kv_heads = n_kv_heads;
  c.ffn_dim = 11008;
  c.rope_theta = theta;
  c.max_seq_len = 4096;
  LlamaModel m(c, DType::f64);
  m.init_weights(2024);
  for (size_t i = 0; i < m.params().size(); ++i)
    if (m.params()[i].ndim() == 1) m.params()[i].copy_from(randn(m.params()[i].shape(), DType::f64, 50 + i, 0.1, 1.0));
  const int64_t B = 1, T = 6;
  Tensor tok = randint({B, T}, c.vocab_size, 3), tgt = randint({B, T}, c.vocab_size, 4);
  m.grads().zero();
  const double loss = m.forward(tok, tgt);
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_NEAR(loss, std::log(512.0), 1.0);  // near-uniform predictions at init
  m.backward();
  for (size_t i = 0; i < m.params().size(); ++i) {
    // Unit-norm direction: with 45M entries an unnormalised step of 1e-5 per entry moves
    // the weights by 0.07 in L2 and the O(h^2) truncation error shows.
    Tensor dir = randn(m.params()[i].shape(), DType::f64, 900 + i);
    ops::scale_(dir, 1.0 / std::sqrt(dot(dir, dir)));
    const double analytic = dot(m.grads()[i], dir);
    const double fd = directional_fd(m.params()[i], dir, [&] { return m.forward(tok, tgt); }, 1e-4);
    EXPECT_NEAR(analytic, fd, 1e-6 * std::abs(fd) + 1e-10) << m.params().spec(i).name;
  }
}

TEST(Layer7B, Llama2WidthGradientsMatchFiniteDifferences) { check_layer(32, 10000.0); }
TEST(Layer7B, Yi6BGqaWidthGradientsMatchFiniteDifferences) { check_layer(4, 5000000.0); }

}  // namespace
}  // namespace lethe
