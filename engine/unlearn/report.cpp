#include "engine/unlearn/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/eval/ks_test.h"
#include "engine/eval/mia_stats.h"
#include "engine/eval/truth_ratio.h"

namespace lethe {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
std::string f4(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4f", v);
  return b;
}

json split_json(const EvalPoint& e) {
  json j = json::object();
  for (const auto& [n, s] : e.splits) j[n] = {{"nll", s.nll}, {"ppl", s.ppl}, {"acc", s.acc}, {"tokens", s.tokens}};
  j["mia_auc_loss"] = e.mia_auc;
  return j;
}

json interval_json(const Interval& i) {
  auto num = [](double x) { return std::isfinite(x) ? json(x) : json(nullptr); };
  return {{"value", num(i.value)}, {"ci95", {num(i.lo), num(i.hi)}}};
}

std::string interval_md(const Interval& i, bool percent) {
  auto f = [&](double x) {
    if (!std::isfinite(x)) return std::string("n/a");
    char b[32];
    std::snprintf(b, sizeof b, percent ? "%+.1f%%" : "%.3f", x);
    return std::string(b);
  };
  return f(i.value) + " [" + f(i.lo) + ", " + f(i.hi) + "]";
}

// TOFU's task metrics of one model's per-item truth ratios: both aggregates, and where the
// oracle's ratios on the same items are given, forget quality (the KS test's p-value).
json truth_json(const std::vector<double>& mine, const std::vector<double>* oracle) {
  json j = json::object();
  if (mine.empty()) return j;
  auto num = [](double x) { return std::isfinite(x) ? json(x) : json(nullptr); };
  const TruthRatioSummary t = summarize_truth_ratios(mine);
  // Per item too (in the task file's order), for breakdowns by the items' own keys.
  j["truth_ratio"] = {{"true_better", num(t.true_better)}, {"closer_to_1", num(t.closer_to_1)}, {"per_item", mine}};
  if (oracle && oracle->size() == mine.size()) {
    const KsResult ks = ks_two_sample(mine, *oracle);
    j["forget_quality"] = {{"ks_statistic", ks.statistic}, {"p_value", ks.p_value}, {"exact", ks.exact}};
  }
  return j;
}

// Forget quality as a p-value: three significant digits, small ones in exponent form.
std::string p3(double p) {
  char b[32];
  std::snprintf(b, sizeof b, p >= 1e-3 ? "%.3f" : "%.2e", p);
  return b;
}

double rel_change(double after, double before) { return before != 0 ? (after - before) / before * 100 : NAN; }

// The in-run curves: each split's NLL (left axis) and the LOSS membership AUC (its own
// right axis, 0-1), with the oracle's levels on the same sample as dashed target lines.
std::string svg(const std::vector<EvalPoint>& evals, const EvalPoint* oracle) {
  const double W = 720, H = 380, L = 60, R = 200, T = 20, B = 40;
  const char* names[] = {"forget", "retain", "holdout", "general"};
  const char* colors[] = {"#d62728", "#1f77b4", "#2ca02c", "#7f7f7f"};
  const char* auc_color = "#9467bd";
  double ymin = INFINITY, ymax = -INFINITY, xmax = 1;
  auto widen = [&](const EvalPoint& e) {
    for (const auto& [n, s] : e.splits) ymin = std::min(ymin, s.nll), ymax = std::max(ymax, s.nll);
  };
  for (const auto& e : evals) {
    xmax = std::max(xmax, double(e.step));
    widen(e);
  }
  if (oracle) widen(*oracle);
  if (!(ymax > ymin)) ymax = ymin + 1;
  const double x0 = L, x1 = W - R;
  auto X = [&](double x) { return x0 + (x1 - x0) * x / xmax; };
  auto Y = [&](double y) { return T + (H - T - B) * (1 - (y - ymin) / (ymax - ymin)); };
  auto Ya = [&](double a) { return T + (H - T - B) * (1 - a); };  // AUC on [0, 1]
  auto hline = [&](double y, const char* color) {
    return "<line x1='" + std::to_string(x0) + "' y1='" + std::to_string(y) + "' x2='" + std::to_string(x1) +
           "' y2='" + std::to_string(y) + "' stroke='" + color + "' stroke-width='1.5' stroke-dasharray='6,4'/>\n";
  };
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "' font-family='sans-serif' font-size='11'>\n";
  o << "<rect width='100%' height='100%' fill='white'/>\n";
  o << "<line x1='" << x0 << "' y1='" << H - B << "' x2='" << x1 << "' y2='" << H - B << "' stroke='black'/>\n";
  o << "<line x1='" << x0 << "' y1='" << T << "' x2='" << x0 << "' y2='" << H - B << "' stroke='black'/>\n";
  o << "<line x1='" << x1 << "' y1='" << T << "' x2='" << x1 << "' y2='" << H - B << "' stroke='" << auc_color << "'/>\n";
  o << "<text x='" << (x0 + x1) / 2 << "' y='" << H - 8 << "' text-anchor='middle'>step</text>\n";
  o << "<text x='12' y='" << (H - B + T) / 2 << "' transform='rotate(-90 12 " << (H - B + T) / 2
    << ")' text-anchor='middle'>NLL (nats/token)</text>\n";
  for (int k = 0; k <= 4; ++k) {
    const double y = ymin + (ymax - ymin) * k / 4;
    o << "<text x='" << x0 - 4 << "' y='" << Y(y) + 4 << "' text-anchor='end'>" << f4(y) << "</text>\n";
    o << "<text x='" << x1 + 4 << "' y='" << Ya(k / 4.0) + 4 << "' fill='" << auc_color << "'>" << f4(k / 4.0).substr(0, 4)
      << "</text>\n";
  }
  o << "<text x='" << x0 << "' y='" << H - B + 14 << "' text-anchor='middle'>0</text>\n";
  o << "<text x='" << x1 << "' y='" << H - B + 14 << "' text-anchor='middle'>" << int64_t(xmax) << "</text>\n";
  const double lx = x1 + 40;
  int row = 0;
  for (int i = 0; i < 4; ++i) {
    std::string pts;
    for (const auto& e : evals)
      if (e.splits.count(names[i])) pts += std::to_string(X(double(e.step))) + "," + std::to_string(Y(e.splits.at(names[i]).nll)) + " ";
    if (pts.empty()) continue;
    o << "<polyline fill='none' stroke='" << colors[i] << "' stroke-width='2' points='" << pts << "'/>\n";
    o << "<text x='" << lx << "' y='" << T + 14 * ++row << "' fill='" << colors[i] << "'>" << names[i] << " NLL</text>\n";
    if (oracle && oracle->splits.count(names[i])) o << hline(Y(oracle->splits.at(names[i]).nll), colors[i]);
  }
  std::string pts;
  for (const auto& e : evals) pts += std::to_string(X(double(e.step))) + "," + std::to_string(Ya(e.mia_auc)) + " ";
  o << "<polyline fill='none' stroke='" << auc_color << "' stroke-width='2' points='" << pts << "'/>\n";
  o << "<text x='" << lx << "' y='" << T + 14 * ++row << "' fill='" << auc_color << "'>MIA AUC (LOSS, right axis)</text>\n";
  if (oracle) {
    o << hline(Ya(oracle->mia_auc), auc_color);
    o << "<text x='" << lx << "' y='" << T + 14 * ++row << "'>dashed: retrain oracle</text>\n";
    o << "<text x='" << lx << "' y='" << T + 14 * ++row << "'>(same sample; targets)</text>\n";
  }
  o << "</svg>\n";
  return o.str();
}
}  // namespace

void write_report(const ReportInput& in, const std::string& dir) {
  const Recipe& r = *in.recipe;
  const UnlearnResult& res = *in.result;
  const EvalPoint& before = res.evals.front();
  const EvalPoint& after = res.evals.back();
  json j;
  j["format"] = "lethe-unlearn-report";
  j["version"] = 1;
  j["method"] = r.method;
  j["recipe_file"] = fs::path(r.file).filename().string();
  j["terms"] = json::array();
  for (const auto& t : r.terms)
    j["terms"].push_back({{"type", t.type}, {"stream", t.stream}, {"weight", t.weight}, {"beta", t.beta},
                          {"delta", t.delta}, {"layer", t.layer}, {"steer", t.steer}});
  j["optimizer"] = {{"type", r.optim.type}, {"lr", r.schedule.lr}, {"schedule", r.schedule.type},
                    {"weight_decay", r.optim.weight_decay}, {"grad_clip", r.optim.grad_clip}};
  j["steps_run"] = res.steps_run;
  j["steps_max"] = r.steps;
  j["stop_reason"] = res.stop_reason;
  j["model_sha256"] = in.model_sha256;
  j["unlearned_sha256"] = in.final_sha256;
  if (!in.oracle_sha256.empty()) j["oracle_sha256"] = in.oracle_sha256;
  j["data"] = json::object();
  for (const auto& [n, h] : in.data_sha256) j["data"][n] = {{"sha256", h}, {"documents", in.data_docs.at(n)}};
  j["forgotten_documents_sha256"] = in.forget_doc_sha256;
  // Whole-split NLLs of the final evaluation; the in-run curve samples each split.
  const auto& fe = res.final_evals;
  const EvalPoint& nll_before = fe.count("before") ? fe.at("before") : before;
  const EvalPoint& nll_after = fe.count("after") ? fe.at("after") : after;
  const EvalPoint* nll_oracle = fe.count("oracle") ? &fe.at("oracle") : in.oracle;
  j["before"] = split_json(nll_before);
  j["after"] = split_json(nll_after);
  if (nll_oracle) j["oracle"] = split_json(*nll_oracle);
  j["in_run_eval"] = {{"every", r.eval_every}, {"max_sequences_per_split", r.eval_max_sequences},
                      {"documents", res.in_run_docs},
                      {"note", "the curve and the stop / best rules use the first max_sequences chunks of each split "
                               "(0: all) of the documents counted here"}};
  j["final_eval"] = {{"max_sequences_per_split", r.eval_final_max_sequences},
                     {"documents", res.final_docs},
                     {"note", "before / after / oracle NLLs read the first max_sequences chunks of each split (0: the "
                              "whole split) of the documents counted here; the MIA suites read the forget and holdout "
                              "documents counted here (mia_documents: those scored)"}};
  // Which fixed models' numbers were read from eval.cache rather than scored in this run.
  if (!res.cached.empty()) j["final_eval"]["from_eval_cache"] = res.cached;
  // Which documents chose the stopping point and which the reported numbers describe.
  json sel = {{"enabled", res.selection_split}};
  if (res.selection_split) {
    for (const char* split : {"forget", "holdout"})
      if (res.in_run_docs.count(split) && res.final_docs.count(split))
        sel[split] = {{"selection_documents", res.in_run_docs.at(split)},
                      {"report_documents", res.final_docs.at(split)}};
    sel["rule"] = "documents sorted by SHA-256, alternately to the report and the selection half";
    sel["note"] = "the forget and holdout numbers of before / after / oracle, mia, privleak and verdict are on the "
                  "report half; the curve, the stop rules and the best checkpoint used the selection half only";
  } else {
    sel["note"] = "eval.selection_split is off: the stop rules and the best checkpoint were chosen on the same "
                  "documents the final evaluation reports on";
  }
  j["selection_split"] = sel;
  j["mia_auc_after"] = res.mia_auc_after;
  if (!res.mia_auc_oracle.empty()) j["mia_auc_oracle"] = res.mia_auc_oracle;

  // Every attack's AUC with a bootstrap interval and TPR at low FPR, for each model.
  const uint64_t boot_seed = 0x6d6961ull ^ r.seed;
  std::map<std::string, std::map<std::string, AttackSummary>> mia;
  for (const auto& [who, suite] : res.mia) {
    mia[who] = summarize_attacks(suite.members, suite.nonmembers, boot_seed);
    for (const auto& [a, st] : mia[who]) {
      json x = interval_json(st.auc);
      j["mia"][who][a] = {{"auc", x["value"]}, {"auc_ci95", x["ci95"]}, {"tpr_at_1_fpr", st.tpr_at_1_fpr},
                          {"tpr_at_5_fpr", st.tpr_at_5_fpr}};
    }
  }
  if (res.mia.count("after")) {
    j["mia_documents"] = {{"members", res.mia.at("after").members.by_attack.at("loss").size()},
                          {"nonmembers", res.mia.at("after").nonmembers.by_attack.at("loss").size()},
                          {"half", res.selection_split ? "report" : "all"}};
    j["mia_bootstrap"] = {{"resamples", kBootstrapResamples},
                          {"interval", "95% percentile, documents resampled with replacement; PrivLeak paired over "
                                       "the same documents for the model and the oracle"}};
  }
  // PrivLeak in both conventions, named, for the original and the unlearned model.
  std::map<std::string, std::map<std::string, Interval>> leak;  // who -> convention -> interval
  if (res.mia.count("oracle")) {
    const MiaSuite& o = res.mia.at("oracle");
    for (const char* who : {"before", "after"}) {
      if (!res.mia.count(who)) continue;
      const MiaSuite& m = res.mia.at(who);
      for (PrivLeak c : {PrivLeak::muse, PrivLeak::relative_auc}) {
        const Interval i = priv_leak_interval(c, m.members, m.nonmembers, o.members, o.nonmembers, boot_seed);
        leak[who][priv_leak_name(c)] = i;
        json x = interval_json(i);
        x["attack"] = priv_leak_attack(c);
        x["definition"] = priv_leak_definition(c);
        j["privleak"][who][priv_leak_name(c)] = x;
      }
    }
    // Per attack, relative AUC (lethe's first convention), for tables that compare attacks.
    json rel = json::object();
    for (const auto& [a, auc] : res.mia_auc_after)
      if (res.mia_auc_oracle.count(a) && res.mia_auc_oracle.at(a) > 0)
        rel[a] = (auc - res.mia_auc_oracle.at(a)) / res.mia_auc_oracle.at(a) * 100;
    j["privleak_relative_auc_percent"] = rel;
  }
  // The verdict against the project's target: |PrivLeak| <= 5% (MUSE's convention) with
  // retain and general NLL no more than 2% above the original model's. The NLL condition is
  // one-sided because the target asks that utility be kept: an exact retrain itself moves
  // them (on the entity benchmark the oracle's retain NLL is 14% below the original's, as
  // it spends no capacity on the forget set), so a band on both sides would fail the very
  // model unlearning aims at. The symmetric reading is reported beside it, with the
  // oracle's own change, so a departure in either direction stays visible.
  json verdict = json::object();
  if (leak.count("after")) verdict["privleak_muse"] = j["privleak"]["after"]["muse_min_k_40"];
  for (const char* split : {"retain", "general"}) {
    if (!nll_after.splits.count(split) || !nll_before.splits.count(split)) continue;
    verdict[std::string(split) + "_nll_change_vs_original_percent"] =
        rel_change(nll_after.splits.at(split).nll, nll_before.splits.at(split).nll);
    if (nll_oracle && nll_oracle->splits.count(split))
      verdict["oracle_" + std::string(split) + "_nll_change_vs_original_percent"] =
          rel_change(nll_oracle->splits.at(split).nll, nll_before.splits.at(split).nll);
  }
  if (!verdict.empty()) {
    verdict["target"] = "|PrivLeak (MUSE)| <= 5% with retain and general NLL at most 2% above the original's";
    bool met = leak.count("after") && std::isfinite(leak.at("after").at("muse_min_k_40").value) &&
               std::abs(leak.at("after").at("muse_min_k_40").value) <= 5;
    bool both_ways = true;
    for (const char* split : {"retain", "general"}) {
      const std::string k = std::string(split) + "_nll_change_vs_original_percent";
      if (!verdict.contains(k)) continue;
      const double c = verdict[k].get<double>();
      met = met && c <= 2;
      both_ways = both_ways && std::abs(c) <= 2;
    }
    verdict["met"] = met;
    verdict["nll_within_2_percent_both_ways"] = both_ways;
    j["verdict"] = verdict;
  }
  for (const auto& [who, x] : res.extra) {
    if (x.verbatim)
      j["verbatim_memorisation"][who] = {{"docs", x.verbatim_docs}, {"rouge_l_f1", x.rouge_l_f1},
                                         {"rouge_l_recall", x.rouge_l_recall}, {"exact_match", x.exact_match},
                                         {"prefix", r.verbatim_prefix}, {"continuation", r.verbatim_continuation}};
    const auto oracle = res.extra.find("oracle");
    const bool vs_oracle = who != "oracle" && oracle != res.extra.end();
    if (x.mc) {
      j["multiple_choice"][who] = {{"items", x.mc_items}, {"acc", x.mc_acc}, {"acc_norm", x.mc_acc_norm}};
      j["multiple_choice"][who].update(truth_json(x.mc_truth_ratios, vs_oracle ? &oracle->second.mc_truth_ratios : nullptr));
    }
    for (const auto& [name, s] : x.mc_tasks) {
      j["multiple_choice_tasks"][name][who] = {{"items", s.items}, {"acc", s.acc}, {"acc_norm", s.acc_norm}};
      const std::vector<double>* o = vs_oracle && oracle->second.mc_tasks.count(name)
                                         ? &oracle->second.mc_tasks.at(name).truth_ratios
                                         : nullptr;
      j["multiple_choice_tasks"][name][who].update(truth_json(s.truth_ratios, o));
    }
    for (const auto& [name, s] : x.canaries)
      j["canary_exposure"][name][who] = {{"canaries", s.exposures.size()}, {"mean_bits", s.mean},
                                         {"max_possible_bits", s.log2_space_max}, {"ranked_exactly", s.exact},
                                         {"per_canary_bits", s.exposures}};
  }
  if (j.contains("multiple_choice") || j.contains("multiple_choice_tasks"))
    j["multiple_choice_definitions"] = {
        {"truth_ratio", "TOFU's R per item: geometric-mean per-token probability of the wrong choices over the true "
                        "answer's; true_better = mean max(0, 1 - R), closer_to_1 = mean min(R, 1/R)"},
        {"forget_quality", "TOFU's forget quality: two-sample Kolmogorov-Smirnov test of this model's per-item R "
                           "against the oracle's on the same items; p_value near 1 = indistinguishable"}};
  j["curve"] = json::array();
  for (const auto& e : res.evals) {
    json p = split_json(e);
    p["step"] = e.step;
    j["curve"].push_back(p);
  }
  j["outputs"] = {{"final", "final"}, {"best", res.best_dir.empty() ? "" : "best"}};
  std::ofstream(fs::path(dir) / "report.json") << j.dump(2) << "\n";

  std::ostringstream md;
  md << "# Unlearning report: " << r.method << "\n\n";
  if (!verdict.empty()) {
    md << "**Verdict against the retrain oracle: target " << (verdict["met"].get<bool>() ? "met" : "not met")
       << "** (|PrivLeak| <= 5% in MUSE's convention, retain and general NLL at most 2% above the original's).\n\n";
    if (leak.count("after")) {
      md << "- PrivLeak (MUSE: Min-K% 40, 1 - AUC), 95% interval: unlearned "
         << interval_md(leak.at("after").at("muse_min_k_40"), true);
      if (leak.count("before")) md << "; original " << interval_md(leak.at("before").at("muse_min_k_40"), true);
      md << "\n";
    }
    for (const char* split : {"retain", "general"}) {
      const std::string k = std::string(split) + "_nll_change_vs_original_percent";
      if (!verdict.contains(k)) continue;
      md << "- " << split << " NLL vs the original: " << f4(verdict[k].get<double>()) << "%";
      if (verdict.contains("oracle_" + k))
        md << " (the oracle: " << f4(verdict["oracle_" + k].get<double>()) << "%)";
      md << "\n";
    }
    md << "\n";
  }
  md << "Recipe `" << fs::path(r.file).filename().string() << "`, " << res.steps_run << " of " << r.steps
     << " steps, stopped by: " << res.stop_reason << ".\n\n";
  md << "NLL " << (fe.empty() ? std::string("of the in-run sample")
                               : r.eval_final_max_sequences > 0
                                     ? "over the first " + std::to_string(r.eval_final_max_sequences) + " chunks of each split"
                                     : std::string("over whole splits"))
     << ":\n\n";
  md << "| split | NLL before | NLL after | PPL before | PPL after |" << (nll_oracle ? " NLL oracle |" : "") << "\n";
  md << "|---|---:|---:|---:|---:|" << (nll_oracle ? "---:|" : "") << "\n";
  for (const auto& [n, s] : nll_after.splits) {
    md << "| " << n << " | " << f4(nll_before.splits.at(n).nll) << " | " << f4(s.nll) << " | "
       << f4(nll_before.splits.at(n).ppl) << " | " << f4(s.ppl) << " |";
    if (nll_oracle && nll_oracle->splits.count(n)) md << " " << f4(nll_oracle->splits.at(n).nll) << " |";
    md << "\n";
  }
  md << "\nIn-run evaluations (the curve, stop and best rules) read "
     << (r.eval_max_sequences > 0 ? "the first " + std::to_string(r.eval_max_sequences) + " chunks" : std::string("all"))
     << " of each split.\n";
  auto docs_of = [](const std::map<std::string, int64_t>& m, const char* split) {
    return m.count(split) ? std::to_string(m.at(split)) : std::string("?");
  };
  if (res.selection_split)
    md << "\nForget and holdout numbers in this report (NLLs, membership inference, PrivLeak, verdict) are on the "
          "**report half** of their documents: "
       << docs_of(res.final_docs, "forget") << " forget and " << docs_of(res.final_docs, "holdout")
       << " holdout documents. The curve, the stop rules and the best checkpoint used the other half ("
       << docs_of(res.in_run_docs, "forget") << " forget, " << docs_of(res.in_run_docs, "holdout")
       << " holdout documents), so the stopping point was not chosen on the documents reported here "
          "(`eval.selection_split`, halves by document SHA-256).\n";
  else
    md << "\nSelection split off (`eval.selection_split: false`): the stop rules and the best checkpoint were chosen "
          "on the same documents this report scores, which biases the reported numbers towards the stopping point.\n";
  if (!res.cached.empty()) {
    md << "\nRead from `eval.cache` (scored by an earlier run of this executable on the same weights, data and "
          "evaluation settings):";
    for (const auto& c : res.cached) md << " " << c;
    md << ".\n";
  }
  if (j.contains("mia_documents")) {
    md << "\nMembership inference (" << j["mia_documents"]["members"].get<int64_t>() << " forget documents = members, "
       << j["mia_documents"]["nonmembers"].get<int64_t>()
       << " holdout documents = non-members): ROC AUC with 95% bootstrap interval, TPR at 1% / 5% FPR:\n\n";
    const bool has_o = mia.count("oracle") > 0, has_b = mia.count("before") > 0;
    md << "| attack |" << (has_b ? " original |" : "") << " unlearned |" << (has_o ? " oracle |" : "")
       << " unlearned TPR@1% | TPR@5% |\n|---|" << (has_b ? "---:|" : "") << "---:|" << (has_o ? "---:|" : "")
       << "---:|---:|\n";
    for (const auto& [a, st] : mia.at("after")) {
      md << "| " << a << " |";
      if (has_b) md << " " << interval_md(mia.at("before").at(a).auc, false) << " |";
      md << " " << interval_md(st.auc, false) << " |";
      if (has_o) md << " " << interval_md(mia.at("oracle").at(a).auc, false) << " |";
      md << " " << f4(st.tpr_at_1_fpr) << " | " << f4(st.tpr_at_5_fpr) << " |\n";
    }
    if (leak.count("after")) {
      md << "\nPrivLeak, 95% paired bootstrap interval:\n\n| convention | original | unlearned |\n|---|---:|---:|\n";
      for (PrivLeak c : {PrivLeak::muse, PrivLeak::relative_auc}) {
        md << "| " << priv_leak_definition(c) << " | "
           << (leak.count("before") ? interval_md(leak.at("before").at(priv_leak_name(c)), true) : "") << " | "
           << interval_md(leak.at("after").at(priv_leak_name(c)), true) << " |\n";
      }
    }
  }
  const auto& ex = res.extra;
  if (ex.count("after") && (ex.at("after").verbatim || ex.at("after").mc || !ex.at("after").mc_tasks.empty() ||
                            !ex.at("after").canaries.empty())) {
    md << "\nGeneration and task metrics (forget-document continuations: greedy, " << r.verbatim_prefix
       << "-token prefix, " << r.verbatim_continuation << " tokens):\n\n| metric | before | after |"
       << (ex.count("oracle") ? " oracle |" : "") << "\n|---|---:|---:|" << (ex.count("oracle") ? "---:|" : "") << "\n";
    auto row = [&](const char* name, double ExtraMetrics::*f, bool ExtraMetrics::*on) {
      if (!(ex.at("after").*on)) return;
      md << "| " << name << " | " << f4(ex.at("before").*f) << " | " << f4(ex.at("after").*f) << " |";
      if (ex.count("oracle")) md << " " << f4(ex.at("oracle").*f) << " |";
      md << "\n";
    };
    row("ROUGE-L F1 (forget continuations)", &ExtraMetrics::rouge_l_f1, &ExtraMetrics::verbatim);
    row("exact match (forget continuations)", &ExtraMetrics::exact_match, &ExtraMetrics::verbatim);
    row("multiple-choice acc", &ExtraMetrics::mc_acc, &ExtraMetrics::mc);
    row("multiple-choice acc_norm", &ExtraMetrics::mc_acc_norm, &ExtraMetrics::mc);
    for (const auto& [name, s] : ex.at("after").mc_tasks) {
      auto acc = [&](const char* who) {
        const auto w = ex.find(who);
        return w != ex.end() && w->second.mc_tasks.count(name) ? f4(w->second.mc_tasks.at(name).acc) : std::string();
      };
      md << "| multiple-choice acc: " << name << " (" << s.items << " items) | " << acc("before") << " | "
         << acc("after") << " |";
      if (ex.count("oracle")) md << " " << acc("oracle") << " |";
      md << "\n";
    }
    // TOFU's truth ratio and forget quality, per task, from the report's JSON.
    auto truth_rows = [&](const std::string& label, const json& by_who) {
      if (!by_who.contains("after") || !by_who["after"].contains("truth_ratio")) return;
      auto cell = [&](const char* who, const char* group, const char* key, bool p) -> std::string {
        if (!by_who.contains(who) || !by_who[who].contains(group) || by_who[who][group][key].is_null()) return "";
        return p ? p3(by_who[who][group][key].get<double>()) : f4(by_who[who][group][key].get<double>());
      };
      for (const auto& [key, what] : {std::pair{"closer_to_1", "truth ratio, min(R, 1/R)"},
                                      std::pair{"true_better", "truth ratio, max(0, 1 - R)"}}) {
        md << "| " << what << ": " << label << " | " << cell("before", "truth_ratio", key, false) << " | "
           << cell("after", "truth_ratio", key, false) << " |";
        if (ex.count("oracle")) md << " " << cell("oracle", "truth_ratio", key, false) << " |";
        md << "\n";
      }
      if (by_who["after"].contains("forget_quality"))
        md << "| forget quality (KS p-value vs the oracle): " << label << " | "
           << cell("before", "forget_quality", "p_value", true) << " | " << cell("after", "forget_quality", "p_value", true)
           << " |" << (ex.count("oracle") ? " 1 |" : "") << "\n";
    };
    for (const auto& [name, s] : ex.at("after").canaries) {
      auto bits = [&](const char* who) {
        const auto w = ex.find(who);
        return w != ex.end() && w->second.canaries.count(name) ? f4(w->second.canaries.at(name).mean) : std::string();
      };
      md << "| canary exposure, mean bits of at most " << f4(s.log2_space_max) << ": " << name << " ("
         << s.exposures.size() << " canaries) | " << bits("before") << " | " << bits("after") << " |";
      if (ex.count("oracle")) md << " " << bits("oracle") << " |";
      md << "\n";
    }
    if (j.contains("multiple_choice")) truth_rows("multiple choice", j["multiple_choice"]);
    if (j.contains("multiple_choice_tasks"))
      for (const auto& [name, by_who] : j["multiple_choice_tasks"].items()) truth_rows(name, by_who);
  }
  md << "\nModel sha256 `" << in.model_sha256 << "`, unlearned `" << in.final_sha256 << "`";
  if (!in.oracle_sha256.empty()) md << ", oracle `" << in.oracle_sha256 << "`";
  md << ".\n\nForgotten documents (" << in.forget_doc_sha256.size()
     << ", SHA-256 of their text; the text itself is never written): see `report.json` field "
        "`forgotten_documents_sha256`.\n\nCurves: `curves.svg`.\n";
  std::ofstream(fs::path(dir) / "report.md") << md.str();
  const EvalPoint* oracle_sample = fe.count("oracle_in_run") ? &fe.at("oracle_in_run") : nullptr;
  std::ofstream(fs::path(dir) / "curves.svg") << svg(res.evals, oracle_sample);
}

}  // namespace lethe
