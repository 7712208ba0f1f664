// Reports of `kvroute eval`: markdown, CSV, JSON and a plot of validation loss
// against the fraction of the KV cache kept.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>

#include "kvroute/evaluate.h"
#include "eval/gnuplot_run.h"
#include "kvroute/json_text.h"
#include "kvroute/stop_signals.h"

namespace kvroute {

namespace fs = std::filesystem;

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

bool is_full(const SharingStrategy& s) { return s.n_cache_layers() == static_cast<int>(s.src.size()); }

// Checkpoints in order of first appearance, each with its rows.
std::vector<std::pair<std::string, std::vector<const StrategyResult*>>> by_checkpoint(
    const std::vector<StrategyResult>& results) {
  std::vector<std::pair<std::string, std::vector<const StrategyResult*>>> groups;
  for (const StrategyResult& r : results) {
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == r.checkpoint; });
    if (it == groups.end()) {
      groups.push_back({r.checkpoint, {}});
      it = groups.end() - 1;
    }
    it->second.push_back(&r);
  }
  return groups;
}

const StrategyResult* baseline(const std::vector<const StrategyResult*>& rows) {
  for (const StrategyResult* r : rows)
    if (is_full(r->strategy)) return r;
  return rows.front();
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string svg_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

// Per checkpoint: every (KV %, loss) point, and the line through the lowest loss at each
// KV fraction (the best strategy found for that cache size).
struct PlotSeries {
  std::string name;
  std::vector<std::pair<double, double>> points, best;
};

std::vector<PlotSeries> plot_series(const std::vector<StrategyResult>& results) {
  std::vector<PlotSeries> out;
  for (const auto& [ckpt, rows] : by_checkpoint(results)) {
    PlotSeries s;
    s.name = ckpt;
    for (const StrategyResult* r : rows)
      if (std::isfinite(r->val_loss)) s.points.push_back({100.0 * r->kv_fraction, r->val_loss});
    std::sort(s.points.begin(), s.points.end());
    for (const auto& p : s.points)
      if (s.best.empty() || s.best.back().first != p.first) s.best.push_back(p);  // sorted: lowest loss first
    out.push_back(s);
  }
  return out;
}

std::string write_svg_plot(const std::vector<StrategyResult>& results, const fs::path& path) {
  const auto lines = plot_series(results);
  double ymin = std::numeric_limits<double>::infinity(), ymax = -ymin;
  for (const auto& l : lines)
    for (const auto& p : l.points) ymin = std::min(ymin, p.second), ymax = std::max(ymax, p.second);
  if (!std::isfinite(ymin)) ymin = 0, ymax = 1;
  if (ymax - ymin < 1e-9) ymin -= 0.5, ymax += 0.5;
  const double pad = 0.05 * (ymax - ymin);
  ymin -= pad, ymax += pad;
  const int W = 800, H = 520, left = 80, right = 30, top = 40, bottom = 60 + 20 * static_cast<int>(lines.size());
  const double pw = W - left - right, ph = H - top - bottom;
  auto X = [&](double x) { return left + pw * x / 100.0; };
  auto Y = [&](double y) { return top + ph * (ymax - y) / (ymax - ymin); };
  const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">validation loss against KV cache kept</text>\n";
  s << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"none\" stroke=\"black\"/>\n";
  for (int i = 0; i <= 4; ++i) {
    const double xv = 25.0 * i, yv = ymin + (ymax - ymin) * i / 4.0;
    s << "<text x=\"" << X(xv) << "\" y=\"" << top + ph + 16 << "\" text-anchor=\"middle\">" << fmt("%.0f%%", xv)
      << "</text>\n<text x=\"" << left - 6 << "\" y=\"" << Y(yv) + 4 << "\" text-anchor=\"end\">" << fmt("%.3f", yv)
      << "</text>\n";
  }
  s << "<text x=\"" << left + pw / 2 << "\" y=\"" << top + ph + 36 << "\" text-anchor=\"middle\">KV cache kept (% of full)</text>\n"
    << "<text transform=\"translate(18," << top + ph / 2 << ") rotate(-90)\" text-anchor=\"middle\">validation loss</text>\n";
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const char* c = colors[i % 8];
    std::string pts;
    for (const auto& p : lines[i].best) pts += fmt("%.1f", X(p.first)) + "," + fmt("%.1f", Y(p.second)) + " ";
    s << "<polyline fill=\"none\" stroke=\"" << c << "\" stroke-width=\"2\" points=\"" << pts << "\"/>\n";
    for (const auto& p : lines[i].points)
      s << "<circle cx=\"" << X(p.first) << "\" cy=\"" << Y(p.second) << "\" r=\"4\" fill=\"" << c << "\"/>\n";
    const int ly = top + static_cast<int>(ph) + 52 + 20 * static_cast<int>(i);
    s << "<line x1=\"" << left << "\" y1=\"" << ly - 4 << "\" x2=\"" << left + 30 << "\" y2=\"" << ly - 4
      << "\" stroke=\"" << c << "\" stroke-width=\"2\"/><text x=\"" << left + 38 << "\" y=\"" << ly << "\">"
      << svg_escape(lines[i].name) << "</text>\n";
  }
  s << "</svg>\n";
  std::ofstream(path) << s.str();
  return path.string();
}

// PNG through gnuplot; returns "" if gnuplot is missing or fails.
std::string write_gnuplot_png(const std::vector<StrategyResult>& results, const fs::path& dir) {
  const auto lines = plot_series(results);
  {
    // Blocks 2i (every strategy, as points) and 2i+1 (the best loss per KV fraction, as a line).
    std::ofstream dat(dir / "loss_vs_kv.dat");
    for (const auto& l : lines) {
      for (const auto* pts : {&l.points, &l.best}) {
        dat << "# " << l.name << (pts == &l.points ? ": every strategy" : ": best per KV fraction") << "\n";
        for (const auto& p : *pts) dat << p.first << " " << fmt("%.6f", p.second) << "\n";
        dat << "\n\n";
      }
    }
    std::ofstream gp(dir / "loss_vs_kv.gp");
    gp << "set terminal pngcairo size 900,600 noenhanced\nset output 'loss_vs_kv.png'\n"
       << "set title 'validation loss against KV cache kept (line: best strategy per cache size)'\n"
       << "set xlabel 'KV cache kept (% of full)'\nset ylabel 'validation loss'\nset xrange [0:105]\nset grid\n"
       << "set key outside below\n";
    gp << "plot ";
    for (std::size_t i = 0; i < lines.size(); ++i)
      gp << (i ? ", \\\n     " : "") << "'loss_vs_kv.dat' index " << 2 * i << " using 1:2 with points pt 7 lc " << i + 1
         << " notitle, 'loss_vs_kv.dat' index " << 2 * i + 1 << " using 1:2 with lines lw 2 lc " << i + 1
         << " title " << gnuplot_string(lines[i].name);
    gp << "\n";
  }
  return run_gnuplot(dir, "loss_vs_kv.gp", "loss_vs_kv.png");
}

}  // namespace

std::string results_markdown(const std::vector<StrategyResult>& results, const EvalReportInfo& info) {
  std::ostringstream os;
  const EvalSpec& sp = info.spec;
  os << "validation: " << static_cast<long>(sp.batch_size) * sp.seq_len * sp.n_batches << " tokens per strategy ("
     << sp.n_batches << " batches of " << sp.batch_size << " x " << sp.seq_len << "), through the KV cache\n";
  if (sp.measure_speed)
    os << "speed (median of " << sp.bench.repeats << " runs, CPU threads " << info.threads << "): TTFT = prefill of "
       << sp.bench.prompt_len << " tokens + first token, batch 1; decode = " << sp.bench.decode_batch << " x "
       << sp.bench.decode_len << " tokens\n";
  os << "peak RSS: "
     << (info.peak_rss_is_per_row ? "VmHWM, reset before each row (weights, caches and scratch of that row)"
                                  : "process-wide VmHWM so far (the kernel refused a reset), so it only grows")
     << "\n";
  const bool has_probe =
      std::any_of(results.begin(), results.end(), [](const StrategyResult& r) { return r.probe_items > 0; });
  if (has_probe)
    os << "probe exact match: greedy decoding of the retrieval probe (probe.h) through the strategy's cache\n";
  for (const auto& [ckpt, rows] : by_checkpoint(results)) {
    const StrategyResult* base = baseline(rows);
    os << "\n### " << ckpt << " (step " << rows.front()->step << ")\n\n";
    os << "| strategy | source map | cache layers | KV kept | KV bytes/token | val loss | perplexity | loss vs "
       << base->strategy.name << " | TTFT ms | decode tok/s | peak RSS MiB |" << (has_probe ? " probe exact match |" : "") << "\n";
    os << "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" << (has_probe ? "---:|" : "") << "\n";
    for (const StrategyResult* r : rows) {
      char buf[512];
      std::snprintf(buf, sizeof buf, "| %s | %s | %d/%zu | %.1f%% | %zu | %.4f | %.3f | %+.2f%% | %s | %s | %.1f |\n",
                    r->strategy.name.c_str(), r->strategy.map_string().c_str(), r->strategy.n_cache_layers(),
                    r->strategy.src.size(), 100.0 * r->kv_fraction, r->kv_bytes_per_token, r->val_loss,
                    r->perplexity, 100.0 * (r->val_loss - base->val_loss) / base->val_loss,
                    sp.measure_speed ? fmt("%.2f", r->ttft_ms).c_str() : "-",
                    sp.measure_speed ? fmt("%.1f", r->decode_tokens_per_s).c_str() : "-", r->peak_rss_kib / 1024.0);
      std::string row = buf;
      if (has_probe) {
        row.pop_back();  // the newline
        row += (r->probe_items > 0 ? " " + fmt("%.3f", static_cast<double>(r->probe_correct) / r->probe_items) + " (" +
                                         std::to_string(r->probe_correct) + "/" + std::to_string(r->probe_items) + ") |"
                                   : std::string(" - |")) +
               "\n";
      }
      os << row;
    }
    if (!rows.front()->tasks.empty()) {
      // Downstream tasks: one row per strategy and task, the change against the baseline row.
      os << "\n| strategy | task | items | acc | acc vs " << base->strategy.name << " | acc_norm | mean loglik |\n";
      os << "|---|---|---:|---:|---:|---:|---:|\n";
      for (const StrategyResult* r : rows)
        for (std::size_t t = 0; t < r->tasks.size(); ++t) {
          const TaskScore& ts = r->tasks[t];
          const double base_acc = t < base->tasks.size() ? base->tasks[t].acc : ts.acc;
          os << "| " << r->strategy.name << " | " << ts.name << (ts.multiple_choice ? "" : " (exact match)") << " | "
             << ts.items << " | " << fmt("%.3f", ts.acc) << " | " << fmt("%+.3f", ts.acc - base_acc) << " | "
             << (ts.multiple_choice ? fmt("%.3f", ts.acc_norm) : std::string("-")) << " | " << fmt("%.3f", ts.mean_ll)
             << " |\n";
        }
    }
    for (const StrategyResult* r : rows)
      if (!r->greedy_path.empty())
        os << "\n" << r->strategy.name << " path: " << r->greedy_path << "; map list:" << r->strategy.map_string() << "\n";
  }
  return os.str();
}

std::string results_csv(const std::vector<StrategyResult>& results) {
  std::ostringstream os;
  os << "checkpoint,step,strategy,source_map,cache_layers,n_layers,kv_fraction,kv_bytes_per_token,"
        "full_kv_bytes_per_token,val_loss,perplexity,val_tokens,ttft_ms,decode_tokens_per_s,peak_rss_kib,greedy_path,probe_items,probe_exact_match\n";
  for (const StrategyResult& r : results)
    os << csv_field(r.checkpoint) << ',' << r.step << ',' << csv_field(r.strategy.name) << ','
       << csv_field(r.strategy.map_string()) << ',' << r.strategy.n_cache_layers() << ',' << r.strategy.src.size()
       << ',' << fmt("%.6f", r.kv_fraction) << ',' << r.kv_bytes_per_token << ',' << r.full_kv_bytes_per_token << ','
       << fmt("%.6f", r.val_loss) << ',' << fmt("%.6f", r.perplexity) << ',' << r.val_tokens << ','
       << fmt("%.4f", r.ttft_ms) << ',' << fmt("%.3f", r.decode_tokens_per_s) << ',' << r.peak_rss_kib << ','
       << csv_field(r.greedy_path) << ',' << r.probe_items << ','
       << (r.probe_items > 0 ? fmt("%.6f", static_cast<double>(r.probe_correct) / r.probe_items) : std::string()) << '\n';
  return os.str();
}

std::string results_json(const std::vector<StrategyResult>& results, const EvalReportInfo& info) {
  const EvalSpec& sp = info.spec;
  std::ostringstream os;
  os << "{\n  \"settings\": {\"batch_size\": " << sp.batch_size << ", \"seq_len\": " << sp.seq_len
     << ", \"val_batches\": " << sp.n_batches << ", \"measure_speed\": " << (sp.measure_speed ? "true" : "false")
     << ", \"prompt_len\": " << sp.bench.prompt_len << ", \"decode_batch\": " << sp.bench.decode_batch
     << ", \"decode_len\": " << sp.bench.decode_len << ", \"repeats\": " << sp.bench.repeats
     << ", \"threads\": " << info.threads << ", \"peak_rss_per_row\": " << (info.peak_rss_is_per_row ? "true" : "false")
     << "},\n  \"results\": [";
  for (std::size_t i = 0; i < results.size(); ++i) {
    const StrategyResult& r = results[i];
    os << (i ? "," : "") << "\n    {\"checkpoint\": " << json_string(r.checkpoint) << ", \"step\": " << r.step
       << ", \"strategy\": " << json_string(r.strategy.name) << ", \"source_map\": [";
    for (std::size_t l = 0; l < r.strategy.src.size(); ++l) os << (l ? ", " : "") << r.strategy.src[l];
    os << "], \"cache_layers\": " << r.strategy.n_cache_layers() << ", \"kv_fraction\": " << json_number(r.kv_fraction)
       << ", \"kv_bytes_per_token\": " << r.kv_bytes_per_token
       << ", \"full_kv_bytes_per_token\": " << r.full_kv_bytes_per_token << ", \"val_loss\": " << json_number(r.val_loss)
       << ", \"perplexity\": " << json_number(r.perplexity) << ", \"val_tokens\": " << r.val_tokens
       << ", \"ttft_ms\": " << (sp.measure_speed ? json_number(r.ttft_ms) : "null")
       << ", \"decode_tokens_per_s\": " << (sp.measure_speed ? json_number(r.decode_tokens_per_s) : "null")
       << ", \"peak_rss_kib\": " << r.peak_rss_kib;
    if (!r.greedy_path.empty()) os << ", \"greedy_path\": " << json_string(r.greedy_path);
    if (r.probe_items > 0)
      os << ", \"probe_items\": " << r.probe_items << ", \"probe_correct\": " << r.probe_correct
         << ", \"probe_exact_match\": " << json_number(static_cast<double>(r.probe_correct) / r.probe_items);
    if (!r.tasks.empty()) {
      os << ", \"tasks\": [";
      for (std::size_t t = 0; t < r.tasks.size(); ++t) {
        const TaskScore& ts = r.tasks[t];
        os << (t ? ", " : "") << "{\"task\": " << json_string(ts.name) << ", \"kind\": "
           << (ts.multiple_choice ? "\"multiple_choice\"" : "\"completion\"") << ", \"items\": " << ts.items
           << ", \"acc\": " << json_number(ts.acc)
           << ", \"acc_norm\": " << (ts.multiple_choice ? json_number(ts.acc_norm) : "null")
           << ", \"mean_loglikelihood\": " << json_number(ts.mean_ll) << "}";
      }
      os << "]";
    }
    os << "}";
  }
  os << "\n  ]\n}\n";
  return os.str();
}

std::string write_loss_plot(const std::vector<StrategyResult>& results, const std::string& dir,
                            const std::string& format) {
  if (format != "png" && format != "svg")
    throw std::invalid_argument("--plot-format must be png or svg (got '" + format + "')");
  if (format == "png") {
    const std::string png = write_gnuplot_png(results, dir);
    if (!png.empty()) return png;
  }
  return write_svg_plot(results, fs::path(dir) / "loss_vs_kv.svg");
}

std::vector<std::string> write_eval_outputs(const std::vector<StrategyResult>& results, const EvalReportInfo& info,
                                            const std::string& dir, const std::string& plot_format) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    throw std::runtime_error("--out '" + dir + "': cannot create the directory (" + ec.message() + ")");
  const fs::path d(dir);
  const std::string plot = write_loss_plot(results, dir, plot_format);
  auto write = [&](const char* name, const std::string& text) {
    const fs::path p = d / name;
    std::ofstream f(p);
    f << text;
    f.close();
    if (!f) throw std::runtime_error("cannot write '" + p.string() + "'");
    return p.string();
  };
  std::vector<std::string> paths;
  paths.push_back(write("results.md", "# KV sharing strategies\n\n" + results_markdown(results, info) + "\n![validation loss against KV cache kept](" +
                                         fs::path(plot).filename().string() + ")\n"));
  paths.push_back(write("results.csv", results_csv(results)));
  paths.push_back(write("results.json", results_json(results, info)));
  paths.push_back(plot);
  return paths;
}

}  // namespace kvroute
