// aectl: the aeserve command line. One binary, one subcommand per task; gRPC errors become a
// one-line message and a non-zero exit code.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <thread>

#include "CLI/CLI.hpp"
#include "aeserve/v1/scoring.grpc.pb.h"
#include "csv.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace {

using namespace aeserve;

struct Common {
  std::string server = "localhost:50051";
  double timeout = 30;
};

int Fail(const grpc::Status& st) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                                 "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                 "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                 "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int c = st.error_code();
  std::fprintf(stderr, "aectl: %s: %s\n", c >= 0 && c <= 16 ? kNames[c] : "ERROR",
               st.error_message().c_str());
  return 1;
}

int Fail(const absl::Status& st) {
  std::fprintf(stderr, "aectl: %s\n", st.ToString().c_str());
  return 1;
}

std::shared_ptr<grpc::Channel> Connect(const Common& c) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(256 << 20);
  return grpc::CreateCustomChannel(c.server, grpc::InsecureChannelCredentials(), args);
}

void Deadline(grpc::ClientContext& ctx, const Common& c) {
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(c.timeout * 1000)));
}

absl::StatusOr<engine::CsvTable> ReadInput(const std::string& path) {
  if (path == "-") return engine::ReadCsv(std::cin);
  return engine::ReadCsvFile(path);
}

// One result line in the chosen format.
void PrintRow(const std::string& format, size_t row, const std::string& id, float error,
              bool anomalous, float p_value, const v1::ScoreResponse& r, int i, uint32_t k,
              const std::vector<std::string>& names) {
  std::string top;
  for (uint32_t j = 0; j < k; ++j) {
    const uint32_t f = r.top_features(i * k + j);
    const std::string name = f < names.size() ? names[f] : std::to_string(f);
    char buf[128];
    if (format == "json") {
      std::snprintf(buf, sizeof buf, "%s{\"feature\":\"%s\",\"error\":%.6g}", j ? "," : "",
                    name.c_str(), r.top_feature_errors(i * k + j));
    } else {
      std::snprintf(buf, sizeof buf, "%s%s:%.6g", j ? ";" : "", name.c_str(),
                    r.top_feature_errors(i * k + j));
    }
    top += buf;
  }
  if (format == "json") {
    std::printf("{\"row\":%zu,\"id\":\"%s\",\"error\":%.8g,\"anomalous\":%s,\"p_value\":%.6g,\"top\":[%s]}\n",
                row, id.c_str(), error, anomalous ? "true" : "false", p_value, top.c_str());
  } else {
    std::printf("%zu,%s,%.8g,%d,%.6g,%s\n", row, id.c_str(), error, anomalous ? 1 : 0, p_value,
                top.c_str());
  }
}

void Summary(size_t scored, size_t anomalous, const engine::CsvTable& t,
             const std::vector<uint8_t>& flags, const std::string& model, uint64_t version,
             double threshold) {
  std::fprintf(stderr, "scored %zu samples, %zu anomalous (model %s version %llu, threshold %.6g)\n",
               scored, anomalous, model.c_str(), static_cast<unsigned long long>(version), threshold);
  if (t.labels.size() == flags.size() && !flags.empty()) {
    size_t tp = 0, fp = 0, fn = 0;
    for (size_t i = 0; i < flags.size(); ++i) {
      const bool truth = t.labels[i] != 0;
      tp += flags[i] && truth;
      fp += flags[i] && !truth;
      fn += !flags[i] && truth;
    }
    std::fprintf(stderr, "labels: %zu anomalies; precision %.3f, recall %.3f\n", tp + fn,
                 tp + fp ? double(tp) / (tp + fp) : 0.0, tp + fn ? double(tp) / (tp + fn) : 0.0);
  }
}

int Score(const Common& c, const std::string& model, uint64_t version, const std::string& path,
          const std::string& format, uint32_t top_k, uint32_t batch) {
  auto table = ReadInput(path);
  if (!table.ok()) return Fail(table.status());
  auto stub = v1::Scoring::NewStub(Connect(c));
  const size_t d = table->features();
  size_t anomalous = 0;
  std::vector<uint8_t> flags;
  v1::ScoreResponse last;
  for (size_t start = 0; start < table->rows; start += batch) {
    const size_t n = std::min<size_t>(batch, table->rows - start);
    v1::ScoreRequest req;
    req.set_model(model);
    req.set_version(version);
    req.mutable_options()->set_top_k(top_k);
    req.mutable_samples()->set_num_features(static_cast<uint32_t>(d));
    req.mutable_samples()->mutable_values()->Add(table->values.begin() + start * d,
                                                 table->values.begin() + (start + n) * d);
    grpc::ClientContext ctx;
    Deadline(ctx, c);
    grpc::Status st = stub->Score(&ctx, req, &last);
    if (!st.ok()) return Fail(st);
    if (start == 0 && format == "csv") std::printf("row,id,error,anomalous,p_value,top_features\n");
    for (int i = 0; i < last.errors_size(); ++i) {
      const size_t row = start + i;
      PrintRow(format, row, table->ids.empty() ? "" : table->ids[row], last.errors(i),
               last.anomalous(i), last.p_values(i), last, i, top_k, table->feature_names);
      flags.push_back(last.anomalous(i));
    }
    anomalous += last.num_anomalies();
  }
  Summary(table->rows, anomalous, *table, flags, model, last.version(), last.threshold());
  return 0;
}

int Stream(const Common& c, const std::string& model, const std::string& path, double rate,
           uint32_t batch, uint32_t top_k, double stats_every, uint32_t debounce_k,
           uint32_t debounce_n) {
  auto table = ReadInput(path);
  if (!table.ok()) return Fail(table.status());
  auto stub = v1::Scoring::NewStub(Connect(c));
  grpc::ClientContext ctx;
  auto stream = stub->StreamScore(&ctx);
  const size_t d = table->features();
  const auto& t = *table;
  std::thread writer([&] {
    const auto start = std::chrono::steady_clock::now();
    uint64_t seq = 0;
    for (size_t row = 0; row < t.rows; row += batch, ++seq) {
      const size_t n = std::min<size_t>(batch, t.rows - row);
      if (rate > 0) {  // pace: row `row` is due at row / rate seconds
        std::this_thread::sleep_until(start + std::chrono::duration<double>(row / rate));
      }
      v1::StreamScoreRequest req;
      if (seq == 0) {
        v1::StreamConfig* cfg = req.mutable_config();
        cfg->set_model(model);
        cfg->mutable_options()->set_top_k(top_k);
        cfg->set_stats_every_seconds(stats_every);
        cfg->set_debounce_k(debounce_k);
        cfg->set_debounce_n(debounce_n);
      }
      req.set_sequence(row);  // the sequence number is the first row of the batch
      req.mutable_samples()->set_num_features(static_cast<uint32_t>(d));
      req.mutable_samples()->mutable_values()->Add(t.values.begin() + row * d,
                                                   t.values.begin() + (row + n) * d);
      if (!t.ids.empty()) {
        for (size_t i = row; i < row + n; ++i) req.mutable_samples()->add_ids(t.ids[i]);
      }
      if (!stream->Write(req)) break;
    }
    stream->WritesDone();
  });
  v1::StreamScoreResponse r;
  size_t scored = 0, anomalous = 0, errors = 0;
  std::vector<uint8_t> flags;
  uint64_t version = 0;
  double threshold = 0;
  std::printf("row,id,error,anomalous,p_value,top_features\n");
  while (stream->Read(&r)) {
    if (r.has_error()) {
      ++errors;
      std::fprintf(stderr, "batch at row %llu: error %d: %s\n",
                   static_cast<unsigned long long>(r.sequence()), r.error().code(),
                   r.error().message().c_str());
    } else if (r.has_stats()) {
      const auto& s = r.stats();
      std::fprintf(stderr,
                   "stats: %llu samples in %.1f s, %llu anomalous (%.2f%%), error mean %.4g p50 "
                   "%.4g p99 %.4g; total %llu\n",
                   static_cast<unsigned long long>(s.samples()), s.window_seconds(),
                   static_cast<unsigned long long>(s.anomalies()), 100 * s.anomaly_rate(),
                   s.error_mean(), s.error_p50(), s.error_p99(),
                   static_cast<unsigned long long>(s.total_samples()));
    } else {
      const auto& res = r.result();
      version = res.version();
      threshold = res.threshold();
      for (int i = 0; i < res.errors_size(); ++i) {
        const size_t row = r.sequence() + i;
        flags.push_back(res.anomalous(i));
        if (res.anomalous(i)) {
          PrintRow("csv", row, t.ids.empty() ? "" : t.ids[row], res.errors(i), true,
                   res.p_values(i), res, i, top_k, t.feature_names);
        }
      }
      scored += res.num_samples();
      anomalous += res.num_anomalies();
    }
  }
  writer.join();
  grpc::Status st = stream->Finish();
  if (!st.ok()) return Fail(st);
  Summary(scored, anomalous, t, flags, model, version, threshold);
  return errors == 0 ? 0 : 1;
}

int Models(const Common& c) {
  auto stub = v1::Scoring::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::ListModelsResponse resp;
  grpc::Status st = stub->ListModels(&ctx, v1::ListModelsRequest(), &resp);
  if (!st.ok()) return Fail(st);
  std::printf("%-24s %-12s %7s %9s %9s %-12s %s\n", "MODEL", "STATE", "ACTIVE", "VERSIONS",
              "FEATURES", "KIND", "THRESHOLD");
  for (const auto& m : resp.models()) {
    std::string kind = v1::ModelKind_Name(m.spec().kind());
    if (kind.rfind("MODEL_KIND_", 0) == 0) kind = kind.substr(11);
    std::string state = v1::ModelState_Name(m.state()).substr(12);
    std::printf("%-24s %-12s %7llu %9d %9u %-12s %.6g\n", m.name().c_str(), state.c_str(),
                static_cast<unsigned long long>(m.active_version()), m.versions_size(),
                m.num_features(), m.state() == v1::MODEL_STATE_READY ? kind.c_str() : "-",
                m.threshold_value());
    if (!m.error().empty()) std::printf("  error: %s\n", m.error().c_str());
  }
  return 0;
}

int Model(const Common& c, const std::string& name) {
  auto stub = v1::Scoring::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::GetModelRequest req;
  req.set_model(name);
  v1::ModelInfo m;
  grpc::Status st = stub->GetModel(&ctx, req, &m);
  if (!st.ok()) return Fail(st);
  m.mutable_history()->clear_epochs();  // summarised below instead
  std::printf("%s", m.DebugString().c_str());
  return 0;
}

int Health(const Common& c) {
  auto stub = grpc::health::v1::Health::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status st = stub->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &resp);
  if (!st.ok()) return Fail(st);
  std::printf("%s\n", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()).c_str());
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"aectl: the aeserve command line"};
  app.require_subcommand(1);
  Common c;
  app.add_option("--server", c.server, "aeserve address host:port")->capture_default_str();
  app.add_option("--timeout", c.timeout, "deadline of each call in seconds")->capture_default_str();

  std::string model, path = "-", format = "csv";
  uint64_t version = 0;
  uint32_t top_k = 3, batch = 4096, stream_batch = 100, debounce_k = 0, debounce_n = 0;
  double rate = 0, stats_every = 5;

  auto* score = app.add_subcommand("score", "score a CSV file (or stdin) and print one line per row");
  score->add_option("--model", model, "model name")->required();
  score->add_option("--version", version, "model version (default: active)");
  score->add_option("--format", format, "csv or json (JSON lines)")
      ->check(CLI::IsMember({"csv", "json"}))->capture_default_str();
  score->add_option("--top-k", top_k, "top contributing features per row")->capture_default_str();
  score->add_option("--batch", batch, "rows per request")->check(CLI::Range(1u, 1u << 20))->capture_default_str();
  score->add_option("file", path, "CSV with a header of feature names; '-' reads stdin");

  auto* stream = app.add_subcommand("stream", "replay a CSV as live telemetry over StreamScore");
  stream->add_option("--model", model, "model name")->required();
  stream->add_option("--rate", rate, "samples per second; 0 = as fast as possible")->capture_default_str();
  stream->add_option("--batch", stream_batch, "rows per stream message")->check(CLI::Range(1u, 1u << 20))->capture_default_str();
  stream->add_option("--top-k", top_k, "top contributing features per flagged row")->capture_default_str();
  stream->add_option("--stats-every", stats_every, "seconds between stats lines")->capture_default_str();
  stream->add_option("--debounce-k", debounce_k, "alarm when k of the last n samples are anomalous");
  stream->add_option("--debounce-n", debounce_n, "window of the alarm debounce");
  stream->add_option("file", path, "CSV with a header of feature names; '-' reads stdin");

  auto* models = app.add_subcommand("models", "list the hosted models");
  auto* model_cmd = app.add_subcommand("model", "show one model: spec, threshold, training");
  model_cmd->add_option("name", model, "model name")->required();
  auto* health = app.add_subcommand("health", "check the server's health (exit 0 when SERVING)");

  CLI11_PARSE(app, argc, argv);
  if (score->parsed()) return Score(c, model, version, path, format, top_k, batch);
  if (stream->parsed()) {
    return Stream(c, model, path, rate, stream_batch, top_k, stats_every, debounce_k, debounce_n);
  }
  if (models->parsed()) return Models(c);
  if (model_cmd->parsed()) return Model(c, model);
  if (health->parsed()) return Health(c);
  return 2;
}
