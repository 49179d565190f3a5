#include "engine/eval/multiple_choice.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/eval/truth_ratio.h"
#include "engine/io/jsonl.h"
#include "kernels/cross_entropy.h"

namespace lethe {
namespace {

using nlohmann::json;

int64_t utf8_chars(const std::string& s) {
  int64_t n = 0;
  for (const char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;  // not a continuation byte
  return n;
}

McItem parse_item(const json& j, const std::string& where, int64_t line) {
  McItem it;
  it.line = line;
  LETHE_CHECK(j.contains("question"), where, ": missing \"question\"");
  LETHE_CHECK(j["question"].is_string(), where, ": \"question\" must be a string");
  it.question = j["question"].get<std::string>();
  LETHE_CHECK(j.contains("choices"), where, ": missing \"choices\"");
  LETHE_CHECK(j["choices"].is_array(), where, ": \"choices\" must be an array of strings");
  LETHE_CHECK(!j["choices"].empty(), where, ": \"choices\" is empty");
  for (size_t c = 0; c < j["choices"].size(); ++c) {
    const json& v = j["choices"][c];
    LETHE_CHECK(v.is_string(), where, ": choice ", c, " is not a string");
    // acc_norm divides by the choice's length.
    LETHE_CHECK(!v.get<std::string>().empty(), where, ": choice ", c, " is empty");
    it.choices.push_back(v.get<std::string>());
  }
  LETHE_CHECK(j.contains("answer"), where, ": missing \"answer\"");
  // is_number_integer also admits unsigned; a float such as 1.0 is rejected, not rounded.
  LETHE_CHECK(j["answer"].is_number_integer(), where, ": \"answer\" must be an integer index");
  it.answer = j["answer"].get<int64_t>();
  LETHE_CHECK(it.answer >= 0 && it.answer < int64_t(it.choices.size()), where, ": answer ", it.answer,
              " is outside the ", it.choices.size(), " choices");
  return it;
}

double as_double(const Tensor& t, int64_t i) {
  return t.dtype() == DType::f32 ? double(t.data<float>()[i]) : t.data<double>()[i];
}

// np.argmax: the first maximum.
int64_t argmax_first(const std::vector<double>& v) {
  int64_t best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[size_t(best)]) best = int64_t(i);
  return best;
}

}  // namespace

std::vector<int32_t> bytes_encode(const std::string& text) {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = int32_t(static_cast<unsigned char>(text[i]));
  return ids;
}

std::vector<McItem> load_mc_task(const std::string& jsonl_path) {
  std::vector<McItem> items;
  for_each_jsonl_object(jsonl_path, "multiple-choice task", "items", "question, choices, answer",
                        [&](const json& j, const std::string& where, int64_t line) {
                          items.push_back(parse_item(j, where, line));
                        });
  return items;
}

std::vector<double> choice_logprobs(LlamaModel& model, const McItem& item, const TextEncoder& encode,
                                   std::vector<int64_t>* tokens) {
  const int64_t V = model.config().vocab_size, max_T = model.config().max_seq_len;
  const std::string context = item.question + "\nAnswer:";
  const std::vector<int32_t> ctx = encode(context);
  LETHE_CHECK(!ctx.empty(), "multiple choice (line ", item.line, "): the context encodes to no tokens");

  // Each choice is one row of a batch, right-padded: causal attention means padding after
  // a row's last token cannot change its log-probabilities.
  const int64_t B = int64_t(item.choices.size());
  std::vector<std::vector<int32_t>> inputs(static_cast<size_t>(B)), targets(static_cast<size_t>(B));
  int64_t T = 0;
  if (tokens) tokens->assign(size_t(B), 0);
  for (int64_t c = 0; c < B; ++c) {
    std::vector<int32_t> whole = encode(context + " " + item.choices[size_t(c)]);
    LETHE_CHECK(whole.size() > ctx.size(), "multiple choice (line ", item.line, "): choice ", c,
                " encodes to no tokens after the context");
    const int64_t n_cont = int64_t(whole.size() - ctx.size());
    if (tokens) (*tokens)[size_t(c)] = n_cont;
    LETHE_CHECK(n_cont <= max_T, "multiple choice (line ", item.line, "): choice ", c, " is ", n_cont,
                " tokens, longer than the model's max_seq_len ", max_T);
    for (size_t i = 0; i < whole.size(); ++i)
      LETHE_CHECK(whole[i] >= 0 && whole[i] < V, "multiple choice (line ", item.line, "): token id ", whole[i],
                  " is outside the model's vocabulary [0, ", V, ")");
    // Predict whole[1..]; keep the last max_T predictions, i.e. drop context from the left.
    const int64_t n_pred = int64_t(whole.size()) - 1, start = std::max<int64_t>(0, n_pred - max_T);
    auto& in = inputs[size_t(c)];
    auto& tg = targets[size_t(c)];
    in.assign(whole.begin() + start, whole.end() - 1);
    tg.assign(in.size(), ops::kIgnoreIndex);
    for (int64_t k = int64_t(in.size()) - n_cont; k < int64_t(in.size()); ++k)
      tg[size_t(k)] = whole[size_t(start + k + 1)];
    T = std::max(T, int64_t(in.size()));
  }

  Tensor tok = Tensor::zeros({B, T}, DType::i32), tgt = Tensor::empty({B, T}, DType::i32);
  std::fill(tgt.data<int32_t>(), tgt.data<int32_t>() + B * T, ops::kIgnoreIndex);
  for (int64_t c = 0; c < B; ++c) {
    std::copy(inputs[size_t(c)].begin(), inputs[size_t(c)].end(), tok.data<int32_t>() + c * T);
    std::copy(targets[size_t(c)].begin(), targets[size_t(c)].end(), tgt.data<int32_t>() + c * T);
  }
  model.forward(tok, tgt);  // unweighted: multiple_choice_accuracy's padding forwards match it
  std::vector<double> lp(static_cast<size_t>(B), 0.0);
  const Tensor logprobs = to_host(model.logprobs());
  for (int64_t c = 0; c < B; ++c)
    for (int64_t t = 0; t < T; ++t)
      if (tgt.data<int32_t>()[c * T + t] != ops::kIgnoreIndex) lp[size_t(c)] += as_double(logprobs, c * T + t);
  return lp;
}

McResult multiple_choice_accuracy(LlamaModel& model, const std::string& jsonl_path, const TextEncoder& encode) {
  LETHE_CHECK(bool(encode), "multiple choice: no encode function");
  const std::vector<McItem> items = load_mc_task(jsonl_path);
  // Under data parallelism dp rank d scores items d, d + dp, ...; the forward is collective
  // over dp (the loss), so a rank whose items ran out runs one fully masked token instead,
  // and the integer counts are summed over dp at the end.
  const int dp = model.grid().dp(), dp_rank = model.grid().dp_rank();
  const size_t rounds = (items.size() + size_t(dp) - 1) / size_t(dp);
  int64_t correct = 0, correct_norm = 0;
  // Each rank's truth ratios in their items' slots, zero elsewhere: summed over dp below.
  Tensor ratios = Tensor::zeros({int64_t(items.size())}, DType::f64);
  for (size_t round = 0; round < rounds; ++round) {
    const size_t i = round * size_t(dp) + size_t(dp_rank);
    if (i >= items.size()) {
      // Unweighted, as choice_logprobs' forward: both run the same collectives.
      const Tensor tok = Tensor::zeros({1, 1}, DType::i32), tgt = Tensor::from<int32_t>({1, 1}, {ops::kIgnoreIndex});
      model.forward(tok, tgt);
      continue;
    }
    const McItem& it = items[i];
    std::vector<double> lp;
    std::vector<int64_t> tokens;
    try {
      lp = choice_logprobs(model, it, encode, &tokens);
    } catch (const Error& e) {
      LETHE_FAIL(jsonl_path, ": ", e.what());
    }
    std::vector<double> norm(lp.size());
    for (size_t c = 0; c < lp.size(); ++c) norm[c] = lp[c] / double(utf8_chars(it.choices[c]));
    correct += argmax_first(lp) == it.answer;
    correct_norm += argmax_first(norm) == it.answer;
    if (lp.size() > 1) ratios.data<double>()[i] = truth_ratio(lp, tokens, it.answer);
  }
  if (dp > 1) {
    correct = model.grid().dp_group().all_reduce(correct, ReduceOp::sum);
    correct_norm = model.grid().dp_group().all_reduce(correct_norm, ReduceOp::sum);
    model.grid().dp_group().all_reduce(ratios, ReduceOp::sum);
  }
  McResult r;
  for (size_t i = 0; i < items.size(); ++i)
    if (items[i].choices.size() > 1) r.truth_ratios.push_back(ratios.data<double>()[i]);
  r.items = int64_t(items.size());
  r.acc = double(correct) / double(r.items);
  r.acc_norm = double(correct_norm) / double(r.items);
  return r;
}

}  // namespace lethe
