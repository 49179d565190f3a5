#include "engine/unlearn/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

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

// A line chart with one polyline per series; the y axis is shared.
std::string svg(const std::vector<EvalPoint>& evals) {
  const double W = 640, H = 360, L = 60, R = 150, T = 20, B = 40;
  const char* names[] = {"forget", "retain", "holdout", "general"};
  const char* colors[] = {"#d62728", "#1f77b4", "#2ca02c", "#7f7f7f"};
  double ymin = INFINITY, ymax = -INFINITY, xmax = 1;
  for (const auto& e : evals) {
    xmax = std::max(xmax, double(e.step));
    for (const auto& [n, s] : e.splits) ymin = std::min(ymin, s.nll), ymax = std::max(ymax, s.nll);
  }
  if (!(ymax > ymin)) ymax = ymin + 1;
  auto X = [&](double x) { return L + (W - L - R) * x / xmax; };
  auto Y = [&](double y) { return T + (H - T - B) * (1 - (y - ymin) / (ymax - ymin)); };
  auto Ya = [&](double a) { return T + (H - T - B) * (1 - a); };  // AUC on [0, 1]
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "' font-family='sans-serif' font-size='11'>\n";
  o << "<rect width='100%' height='100%' fill='white'/>\n";
  o << "<line x1='" << L << "' y1='" << H - B << "' x2='" << W - R << "' y2='" << H - B << "' stroke='black'/>\n";
  o << "<line x1='" << L << "' y1='" << T << "' x2='" << L << "' y2='" << H - B << "' stroke='black'/>\n";
  o << "<text x='" << (W - R + L) / 2 << "' y='" << H - 8 << "' text-anchor='middle'>step</text>\n";
  o << "<text x='12' y='" << (H - B + T) / 2 << "' transform='rotate(-90 12 " << (H - B + T) / 2
    << ")' text-anchor='middle'>NLL (nats/token)</text>\n";
  for (int k = 0; k <= 4; ++k) {
    const double y = ymin + (ymax - ymin) * k / 4;
    o << "<text x='" << L - 4 << "' y='" << Y(y) + 4 << "' text-anchor='end'>" << f4(y) << "</text>\n";
  }
  o << "<text x='" << L << "' y='" << H - B + 14 << "' text-anchor='middle'>0</text>\n";
  o << "<text x='" << W - R << "' y='" << H - B + 14 << "' text-anchor='middle'>" << int64_t(xmax) << "</text>\n";
  for (int i = 0; i < 4; ++i) {
    std::string pts;
    for (const auto& e : evals)
      if (e.splits.count(names[i])) pts += std::to_string(X(double(e.step))) + "," + std::to_string(Y(e.splits.at(names[i]).nll)) + " ";
    if (pts.empty()) continue;
    o << "<polyline fill='none' stroke='" << colors[i] << "' stroke-width='2' points='" << pts << "'/>\n";
    o << "<text x='" << W - R + 10 << "' y='" << T + 14 * (i + 1) << "' fill='" << colors[i] << "'>" << names[i]
      << " NLL</text>\n";
  }
  std::string pts;
  for (const auto& e : evals) pts += std::to_string(X(double(e.step))) + "," + std::to_string(Ya(e.mia_auc)) + " ";
  o << "<polyline fill='none' stroke='#9467bd' stroke-dasharray='5,3' stroke-width='2' points='" << pts << "'/>\n";
  o << "<text x='" << W - R + 10 << "' y='" << T + 14 * 5 << "' fill='#9467bd'>MIA AUC (0-1 scale)</text>\n";
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
  j["before"] = split_json(before);
  j["after"] = split_json(after);
  if (in.oracle) j["oracle"] = split_json(*in.oracle);
  j["mia_auc_after"] = res.mia_auc_after;
  if (!res.mia_auc_oracle.empty()) {
    j["mia_auc_oracle"] = res.mia_auc_oracle;
    json leak = json::object();
    for (const auto& [a, auc] : res.mia_auc_after)
      // An oracle AUC of 0 (an attack that ranks every holdout document first) has no
      // relative leak: the attack is left out rather than reported as infinite.
      if (res.mia_auc_oracle.count(a) && res.mia_auc_oracle.at(a) > 0)
        leak[a] = (auc - res.mia_auc_oracle.at(a)) / res.mia_auc_oracle.at(a) * 100;
    j["privleak_percent"] = leak;
  }
  for (const auto& [who, x] : res.extra) {
    if (x.verbatim)
      j["verbatim_memorisation"][who] = {{"docs", x.verbatim_docs}, {"rouge_l_f1", x.rouge_l_f1},
                                         {"rouge_l_recall", x.rouge_l_recall}, {"exact_match", x.exact_match},
                                         {"prefix", r.verbatim_prefix}, {"continuation", r.verbatim_continuation}};
    if (x.mc) j["multiple_choice"][who] = {{"items", x.mc_items}, {"acc", x.mc_acc}, {"acc_norm", x.mc_acc_norm}};
  }
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
  md << "Recipe `" << fs::path(r.file).filename().string() << "`, " << res.steps_run << " of " << r.steps
     << " steps, stopped by: " << res.stop_reason << ".\n\n";
  md << "| split | NLL before | NLL after | PPL before | PPL after |" << (in.oracle ? " NLL oracle |" : "") << "\n";
  md << "|---|---:|---:|---:|---:|" << (in.oracle ? "---:|" : "") << "\n";
  for (const auto& [n, s] : after.splits) {
    md << "| " << n << " | " << f4(before.splits.at(n).nll) << " | " << f4(s.nll) << " | " << f4(before.splits.at(n).ppl)
       << " | " << f4(s.ppl) << " |";
    if (in.oracle && in.oracle->splits.count(n)) md << " " << f4(in.oracle->splits.at(n).nll) << " |";
    md << "\n";
  }
  md << "\nMembership inference (forget = members, holdout = non-members), ROC AUC:\n\n";
  md << "| attack | after |" << (res.mia_auc_oracle.empty() ? "" : " oracle | PrivLeak % |") << "\n";
  md << "|---|---:|" << (res.mia_auc_oracle.empty() ? "" : "---:|---:|") << "\n";
  for (const auto& [a, auc] : res.mia_auc_after) {
    md << "| " << a << " | " << f4(auc) << " |";
    if (res.mia_auc_oracle.count(a)) {
      const double o = res.mia_auc_oracle.at(a);
      md << " " << f4(o) << " | " << (o > 0 ? f4((auc - o) / o * 100) : std::string("n/a")) << " |";
    }
    md << "\n";
  }
  const auto& ex = res.extra;
  if (ex.count("after") && (ex.at("after").verbatim || ex.at("after").mc)) {
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
  }
  md << "\nModel sha256 `" << in.model_sha256 << "`, unlearned `" << in.final_sha256 << "`";
  if (!in.oracle_sha256.empty()) md << ", oracle `" << in.oracle_sha256 << "`";
  md << ".\n\nForgotten documents (" << in.forget_doc_sha256.size()
     << ", SHA-256 of their text; the text itself is never written): see `report.json` field "
        "`forgotten_documents_sha256`.\n\nCurves: `curves.svg`.\n";
  std::ofstream(fs::path(dir) / "report.md") << md.str();
  std::ofstream(fs::path(dir) / "curves.svg") << svg(res.evals);
}

}  // namespace lethe
