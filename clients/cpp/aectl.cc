// aectl: the aeserve command line. One binary, one subcommand per task; gRPC errors become a
// one-line message and a non-zero exit code.
#include <arpa/inet.h>
#include <netdb.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "aeserve/v1/admin.grpc.pb.h"
#include "aeserve/v1/scoring.grpc.pb.h"
#include "clients/cpp/json_writer.h"
#include "engine/csv.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace {

using namespace aeserve;

struct Common {
  std::string server = "localhost:50051";
  double timeout = 30;
  std::string token;                      // bearer token (or $AESERVE_TOKEN)
  std::string tls_ca, tls_cert, tls_key;  // TLS: CA bundle; client certificate for mTLS
  std::string lb_policy;                  // gRPC load-balancing policy (round_robin, pick_first)
  std::vector<std::string> channel_args;  // more gRPC channel arguments, key=value
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int Fail(const grpc::Status& st) {
  const int c = st.error_code();
  std::fprintf(stderr, "aectl: %s: %s\n",
               absl::StatusCodeToString(static_cast<absl::StatusCode>(c)).c_str(),
               st.error_message().c_str());
  const std::string& m = st.error_message();
  if (c == grpc::StatusCode::UNAVAILABLE &&
      (m.find("Socket closed") != std::string::npos || m.find("ssl") != std::string::npos ||
       m.find("SSL") != std::string::npos || m.find("handshake") != std::string::npos)) {
    std::fprintf(stderr,
                 "aectl: hint: the server closed the connection while it was being set up: "
                 "most often a TLS mismatch (a plaintext client and a TLS server or the "
                 "reverse, or a client certificate the server does not accept); check "
                 "--tls-ca, --tls-cert and --tls-key\n");
  }
  return 1;
}

int Fail(const absl::Status& st) {
  std::fprintf(stderr, "aectl: %s\n", st.ToString().c_str());
  return 1;
}

// A channel to `target` (default: --server) with the common options.
std::shared_ptr<grpc::Channel> Connect(const Common& c, const std::string& target = "") {
  const std::string& server = target.empty() ? c.server : target;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(256 << 20);
  if (!c.lb_policy.empty()) args.SetLoadBalancingPolicyName(c.lb_policy);
  for (const std::string& kv : c.channel_args) {
    const size_t eq = kv.find('=');
    const std::string key = kv.substr(0, eq), value = kv.substr(eq + 1);
    int number = 0;
    if (absl::SimpleAtoi(value, &number)) {
      args.SetInt(key, number);
    } else {
      args.SetString(key, value);
    }
  }
  if (c.tls_ca.empty()) {
    return grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args);
  }
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFile(c.tls_ca);
  if (ssl.pem_root_certs.find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
    std::fprintf(stderr, "aectl: --tls-ca %s holds no PEM certificate\n", c.tls_ca.c_str());
    std::exit(2);
  }
  if (!c.tls_cert.empty()) {
    ssl.pem_cert_chain = ReadFile(c.tls_cert);
    ssl.pem_private_key = ReadFile(c.tls_key);
  }
  return grpc::CreateCustomChannel(server, grpc::SslCredentials(ssl), args);
}

// The replicas `server` names: a comma-separated list of addresses, or "dns:///host:port" resolved
// to every address it has now (a Kubernetes headless service: one per pod); else itself.
std::vector<std::string> Replicas(const std::string& server) {
  if (server.find(',') != std::string::npos) {
    return absl::StrSplit(server, ',', absl::SkipEmpty());
  }
  constexpr absl::string_view kDns = "dns:///";
  if (!absl::StartsWith(server, kDns)) return {server};
  const std::string hostport(server.substr(kDns.size()));
  const size_t colon = hostport.rfind(':');
  const std::string host = hostport.substr(0, colon);
  const std::string port = colon == std::string::npos ? "50051" : hostport.substr(colon + 1);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0) return {server};
  std::vector<std::string> out;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char ip[INET6_ADDRSTRLEN] = {};
    const void* addr =
        a->ai_family == AF_INET6
            ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr)
            : &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr;
    if (inet_ntop(a->ai_family, addr, ip, sizeof ip) == nullptr) continue;
    const std::string target =
        a->ai_family == AF_INET6 ? absl::StrCat("[", ip, "]:", port) : absl::StrCat(ip, ":", port);
    if (std::find(out.begin(), out.end(), target) == out.end()) out.push_back(target);
  }
  freeaddrinfo(found);
  return out.empty() ? std::vector<std::string>{server} : out;
}

// Token metadata, and a deadline unless `deadline` is false (long streams).
void Deadline(grpc::ClientContext& ctx, const Common& c, bool deadline = true) {
  if (!c.token.empty()) ctx.AddMetadata("authorization", "Bearer " + c.token);
  if (deadline) {
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(c.timeout * 1000)));
  }
}

// `text_column`: a column kept as text (the entity column of bulk entity training).
absl::StatusOr<engine::CsvTable> ReadInput(const std::string& path,
                                           const std::string& text_column = "") {
  if (path == "-") {
    if (isatty(0)) {  // a forgotten file argument: say what is happening
      std::fprintf(stderr, "aectl: reading CSV from stdin (end with Ctrl-D; or give a file)\n");
    }
    return engine::ReadCsv(std::cin, text_column);
  }
  return engine::ReadCsvFile(path, text_column);
}

// The anomaly score of sample i (servers before scores existed: its error).
float ScoreOf(const v1::ScoreResponse& r, int i) {
  return r.scores_size() > i ? r.scores(i) : r.errors(i);
}

// A response message as one JSON document on one line, with the API's field names.
int PrintJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(m, &out, o).ok()) {
    std::fprintf(stderr, "aectl: could not print the answer as JSON\n");
    return 1;
  }
  std::printf("%s\n", out.c_str());
  return 0;
}

// One result line in the chosen format.
void PrintRow(const std::string& format, size_t row, const std::string& id, float error,
              float score, bool anomalous, float p_value, const v1::ScoreResponse& r, int i,
              uint32_t k, const std::vector<std::string>& names) {
  if (r.warming_up_size() > i && r.warming_up(i)) k = 0;  // not scored: no top features
  // The server's names (the model's features); older servers: the CSV's header by position.
  auto name_of = [&](uint32_t j) {
    const uint32_t f = r.top_features(i * k + j);
    return r.top_feature_names_size() > static_cast<int>(i * k + j)
               ? r.top_feature_names(i * k + j)
               : (f < names.size() ? names[f] : std::to_string(f));
  };
  if (format == "json") {
    aectl::JsonWriter w;
    w.BeginObject().Key("row").Int(row).Key("id").String(id);
    w.Key("error").Number(error).Key("score").Number(score).Key("anomalous").Bool(anomalous);
    w.Key("p_value").Number(p_value, 6);
    if (r.severity_size() > i) w.Key("severity").Int(r.severity(i));
    if (r.missing_size() > i) w.Key("missing").Int(r.missing(i));
    if (r.skipped_size() > i) w.Key("skipped").Bool(r.skipped(i));
    if (r.warming_up_size() > i) w.Key("warming_up").Bool(r.warming_up(i));
    w.Key("top_features").BeginArray();
    for (uint32_t j = 0; j < k; ++j) {
      w.BeginObject().Key("feature").String(name_of(j)).Key("index").Int(r.top_features(i * k + j));
      w.Key("error").Number(r.top_feature_errors(i * k + j), 6).EndObject();
    }
    w.EndArray().EndObject();
    std::printf("%s\n", w.str().c_str());
    return;
  }
  std::string top;
  for (uint32_t j = 0; j < k; ++j) {
    char buf[32];
    std::snprintf(buf, sizeof buf, ":%.6g", r.top_feature_errors(i * k + j));
    absl::StrAppend(&top, j ? ";" : "", name_of(j), buf);
  }
  std::printf("%zu,%s,%.8g,%.8g,%d,%.6g,%s\n", row, id.c_str(), error, score, anomalous ? 1 : 0,
              p_value, top.c_str());
}

void Summary(size_t scored, size_t anomalous, const engine::CsvTable& t,
             const std::vector<uint8_t>& flags, const std::string& model, uint64_t version,
             double threshold) {
  std::fprintf(
      stderr, "scored %zu samples, %zu anomalous (model %s version %llu, threshold %.6g)\n", scored,
      anomalous, model.c_str(), static_cast<unsigned long long>(version), threshold);
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

// How CSV columns reach the model: by their header names (default), or by position.
struct Columns {
  bool positional = false;    // send no names: the model's features in the CSV's column order
  bool ignore_extra = false;  // drop columns the model does not know
};

// The CSV header as the request's column names.
void NameColumns(const engine::CsvTable& t, const Columns& cols,
                 google::protobuf::RepeatedPtrField<std::string>* names, bool* ignore_unknown) {
  if (cols.positional) return;
  for (const auto& n : t.feature_names) *names->Add() = n;
  *ignore_unknown = cols.ignore_extra;
}

// The rows' times (a `timestamp` column of times): series models need them.
void AddTimes(const engine::CsvTable& t, size_t start, size_t n, v1::Samples* s) {
  if (t.timestamps_ms.empty()) return;
  s->mutable_timestamps_ms()->Add(t.timestamps_ms.begin() + start,
                                  t.timestamps_ms.begin() + start + n);
}

// When the server asked for timestamps the file did not give: say why.
void TimesHint(const std::string& message, const engine::CsvTable& t) {
  if (message.find("timestamp") == std::string::npos || !t.timestamps_ms.empty()) return;
  std::fprintf(stderr, "aectl: %s\n",
               t.timestamp_problem.empty() ? "the file has no 'timestamp' column (ISO 8601 like "
                                             "2024-01-31 14:05:00, or Unix seconds)"
                                           : t.timestamp_problem.c_str());
}

int FailWithTimes(const grpc::Status& st, const engine::CsvTable& t) {
  const int code = Fail(st);
  TimesHint(st.error_message(), t);
  return code;
}

// Missing values and skipped samples, counted over what was scored.
struct GapCount {
  size_t missing_rows = 0, skipped = 0, warming = 0;
  // Counts samples `from` on (earlier ones were counted with another answer).
  void Add(const v1::ScoreResponse& r, int from = 0) {
    for (int i = from; i < r.missing_size(); ++i) missing_rows += r.missing(i) > 0;
    for (int i = from; i < r.skipped_size(); ++i) skipped += r.skipped(i);
    for (int i = from; i < r.warming_up_size(); ++i) warming += r.warming_up(i);
  }
  void Print() const {
    if (warming > 0) {
      std::fprintf(stderr,
                   "%zu rows were warming up (not scored: the model's window was filling)\n",
                   warming);
    }
    if (missing_rows == 0) return;
    std::fprintf(stderr, "%zu samples had missing values (filled in by the model)", missing_rows);
    if (skipped) std::fprintf(stderr, "; %zu missed too many features and were skipped", skipped);
    std::fprintf(stderr, "\n");
  }
};

// An alarm raised or cleared (stream rows are the stream's sample numbers).
void PrintIncident(const v1::Incident& inc, size_t* count) {
  std::string top;
  for (const auto& f : inc.worst_top_features()) absl::StrAppend(&top, top.empty() ? "" : ";", f);
  if (inc.state() == v1::INCIDENT_OPENED) {
    ++*count;
    std::fprintf(stderr, "alarm raised at row %llu (incident %s, score %.6g%s%s)\n",
                 static_cast<unsigned long long>(inc.first_sample()), inc.id().c_str(),
                 inc.worst_score(), top.empty() ? "" : ", top ", top.c_str());
  } else if (inc.state() == v1::INCIDENT_CLOSED) {
    std::fprintf(stderr,
                 "alarm cleared: rows %llu-%llu, %llu flagged, worst row %llu (score %.6g%s%s)\n",
                 static_cast<unsigned long long>(inc.first_sample()),
                 static_cast<unsigned long long>(inc.last_sample()),
                 static_cast<unsigned long long>(inc.anomalous_samples()),
                 static_cast<unsigned long long>(inc.worst_sample()), inc.worst_score(),
                 top.empty() ? "" : ", top ", top.c_str());
  }
}

// What a score or stream call scores with: a model, optionally one entity's model and a version.
struct Target {
  std::string model, entity;
  uint64_t version = 0;  // 0 = the active one (at each batch, for a stream)
};

int Score(const Common& c, const Target& target, const std::string& path, const std::string& format,
          uint32_t top_k, uint32_t batch, const Columns& cols) {
  auto table = ReadInput(path);
  if (!table.ok()) return Fail(table.status());
  auto stub = v1::Scoring::NewStub(Connect(c));
  const size_t d = table->features();
  // A series model makes each call a series of its own: every call after the first repeats the
  // `overlap` rows before it, so that its window is full at its first new row.
  size_t overlap = 0;
  if (!table->timestamps_ms.empty()) {
    grpc::ClientContext ctx;
    Deadline(ctx, c);
    v1::GetModelRequest get;
    get.set_model(target.model);
    get.set_entity(target.entity);
    v1::ModelInfo info;
    if (stub->GetModel(&ctx, get, &info).ok() && info.spec().window().length() > 1) {
      overlap = info.spec().window().length() - 1;  // the active version's (the usual case)
    }
  }
  size_t anomalous = 0;
  std::vector<uint8_t> flags;
  v1::ScoreResponse last;
  GapCount gaps;
  for (size_t start = 0; start < table->rows; start += batch) {
    const size_t from = start - std::min(start, overlap);  // rows sent again, for the window
    const size_t n = std::min<size_t>(batch, table->rows - start) + (start - from);
    v1::ScoreRequest req;
    req.set_model(target.model);
    req.set_entity(target.entity);
    req.set_version(target.version);
    req.mutable_options()->set_top_k(top_k);
    req.mutable_options()->set_top_feature_names(true);
    req.mutable_samples()->set_num_features(static_cast<uint32_t>(d));
    bool ignore = false;
    NameColumns(*table, cols, req.mutable_samples()->mutable_feature_names(), &ignore);
    req.mutable_samples()->set_ignore_unknown_features(ignore);
    req.mutable_samples()->mutable_values()->Add(table->values.begin() + from * d,
                                                 table->values.begin() + (from + n) * d);
    AddTimes(*table, from, n, req.mutable_samples());
    grpc::ClientContext ctx;
    Deadline(ctx, c);
    grpc::Status st = stub->Score(&ctx, req, &last);
    if (!st.ok()) return FailWithTimes(st, *table);
    if (start == 0 && format == "csv")
      std::printf("row,id,error,score,anomalous,p_value,top_features\n");
    const int first = static_cast<int>(start - from);  // answers for rows printed before
    for (int i = first; i < last.errors_size(); ++i) {
      const size_t row = from + i;
      PrintRow(format, row, table->ids.empty() ? "" : table->ids[row], last.errors(i),
               ScoreOf(last, i), last.anomalous(i), last.p_values(i), last, i, top_k,
               table->feature_names);
      flags.push_back(last.anomalous(i));
      anomalous += last.anomalous(i);
    }
    gaps.Add(last, first);
  }
  Summary(table->rows, anomalous, *table, flags, target.model, last.version(), last.threshold());
  gaps.Print();
  return 0;
}

int Stream(const Common& c, const Target& target, const std::string& path, double rate,
           uint32_t batch, uint32_t top_k, double stats_every, uint32_t debounce_k,
           uint32_t debounce_n, const Columns& cols, const std::string& stream_id) {
  auto table = ReadInput(path);
  if (!table.ok()) return Fail(table.status());
  auto stub = v1::Scoring::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c, false);
  auto stream = stub->StreamScore(&ctx);
  const size_t d = table->features();
  const auto& t = *table;
  std::atomic<bool> stop{false};  // set when the stream fails: the writer ends within 50 ms
  std::thread writer([&] {
    const auto start = std::chrono::steady_clock::now();
    uint64_t seq = 0;
    for (size_t row = 0; row < t.rows && !stop; row += batch, ++seq) {
      const size_t n = std::min<size_t>(batch, t.rows - row);
      if (rate > 0) {  // pace: row `row` is due at row / rate seconds
        const auto due = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                     std::chrono::duration<double>(row / rate));
        while (!stop && std::chrono::steady_clock::now() < due) {
          std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
              due - std::chrono::steady_clock::now(), std::chrono::milliseconds(50)));
        }
      }
      v1::StreamScoreRequest req;
      if (seq == 0) {
        v1::StreamConfig* cfg = req.mutable_config();
        cfg->set_model(target.model);
        cfg->set_entity(target.entity);
        cfg->set_version(target.version);
        cfg->mutable_options()->set_top_k(top_k);
        cfg->mutable_options()->set_top_feature_names(true);
        bool ignore = false;
        NameColumns(t, cols, cfg->mutable_feature_names(), &ignore);
        cfg->set_ignore_unknown_features(ignore);
        cfg->set_stats_every_seconds(stats_every);
        cfg->set_debounce_k(debounce_k);
        cfg->set_debounce_n(debounce_n);
        cfg->set_stream_id(stream_id);
      }
      req.set_sequence(row);  // the sequence number is the first row of the batch
      req.mutable_samples()->set_num_features(static_cast<uint32_t>(d));
      req.mutable_samples()->mutable_values()->Add(t.values.begin() + row * d,
                                                   t.values.begin() + (row + n) * d);
      // The rows' ids, or their row numbers, so that anomaly events (aectl watch) name the row.
      for (size_t i = row; i < row + n; ++i) {
        req.mutable_samples()->add_ids(t.ids.empty() ? std::to_string(i) : t.ids[i]);
      }
      AddTimes(t, row, n, req.mutable_samples());
      if (!stream->Write(req)) break;
    }
    stream->WritesDone();
  });
  v1::StreamScoreResponse r;
  size_t scored = 0, anomalous = 0, errors = 0, incidents = 0, stats_lines = 0;
  std::vector<float> errors_seen;  // scored samples' errors, for a final stats line
  const auto began = std::chrono::steady_clock::now();
  GapCount gaps;
  std::vector<uint8_t> flags;
  uint64_t version = 0;
  double threshold = 0;
  std::printf("row,id,error,score,anomalous,p_value,top_features\n");
  bool answered = false;
  while (stream->Read(&r)) {
    if (r.has_error() && !answered &&
        r.error().code() == static_cast<int>(grpc::StatusCode::NOT_FOUND)) {
      // An unknown model or version fails every batch: stop at the first.
      std::fprintf(stderr, "aectl: NOT_FOUND: %s\n", r.error().message().c_str());
      stop = true;
      ctx.TryCancel();
      while (stream->Read(&r)) {
      }
      writer.join();
      stream->Finish();
      return 1;
    }
    answered = answered || r.has_result();
    if (r.has_error()) {
      ++errors;
      std::fprintf(stderr, "batch at row %llu: error %d: %s\n",
                   static_cast<unsigned long long>(r.sequence()), r.error().code(),
                   r.error().message().c_str());
      if (errors == 1) TimesHint(r.error().message(), t);
    } else if (r.has_stats()) {
      ++stats_lines;
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
      for (float e : res.errors()) {
        if (std::isfinite(e)) errors_seen.push_back(e);  // for a final stats line
      }
      for (int i = 0; i < res.errors_size(); ++i) {
        const size_t row = r.sequence() + i;
        flags.push_back(res.anomalous(i));
        if (res.anomalous(i)) {
          PrintRow("csv", row, t.ids.empty() ? "" : t.ids[row], res.errors(i), ScoreOf(res, i),
                   true, res.p_values(i), res, i, top_k, t.feature_names);
        }
      }
      scored += res.num_samples();
      anomalous += res.num_anomalies();
      gaps.Add(res);
      for (const auto& inc : res.incidents()) PrintIncident(inc, &incidents);
    }
  }
  writer.join();
  grpc::Status st = stream->Finish();
  if (!st.ok()) return Fail(st);
  if (stats_every > 0 && stats_lines == 0 && !errors_seen.empty()) {
    // The replay ended before the first --stats-every: one line over the whole replay instead.
    std::sort(errors_seen.begin(), errors_seen.end());
    double mean = 0;
    for (float e : errors_seen) mean += e;
    mean /= static_cast<double>(errors_seen.size());
    auto q = [&](double p) {
      return errors_seen[std::min(errors_seen.size() - 1,
                                  static_cast<size_t>(p * errors_seen.size()))];
    };
    std::fprintf(
        stderr,
        "stats: %zu samples in %.1f s (the whole replay, shorter than --stats-every), %zu "
        "anomalous (%.2f%%), error mean %.4g p50 %.4g p99 %.4g\n",
        scored, std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count(),
        anomalous,
        scored ? 100.0 * static_cast<double>(anomalous) / static_cast<double>(scored) : 0.0, mean,
        q(0.5), q(0.99));
  }
  Summary(scored, anomalous, t, flags, target.model, version, threshold);
  gaps.Print();
  if (debounce_k > 0) {
    std::fprintf(stderr, "%zu incidents (alarm: %u of the last %u samples flagged)\n", incidents,
                 debounce_k, debounce_n);
  }
  return errors == 0 ? 0 : 1;
}

int Models(const Common& c, const std::string& format) {
  auto stub = v1::Scoring::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::ListModelsResponse resp;
  grpc::Status st = stub->ListModels(&ctx, v1::ListModelsRequest(), &resp);
  if (!st.ok()) return Fail(st);
  if (format == "json") return PrintJson(resp);
  std::printf("%-24s %-12s %7s %9s %9s %-12s %s\n", "MODEL", "STATE", "ACTIVE", "VERSIONS",
              "FEATURES", "KIND", "THRESHOLD");
  for (const auto& m : resp.models()) {
    std::string kind = v1::ModelKind_Name(m.spec().kind());
    if (kind.rfind("MODEL_KIND_", 0) == 0) kind = kind.substr(11);
    std::string state = v1::ModelState_Name(m.state()).substr(12);
    const std::string name = m.entity().empty() ? m.name() : m.name() + "/" + m.entity();
    std::printf("%-24s %-12s %7llu %9d %9u %-12s %.6g\n", name.c_str(), state.c_str(),
                static_cast<unsigned long long>(m.active_version()), m.versions_size(),
                m.num_features(), m.state() == v1::MODEL_STATE_READY ? kind.c_str() : "-",
                m.threshold_value());
    if (!m.error().empty()) std::printf("  error: %s\n", m.error().c_str());
  }
  return 0;
}

int Model(const Common& c, const std::string& name, const std::string& format) {
  auto stub = v1::Scoring::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::GetModelRequest req;
  req.set_model(name);
  v1::ModelInfo m;
  grpc::Status st = stub->GetModel(&ctx, req, &m);
  if (!st.ok()) return Fail(st);
  if (format == "json") return PrintJson(m);
  m.mutable_history()->clear_epochs();  // summarised below instead
  std::printf("%s", m.DebugString().c_str());
  return 0;
}

// Prints the anomaly feed until `count` events (0 = no limit) or `seconds` (0 = no limit) pass.
// One line of `aectl watch`: a flagged sample.
void PrintAnomalyEvent(const v1::AnomalyEvent& e) {
  std::string top;
  for (int j = 0; j < e.top_features_size(); ++j) {
    const std::string name =
        j < e.top_feature_names_size() ? e.top_feature_names(j) : std::to_string(e.top_features(j));
    top += (j ? ";" : "") + name + ":" + std::to_string(e.top_feature_errors(j));
  }
  std::printf("%lld,%s,%llu,%s,%s,%s,%lld,%.8g,%.8g,%.6g,%u,%s\n",
              static_cast<long long>(e.server_time_ms()), e.model().c_str(),
              static_cast<unsigned long long>(e.version()),
              // the entity the row came from (ingest, or a call naming one), else the model's
              (e.source_entity().empty() ? e.entity() : e.source_entity()).c_str(),
              e.stream_id().c_str(), e.sample_id().c_str(),
              static_cast<long long>(e.timestamp_ms()), e.error(), e.threshold(), e.p_value(),
              e.severity(), top.c_str());
}

// One line of `aectl watch --incidents`: an incident's change.
void PrintIncidentEvent(const v1::AnomalyEvent& e) {
  const v1::Incident& inc = e.incident();
  const char* state = inc.state() == v1::INCIDENT_OPENED   ? "opened"
                      : inc.state() == v1::INCIDENT_CLOSED ? "closed"
                                                           : "updated";
  std::printf("%lld,%s,%s,%s,%s,%s,%lld,%lld,%llu,%.8g,%u,%s\n",
              static_cast<long long>(e.server_time_ms()), state, inc.id().c_str(),
              inc.model().c_str(), inc.entity().c_str(), inc.stream_id().c_str(),
              static_cast<long long>(inc.first_timestamp_ms()),
              static_cast<long long>(inc.last_timestamp_ms()),
              static_cast<unsigned long long>(inc.anomalous_samples()), inc.worst_score(),
              inc.worst_severity(), absl::StrJoin(inc.worst_top_features(), ";").c_str());
}

// The anomaly feed of every replica --server names (Replicas), merged: one stream each, events
// printed as they come from any of them.
int Watch(const Common& c, const std::string& model, uint32_t min_severity, uint64_t count,
          double seconds, bool incidents) {
  const std::vector<std::string> replicas = Replicas(c.server);
  v1::WatchAnomaliesRequest req;
  req.set_model(model);
  req.set_min_severity(min_severity);
  req.set_incidents(incidents);
  struct Feed {
    std::unique_ptr<v1::Scoring::Stub> stub;
    grpc::ClientContext ctx;
  };
  std::vector<std::unique_ptr<Feed>> feeds;
  for (const std::string& target : replicas) {
    auto f = std::make_unique<Feed>();
    f->stub = v1::Scoring::NewStub(Connect(c, target));
    Deadline(f->ctx, c, false);
    if (seconds > 0) {
      f->ctx.set_deadline(std::chrono::system_clock::now() +
                          std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
    }
    feeds.push_back(std::move(f));
  }
  if (incidents) {
    std::printf(
        "server_time_ms,state,incident_id,model,entity,stream_id,first_timestamp_ms,last_"
        "timestamp_ms,anomalous_samples,worst_score,worst_severity,worst_top_features\n");
  } else {
    std::printf(
        "server_time_ms,model,version,entity,stream_id,sample_id,timestamp_ms,error,threshold,p_"
        "value,severity,top_features\n");
  }
  std::fflush(stdout);
  std::mutex print_mu;
  uint64_t seen = 0;
  std::atomic<int> failed{0};
  auto read = [&](size_t i) {
    Feed& f = *feeds[i];
    auto reader = f.stub->WatchAnomalies(&f.ctx, req);
    v1::AnomalyEvent e;
    while (reader->Read(&e)) {
      std::lock_guard lock(print_mu);
      if (count > 0 && seen >= count) break;
      if (e.dropped_before() > 0) {
        std::fprintf(stderr, "aectl: %llu events dropped (this watcher fell behind)\n",
                     static_cast<unsigned long long>(e.dropped_before()));
      }
      if (incidents) {
        PrintIncidentEvent(e);
      } else {
        PrintAnomalyEvent(e);
      }
      std::fflush(stdout);
      if (count > 0 && ++seen >= count) {
        for (auto& other : feeds) other->ctx.TryCancel();  // every feed ends
        break;
      }
    }
    grpc::Status st = reader->Finish();
    const bool time_up = seconds > 0 && st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    if (!st.ok() && st.error_code() != grpc::StatusCode::CANCELLED && !time_up) {
      std::lock_guard lock(print_mu);
      if (feeds.size() > 1) std::fprintf(stderr, "aectl: replica %s: ", replicas[i].c_str());
      Fail(st);
      ++failed;
    }
  };
  std::vector<std::thread> readers;
  for (size_t i = 1; i < feeds.size(); ++i) readers.emplace_back(read, i);
  read(0);
  for (auto& t : readers) t.join();
  return failed > 0 ? 1 : 0;
}

// A matrix as CSV: a header (`row` and the column names), then one line per row.
void PrintMatrix(const std::vector<std::string>& names, const float* values, size_t rows) {
  std::printf("row");
  for (const auto& n : names) std::printf(",%s", n.c_str());
  std::printf("\n");
  for (size_t r = 0; r < rows; ++r) {
    std::printf("%zu", r);
    for (size_t j = 0; j < names.size(); ++j) std::printf(",%.8g", values[r * names.size() + j]);
    std::printf("\n");
  }
}

// The model's feature names when they match `width` columns, else x0, x1, ...
std::vector<std::string> ColumnNames(v1::Scoring::Stub* stub, const Common& c,
                                     const std::string& model, size_t width) {
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::GetModelRequest get;
  get.set_model(model);
  v1::ModelInfo info;
  std::vector<std::string> names;
  if (stub->GetModel(&ctx, get, &info).ok() &&
      static_cast<size_t>(info.feature_names_size()) == width) {
    names.assign(info.feature_names().begin(), info.feature_names().end());
  } else {
    for (size_t j = 0; j < width; ++j) names.push_back("x" + std::to_string(j));
  }
  return names;
}

// encode / reconstruct: the CSV's rows through the model, printed as CSV.
int Transform(const Common& c, const std::string& what, const Target& target,
              const std::string& path, const Columns& cols) {
  auto table = ReadInput(path);
  if (!table.ok()) return Fail(table.status());
  auto stub = v1::Scoring::NewStub(Connect(c));
  v1::Samples samples;
  samples.set_num_features(static_cast<uint32_t>(table->features()));
  bool ignore = false;
  NameColumns(*table, cols, samples.mutable_feature_names(), &ignore);
  samples.set_ignore_unknown_features(ignore);
  samples.mutable_values()->Add(table->values.begin(), table->values.end());
  AddTimes(*table, 0, table->rows, &samples);
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  if (what == "encode") {
    v1::EncodeRequest req;
    req.set_model(target.model);
    req.set_version(target.version);
    *req.mutable_samples() = samples;
    v1::EncodeResponse resp;
    grpc::Status st = stub->Encode(&ctx, req, &resp);
    if (!st.ok()) return FailWithTimes(st, *table);
    std::vector<std::string> names;
    for (uint32_t j = 0; j < resp.code_size(); ++j) names.push_back("code" + std::to_string(j));
    PrintMatrix(names, resp.codes().data(),
                resp.code_size() ? resp.codes_size() / resp.code_size() : 0);
    return 0;
  }
  v1::ReconstructRequest req;
  req.set_model(target.model);
  req.set_version(target.version);
  *req.mutable_samples() = samples;
  v1::ReconstructResponse resp;
  grpc::Status st = stub->Reconstruct(&ctx, req, &resp);
  if (!st.ok()) return FailWithTimes(st, *table);
  const size_t width = resp.num_features();
  PrintMatrix(ColumnNames(stub.get(), c, target.model, width), resp.values().data(),
              width ? resp.values_size() / width : 0);
  return 0;
}

int Generate(const Common& c, const Target& target, uint32_t count, uint64_t seed) {
  auto stub = v1::Scoring::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::GenerateRequest req;
  req.set_model(target.model);
  req.set_version(target.version);
  req.set_count(count);
  req.set_seed(seed);
  v1::GenerateResponse resp;
  grpc::Status st = stub->Generate(&ctx, req, &resp);
  if (!st.ok()) return Fail(st);
  const size_t width = resp.num_features();
  PrintMatrix(ColumnNames(stub.get(), c, target.model, width), resp.values().data(),
              width ? resp.values_size() / width : 0);
  return 0;
}

int Health(const Common& c) {
  auto stub = grpc::health::v1::Health::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status st = stub->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &resp);
  if (!st.ok()) return Fail(st);
  std::printf("%s\n",
              grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()).c_str());
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

const char* JobStateName(v1::JobState s) {
  switch (s) {
    case v1::JOB_STATE_QUEUED:
      return "QUEUED";
    case v1::JOB_STATE_RUNNING:
      return "RUNNING";
    case v1::JOB_STATE_SUCCEEDED:
      return "SUCCEEDED";
    case v1::JOB_STATE_FAILED:
      return "FAILED";
    case v1::JOB_STATE_CANCELLED:
      return "CANCELLED";
    default:
      return "?";
  }
}

// A live progress line on a terminal; one line per update otherwise.
// A rate for people: 950, 12.3k, 1.2M.
std::string HumanRate(double v) {
  char buf[32];
  if (v >= 1e6) {
    std::snprintf(buf, sizeof buf, "%.1fM", v / 1e6);
  } else if (v >= 1e4) {
    std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  } else {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  }
  return buf;
}

// One progress line: rewritten in place on a terminal; elsewhere (a log, a CI job) printed on a
// line of its own, and only when it changed.
void EmitProgress(const std::string& line) {
  static std::string last;
  if (isatty(2)) {
    std::fprintf(stderr, "\r%s   ", line.c_str());
  } else if (line != last) {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  last = line;
}

void ShowProgress(const v1::TrainingJob& j) {
  char buf[256];
  if (j.entities_size() > 0) {  // bulk entity training: models done of all
    int done = 0, failed = 0, running = 0;
    for (const auto& e : j.entities()) {
      done += e.state() == v1::JOB_STATE_SUCCEEDED;
      failed += e.state() == v1::JOB_STATE_FAILED;
      running += e.state() == v1::JOB_STATE_RUNNING;
    }
    std::snprintf(buf, sizeof buf, "%s: %d of %d entity models trained, %d failed, %d training",
                  JobStateName(j.state()), done, j.entities_size(), failed, running);
    return EmitProgress(buf);
  }
  const int width = 30;
  const int filled = j.epochs() ? static_cast<int>(width * j.epoch() / j.epochs()) : 0;
  std::string bar(filled, '#');
  bar.resize(width, '.');
  if (j.epoch() == 0) {  // queued, or before the first epoch ends: no losses yet
    std::snprintf(buf, sizeof buf, "[%s] %s, %u epochs", bar.c_str(), JobStateName(j.state()),
                  j.epochs());
    return EmitProgress(buf);
  }
  std::snprintf(buf, sizeof buf, "[%s] %s epoch %u/%u train %.5g val %.5g %s samples/s ETA %.0fs",
                bar.c_str(), JobStateName(j.state()), j.epoch(), j.epochs(), j.train_loss(),
                j.validation_loss(), HumanRate(j.samples_per_second()).c_str(), j.eta_seconds());
  EmitProgress(buf);
}

// What `aectl train` was given. Anything not given stays unset (0, empty or -1) and the server's
// engine fills in its default: the defaults live in one place (engine/spec.cc).
struct TrainArgs {
  std::string model, entity, kind, layers, decoder, loss, activation, scaling, noise, description;
  std::string entity_column;  // bulk entity training: the CSV column naming each row's entity
  uint32_t code = 0, epochs = 0, batch = 0, patience = 0, seed = 0;
  float lr = 0, weight_decay = 0, dropout = -1, validation_split = -1, noise_level = 0, l1 = 0,
        kl_sparsity = 0, rho = 0, beta = 0;
  double percentile = 0;
  bool fine_tune = false, no_activate = false, detach = false, retain = false;
  bool from_recording = false;  // the rows ingest recorded on the server, not a file
  uint64_t base_version = 0;
  float max_missing = -1;                  // -1 = the server's default
  int impute_refinements = -1;             // -1 = the server's default
  int max_gap_steps = -1;                  // -1 = the server's default (the window length)
  std::string gap_fill;                    // empty = the server's default
  std::string precision;                   // empty = the server's --precision
  uint32_t window = 0, stride = 0;         // 0 = no window / every step
  std::vector<std::string> time_features;  // hour, weekday
};

// The policy options given on the command line (negative = not given).
v1::ScoringPolicy PolicyOf(float max_missing, int impute_refinements, int max_gap_steps,
                           const std::string& gap_fill, const std::string& precision) {
  v1::ScoringPolicy p;
  if (precision == "f32") p.set_precision(v1::PRECISION_F32);
  if (precision == "bf16") p.set_precision(v1::PRECISION_BF16);
  if (gap_fill == "join") p.set_gap_fill(v1::GAP_FILL_JOIN);
  if (gap_fill == "missing") p.set_gap_fill(v1::GAP_FILL_MISSING);
  if (max_missing >= 0) p.set_max_missing_fraction(max_missing);
  if (impute_refinements >= 0) p.set_impute_refinements(static_cast<uint32_t>(impute_refinements));
  if (max_gap_steps >= 0) p.set_max_gap_steps(static_cast<uint32_t>(max_gap_steps));
  return p;
}

template <typename E, typename F>
bool ParseEnum(const std::string& text, const std::string& prefix, F is_valid_name, E* out) {
  std::string upper = prefix + text;
  for (char& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  for (char& ch : upper)
    if (ch == '-') ch = '_';
  return is_valid_name(upper, out);
}

int Train(const Common& c, const TrainArgs& a, const std::string& path) {
  // From a recording the server has the rows: an empty table stands for them here.
  if (!a.entity_column.empty() && (!a.entity.empty() || a.from_recording)) {
    std::fprintf(stderr,
                 "aectl: --entity-column trains one model per entity: not with --entity "
                 "or --from-recording\n");
    return 2;
  }
  auto table = a.from_recording ? absl::StatusOr<engine::CsvTable>(engine::CsvTable{})
                                : ReadInput(path, a.entity_column);
  if (!table.ok()) return Fail(table.status());
  v1::TrainingJobHeader h;
  h.set_model(a.model);
  h.set_entity(a.entity);
  h.set_per_entity(!a.entity_column.empty());
  h.set_num_features(static_cast<uint32_t>(table->features()));
  h.set_rows(table->rows);
  for (const auto& n : table->feature_names) h.add_feature_names(n);
  h.set_fine_tune(a.fine_tune);
  h.set_base_version(a.base_version);
  h.set_no_activate(a.no_activate);
  h.set_retain(a.retain);
  h.set_description(a.description);
  *h.mutable_policy() =
      PolicyOf(a.max_missing, a.impute_refinements, a.max_gap_steps, a.gap_fill, a.precision);
  const bool series = a.window > 1 || !a.time_features.empty();
  if (series && table->timestamps_ms.empty()) {
    std::fprintf(stderr,
                 "aectl: --window and --time-features need a 'timestamp' column of times "
                 "(ISO 8601 like 2024-01-31 14:05:00, or Unix seconds)%s%s\n",
                 table->timestamp_problem.empty() ? "" : ": ", table->timestamp_problem.c_str());
    return 2;
  }
  if (!a.fine_tune && a.base_version == 0) {
    v1::ModelSpec* s = h.mutable_spec();
    v1::ModelKind kind;
    v1::Loss loss;
    v1::Activation act;
    v1::Noise noise;
    if ((!a.kind.empty() && !ParseEnum(a.kind, "MODEL_KIND_", v1::ModelKind_Parse, &kind)) ||
        (!a.loss.empty() && !ParseEnum(a.loss, "LOSS_", v1::Loss_Parse, &loss)) ||
        (!a.activation.empty() &&
         !ParseEnum(a.activation, "ACTIVATION_", v1::Activation_Parse, &act)) ||
        (!a.noise.empty() && !ParseEnum(a.noise, "NOISE_", v1::Noise_Parse, &noise))) {
      std::fprintf(stderr, "aectl: unknown --kind, --loss, --activation or --noise\n");
      return 2;
    }
    if (!a.kind.empty()) s->set_kind(kind);
    if (!a.loss.empty()) s->set_loss(loss);
    if (!a.activation.empty()) s->set_hidden_activation(act);
    if (!a.noise.empty()) s->set_noise(noise);
    uint32_t width = 0;  // checked by the --layers / --decoder validators
    for (auto part : absl::StrSplit(a.layers, ',', absl::SkipEmpty())) {
      if (absl::SimpleAtoi(part, &width)) s->add_encoder_units(width);
    }
    for (auto part : absl::StrSplit(a.decoder, ',', absl::SkipEmpty())) {
      if (absl::SimpleAtoi(part, &width)) s->add_decoder_units(width);
    }
    s->set_code_size(a.code);
    s->set_noise_level(a.noise_level);
    s->set_l1_penalty(a.l1);
    s->set_kl_sparsity_weight(a.kl_sparsity);
    s->set_sparsity_target(a.rho);
    s->set_beta(a.beta);
    s->mutable_window()->set_length(a.window);
    s->mutable_window()->set_stride(a.stride);
    for (const auto& f : a.time_features) {
      if (f == "hour") {
        s->mutable_window()->add_time_features(v1::TIME_FEATURE_HOUR_OF_DAY);
      } else if (f == "weekday") {
        s->mutable_window()->add_time_features(v1::TIME_FEATURE_DAY_OF_WEEK);
      } else {
        std::fprintf(stderr, "aectl: unknown time feature '%s' (hour or weekday)\n", f.c_str());
        return 2;
      }
    }
  }
  v1::TrainingOptions* o = h.mutable_options();
  o->set_epochs(a.epochs);
  o->set_batch_size(a.batch);
  o->set_learning_rate(a.lr);
  o->set_weight_decay(a.weight_decay);
  if (a.dropout >= 0) o->set_dropout(a.dropout);
  if (a.validation_split >= 0) o->set_validation_split(a.validation_split);
  o->set_patience(a.patience);
  o->set_seed(a.seed);
  if (!a.scaling.empty()) {
    v1::Scaling scaling;
    if (!ParseEnum(a.scaling, "SCALING_", v1::Scaling_Parse, &scaling)) {
      std::fprintf(stderr, "aectl: unknown --scaling\n");
      return 2;
    }
    o->set_scaling(scaling);
  }
  if (a.percentile > 0) {
    h.mutable_threshold()->set_method(v1::THRESHOLD_PERCENTILE);
    h.mutable_threshold()->set_value(a.percentile);
  }

  auto stub = v1::ModelAdmin::NewStub(Connect(c));
  v1::TrainingJob job;
  if (a.from_recording) {
    grpc::ClientContext ctx;
    Deadline(ctx, c);
    grpc::Status st = stub->TrainFromRecording(&ctx, h, &job);
    if (!st.ok()) return Fail(st);
  } else {
    grpc::ClientContext ctx;
    Deadline(ctx, c, false);
    auto writer = stub->CreateTrainingJob(&ctx, &job);
    const size_t d = table->features(), chunk = 16384 * d;
    for (size_t start = 0; start < table->values.size(); start += chunk) {
      v1::CreateTrainingJobRequest req;
      if (start == 0) *req.mutable_header() = h;
      const size_t end = std::min(table->values.size(), start + chunk);
      req.mutable_values()->Add(table->values.begin() + start, table->values.begin() + end);
      if (!table->timestamps_ms.empty()) {  // the rows' times (series models need them)
        req.mutable_timestamps_ms()->Add(table->timestamps_ms.begin() + start / d,
                                         table->timestamps_ms.begin() + end / d);
      }
      for (size_t r = start / d; r < end / d && r < table->text.size(); ++r) {
        req.add_entities(table->text[r]);  // --entity-column: each row's entity
      }
      if (!writer->Write(req)) break;
    }
    writer->WritesDone();
    grpc::Status st = writer->Finish();
    if (!st.ok()) return Fail(st);
  }
  std::fprintf(stderr, "job %s queued: %llu rows x %u features\n", job.id().c_str(),
               static_cast<unsigned long long>(job.rows()), job.num_features());
  if (a.detach) {
    std::printf("%s\n", job.id().c_str());
    return 0;
  }
  grpc::ClientContext ctx;
  Deadline(ctx, c, false);
  v1::GetTrainingJobRequest req;
  req.set_id(job.id());
  auto reader = stub->WatchTrainingJob(&ctx, req);
  while (reader->Read(&job)) ShowProgress(job);
  if (isatty(2)) std::fprintf(stderr, "\n");
  grpc::Status st = reader->Finish();
  if (!st.ok()) return Fail(st);
  if (job.entities_size() > 0) {  // bulk entity training: one line per entity
    for (const auto& e : job.entities()) {
      if (e.state() == v1::JOB_STATE_SUCCEEDED) {
        std::printf("model %s/%s version %llu %s (%llu rows, %u epochs)\n", job.model().c_str(),
                    e.entity().c_str(), static_cast<unsigned long long>(e.version()),
                    e.activated() ? "active" : "staged", static_cast<unsigned long long>(e.rows()),
                    e.epoch());
      } else {
        std::printf("model %s/%s %s: %s\n", job.model().c_str(), e.entity().c_str(),
                    JobStateName(e.state()), e.error().c_str());
      }
    }
  }
  if (job.state() != v1::JOB_STATE_SUCCEEDED) {
    std::fprintf(stderr, "aectl: job %s %s: %s\n", job.id().c_str(), JobStateName(job.state()),
                 job.error().c_str());
    return 1;
  }
  if (job.entities_size() > 0) {
    if (!job.error().empty()) std::fprintf(stderr, "aectl: %s\n", job.error().c_str());
    return job.error().empty() ? 0 : 3;  // 3: some entities failed, the others were trained
  }
  std::printf("model %s%s%s version %llu %s (%u epochs, %.2f s)\n", job.model().c_str(),
              job.entity().empty() ? "" : "/", job.entity().c_str(),
              static_cast<unsigned long long>(job.version()), job.activated() ? "active" : "staged",
              job.epoch(), job.elapsed_seconds());
  return 0;
}

int Jobs(const Common& c, const std::string& model, const std::string& format) {
  auto stub = v1::ModelAdmin::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::ListTrainingJobsRequest req;
  req.set_model(model);
  v1::ListTrainingJobsResponse resp;
  grpc::Status st = stub->ListTrainingJobs(&ctx, req, &resp);
  if (!st.ok()) return Fail(st);
  if (format == "json") return PrintJson(resp);
  std::printf("%-28s %-24s %-10s %9s %8s %12s %-12s %s\n", "JOB", "MODEL", "STATE", "EPOCH",
              "VERSION", "TRAIN LOSS", "TRIGGER", "ERROR");
  for (const auto& j : resp.jobs()) {
    const std::string name = j.entity().empty() ? j.model() : j.model() + "/" + j.entity();
    std::printf("%-28s %-24s %-10s %4u/%-4u %8llu %12.5g %-12s %s\n", j.id().c_str(), name.c_str(),
                JobStateName(j.state()), j.epoch(), j.epochs(),
                static_cast<unsigned long long>(j.version()), j.train_loss(), j.trigger().c_str(),
                j.error().c_str());
  }
  return 0;
}

int History(const Common& c, const std::string& model, const std::string& entity, uint32_t limit,
            const std::string& format) {
  auto stub = v1::ModelAdmin::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::ListEventsRequest req;
  req.set_model(model);
  req.set_entity(entity);
  req.set_limit(limit);
  v1::ListEventsResponse resp;
  grpc::Status st = stub->ListEvents(&ctx, req, &resp);
  if (!st.ok()) return Fail(st);
  if (format == "json") return PrintJson(resp);
  if (resp.truncated()) std::printf("(older events left out; see --limit)\n");
  std::printf("%-24s %-24s %-8s %-18s %-16s %s\n", "TIME (UTC)", "MODEL", "VERSION", "ACTION",
              "ACTOR", "REASON");
  for (const auto& e : resp.events()) {
    const std::string name = e.entity().empty() ? e.model() : e.model() + "/" + e.entity();
    const std::string when = absl::FormatTime(
        "%Y-%m-%d %H:%M:%E3S", absl::FromUnixMillis(e.time_unix_ms()), absl::UTCTimeZone());
    const std::string version = e.version() == 0 ? "-" : std::to_string(e.version());
    std::printf("%-24s %-24s %-8s %-18s %-16s %s%s%s\n", when.c_str(), name.c_str(),
                version.c_str(), e.action().c_str(), e.actor().c_str(), e.reason().c_str(),
                e.job_id().empty() ? "" : " [",
                e.job_id().empty() ? "" : (e.job_id() + "]").c_str());
  }
  return 0;
}

void PrintShadow(const v1::ShadowReport& s) {
  if (s.candidate_version() == 0) {
    std::printf("shadow: none yet\n");
    return;
  }
  std::printf("shadow: candidate version %llu beside active version %llu, %s\n",
              static_cast<unsigned long long>(s.candidate_version()),
              static_cast<unsigned long long>(s.active_version()),
              s.finished() ? "finished" : "running");
  std::printf("  samples %llu of %llu (or %.0f s); not compared (queue full) %llu\n",
              static_cast<unsigned long long>(s.samples()),
              static_cast<unsigned long long>(s.target_samples()), s.target_seconds(),
              static_cast<unsigned long long>(s.dropped_samples()));
  std::printf("  flag rate: active %.4f, candidate %.4f (its target %.4f)\n", s.active_flag_rate(),
              s.candidate_flag_rate(), s.candidate_target_rate());
  std::printf("  flagged by both %llu, only active %llu, only candidate %llu\n",
              static_cast<unsigned long long>(s.both_flagged()),
              static_cast<unsigned long long>(s.only_active()),
              static_cast<unsigned long long>(s.only_candidate()));
  std::printf("  drift KS against own calibration: active %.3f, candidate %.3f\n",
              s.active_drift_ks(), s.candidate_drift_ks());
  if (s.active_compute_seconds() > 0) {
    std::printf("  cost: the candidate spent %.2fx the active version's scoring time\n",
                s.candidate_compute_seconds() / s.active_compute_seconds());
  }
  if (s.finished()) std::printf("  outcome: %s\n", s.outcome().c_str());
}

void PrintAutopilot(const v1::AutopilotStatus& a) {
  const v1::RetrainPolicy& p = a.policy();
  std::printf("retained: %llu rows, %llu bytes in %u segments (%llu rows not kept)\n",
              static_cast<unsigned long long>(a.retained_rows()),
              static_cast<unsigned long long>(a.retained_bytes()), a.retained_segments(),
              static_cast<unsigned long long>(a.retained_dropped_rows()));
  std::printf("policy: %s\n", p.ShortDebugString().c_str());
  const v1::RetrainState& r = a.retrain();
  if (!r.job_id().empty()) {
    std::printf("last retrain: job %s (%s) %s%s\n", r.job_id().c_str(), r.trigger().c_str(),
                r.running() ? "running on " : "",
                r.running() ? r.replica().c_str() : r.outcome().c_str());
  }
  PrintShadow(a.shadow());
}

struct AutopilotArgs {
  std::string model, entity, flagged = "keep", promotion = "shadow", flag_ratio, format = "text";
  uint64_t retain_rows = 0, drift_samples = 0, grown_rows = 0;
  double retain_hours = 0, drift_above = 0, grown_factor = 0, every_hours = 0;
  double min_interval = -1, shadow_seconds = -1;  // -1 = the server's default
  int64_t min_rows = -1, shadow_samples = -1;
  bool fine_tune = false, off = false;
};

int SetAutopilot(const Common& c, const AutopilotArgs& a) {
  auto stub = v1::ModelAdmin::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::SetRetrainPolicyRequest req;
  req.set_model(a.model);
  req.set_entity(a.entity);
  req.set_clear(a.off);
  v1::RetrainPolicy* p = req.mutable_policy();
  p->set_retain_rows(a.retain_rows);
  p->set_retain_hours(a.retain_hours);
  p->set_flagged_rows(a.flagged == "drop"                   ? v1::FLAGGED_ROWS_DROP
                      : a.flagged == "keep-unless-incident" ? v1::FLAGGED_ROWS_KEEP_UNLESS_INCIDENT
                                                            : v1::FLAGGED_ROWS_KEEP);
  p->set_drift_above(a.drift_above);
  p->set_drift_samples(a.drift_samples);
  p->set_grown_factor(a.grown_factor);
  p->set_grown_rows(a.grown_rows);
  p->set_every_hours(a.every_hours);
  if (a.min_interval >= 0) p->set_min_interval_seconds(a.min_interval);
  if (a.min_rows >= 0) p->set_min_rows(static_cast<uint64_t>(a.min_rows));
  p->set_fine_tune(a.fine_tune);
  p->set_promotion(a.promotion == "activate" ? v1::PROMOTION_ACTIVATE
                   : a.promotion == "stage"  ? v1::PROMOTION_STAGE
                                             : v1::PROMOTION_SHADOW);
  if (a.shadow_samples >= 0) p->set_shadow_samples(static_cast<uint64_t>(a.shadow_samples));
  if (a.shadow_seconds >= 0) p->set_shadow_seconds(a.shadow_seconds);
  if (!a.flag_ratio.empty()) {
    std::vector<std::string> parts = absl::StrSplit(a.flag_ratio, ',');
    double lo = 0, hi = 0;
    if (parts.size() != 2 || !absl::SimpleAtod(parts[0], &lo) || !absl::SimpleAtod(parts[1], &hi)) {
      std::fprintf(stderr, "aectl: --flag-ratio takes MIN,MAX (e.g. 0.25,4)\n");
      return 2;
    }
    p->set_min_flag_ratio(lo);
    p->set_max_flag_ratio(hi);
  }
  v1::AutopilotStatus status;
  grpc::Status st = stub->SetRetrainPolicy(&ctx, req, &status);
  if (!st.ok()) return Fail(st);
  if (a.format == "json") return PrintJson(status);
  if (a.off) {
    std::printf("autopilot off for %s; retained rows deleted\n", a.model.c_str());
    return 0;
  }
  PrintAutopilot(status);
  return 0;
}

struct IngestArgs {
  std::string model, entity_label, format = "text";
  std::vector<std::string> features;  // NAME=SELECTOR
  uint32_t tolerance_ms = 0, flush_ms = 0, debounce_k = 0, debounce_n = 0;
  bool off = false;
};

// aectl ingest bind|unbind: the model's Prometheus remote-write binding.
int SetIngest(const Common& c, const IngestArgs& a) {
  v1::SetIngestBindingRequest req;
  req.set_model(a.model);
  req.set_clear(a.off);
  v1::IngestBinding* b = req.mutable_binding();
  for (const std::string& f : a.features) {
    const size_t eq = f.find('=');
    if (eq == std::string::npos || eq == 0) {
      std::fprintf(stderr,
                   "aectl: --feature takes NAME=SELECTOR (e.g. cpu='rate(node_cpu_seconds_total"
                   "{mode=\"user\"})'); got '%s'\n",
                   f.c_str());
      return 2;
    }
    auto* feature = b->add_features();
    feature->set_name(f.substr(0, eq));
    feature->set_selector(f.substr(eq + 1));
  }
  b->set_entity_label(a.entity_label);
  b->set_tolerance_ms(a.tolerance_ms);
  b->set_flush_ms(a.flush_ms);
  b->set_debounce_k(a.debounce_k);
  b->set_debounce_n(a.debounce_n);
  auto stub = v1::ModelAdmin::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::IngestStatus status;
  grpc::Status st = stub->SetIngestBinding(&ctx, req, &status);
  if (!st.ok()) return Fail(st);
  if (a.format == "json") return PrintJson(status);
  if (a.off) {
    std::printf("ingest binding of %s removed\n", a.model.c_str());
    return 0;
  }
  const v1::IngestBinding& r = status.binding();
  std::printf("%s: %d feature(s) bound; entity label %s; rows within %u ms, flushed after %u ms\n",
              a.model.c_str(), r.features_size(),
              r.entity_label().empty() ? "(none)" : r.entity_label().c_str(), r.tolerance_ms(),
              r.flush_ms());
  if (r.debounce_k() > 0) {
    std::printf(
        "  alarm per entity: %u of its last %u rows flagged (incidents: aectl watch "
        "--incidents)\n",
        r.debounce_k(), r.debounce_n());
  }
  for (const auto& f : r.features()) {
    std::printf("  %s <- %s\n", f.name().c_str(), f.selector().c_str());
  }
  return 0;
}

int RecordIngest(const Common& c, const std::string& model, double minutes, uint64_t max_rows,
                 bool stop, const std::string& format) {
  auto stub = v1::ModelAdmin::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::RecordIngestRequest req;
  req.set_model(model);
  req.set_seconds(minutes * 60);
  req.set_max_rows(max_rows);
  req.set_stop(stop);
  v1::IngestStatus status;
  grpc::Status st = stub->RecordIngest(&ctx, req, &status);
  if (!st.ok()) return Fail(st);
  if (format == "json") return PrintJson(status);
  const v1::IngestRecording& r = status.recording();
  if (stop) {
    std::printf("recording of %s stopped: %llu rows\n", model.c_str(),
                static_cast<unsigned long long>(status.recorded_rows()));
  } else {
    std::printf(
        "recording %s for %.1f minutes (at most %llu rows); then: aectl train --model %s "
        "--from-recording\n",
        model.c_str(), (r.until_unix_ms() - r.started_unix_ms()) / 60000.0,
        static_cast<unsigned long long>(r.max_rows()), model.c_str());
  }
  return 0;
}

int Retrain(const Common& c, const std::string& model, const std::string& entity) {
  auto stub = v1::ModelAdmin::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::RetrainRequest req;
  req.set_model(model);
  req.set_entity(entity);
  v1::TrainingJob job;
  grpc::Status st = stub->Retrain(&ctx, req, &job);
  if (!st.ok()) return Fail(st);
  std::printf("job %s queued: retraining %s on its retained rows (aectl jobs --model %s)\n",
              job.id().c_str(), model.c_str(), model.c_str());
  return 0;
}

int ShadowCmd(const Common& c, const std::string& model, const std::string& entity, uint64_t start,
              const std::string& format) {
  v1::AutopilotStatus status;
  grpc::Status st;
  if (start != 0) {
    auto stub = v1::ModelAdmin::NewStub(Connect(c));
    grpc::ClientContext ctx;
    Deadline(ctx, c);
    v1::StartShadowRequest req;
    req.set_model(model);
    req.set_entity(entity);
    req.set_version(start);
    st = stub->StartShadow(&ctx, req, &status);
  } else {
    auto stub = v1::Scoring::NewStub(Connect(c));
    grpc::ClientContext ctx;
    Deadline(ctx, c);
    v1::GetModelRequest req;
    req.set_model(model);
    req.set_entity(entity);
    v1::ModelInfo info;
    st = stub->GetModel(&ctx, req, &info);
    if (st.ok() && !info.has_autopilot()) {
      std::fprintf(stderr, "aectl: %s has no retrain policy (aectl autopilot %s --retain-rows N)\n",
                   model.c_str(), model.c_str());
      return 1;
    }
    status = info.autopilot();
  }
  if (!st.ok()) return Fail(st);
  if (format == "json") return PrintJson(status.shadow());
  PrintShadow(status.shadow());
  return 0;
}

int Cancel(const Common& c, const std::string& id) {
  auto stub = v1::ModelAdmin::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::GetTrainingJobRequest req;
  req.set_id(id);
  v1::TrainingJob job;
  grpc::Status st = stub->CancelTrainingJob(&ctx, req, &job);
  if (!st.ok()) return Fail(st);
  std::printf("job %s %s\n", id.c_str(),
              job.state() == v1::JOB_STATE_CANCELLED ? "cancelled"
                                                     : "cancelling (stops at the next epoch)");
  return 0;
}

void PrintBrief(const v1::ModelInfoBrief& b) {
  std::string versions;
  for (uint64_t v : b.versions()) versions += (versions.empty() ? "" : ",") + std::to_string(v);
  std::printf("model %s%s%s: active version %llu of [%s], threshold %.6g%s\n", b.model().c_str(),
              b.entity().empty() ? "" : "/", b.entity().c_str(),
              static_cast<unsigned long long>(b.active_version()), versions.c_str(),
              b.threshold_value(),
              b.critical_threshold_value() > 0
                  ? (", critical " + std::to_string(b.critical_threshold_value())).c_str()
                  : "");
}

int Activate(const Common& c, const std::string& model, const std::string& entity,
             uint64_t version) {
  auto stub = v1::ModelAdmin::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::ActivateVersionRequest req;
  req.set_model(model);
  req.set_entity(entity);
  req.set_version(version);
  v1::ModelInfoBrief b;
  grpc::Status st = stub->ActivateVersion(&ctx, req, &b);
  if (!st.ok()) return Fail(st);
  PrintBrief(b);
  return 0;
}

int Delete(const Common& c, const std::string& model, const std::string& entity, uint64_t version,
           bool force) {
  auto stub = v1::ModelAdmin::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  grpc::Status st;
  if (version != 0) {
    v1::DeleteVersionRequest req;
    req.set_model(model);
    req.set_entity(entity);
    req.set_version(version);
    req.set_force(force);
    v1::ModelInfoBrief b;
    st = stub->DeleteVersion(&ctx, req, &b);
    if (st.ok()) PrintBrief(b);
  } else {
    v1::DeleteModelRequest req;
    req.set_model(model);
    req.set_entity(entity);
    req.set_force(force);
    v1::DeleteModelResponse resp;
    st = stub->DeleteModel(&ctx, req, &resp);
    if (st.ok()) std::printf("model %s deleted\n", model.c_str());
  }
  return st.ok() ? 0 : Fail(st);
}

// "percentile:99.5", "mean-std:3", "median-mad:3", "fpr:0.01", "fixed:0.4".
bool ParseThreshold(const std::string& text, v1::ThresholdConfig* out) {
  const auto colon = text.find(':');
  if (colon == std::string::npos) return false;
  std::string method = text.substr(0, colon);
  std::replace(method.begin(), method.end(), '_',
               '-');  // mean_std, as the Python client spells it too
  double value = 0;
  if (!absl::SimpleAtod(text.substr(colon + 1), &value)) return false;
  static const std::map<std::string, v1::ThresholdMethod> kMethods = {
      {"percentile", v1::THRESHOLD_PERCENTILE},
      {"mean-std", v1::THRESHOLD_MEAN_STD},
      {"median-mad", v1::THRESHOLD_MEDIAN_MAD},
      {"fpr", v1::THRESHOLD_TARGET_FPR},
      {"fixed", v1::THRESHOLD_FIXED}};
  auto it = kMethods.find(method);
  if (it == kMethods.end()) return false;
  out->set_method(it->second);
  out->set_value(value);
  return true;
}

int Threshold(const Common& c, const std::string& model, const std::string& entity,
              uint64_t version, const std::string& level, const std::string& critical,
              bool clear_critical) {
  v1::SetThresholdRequest req;
  req.set_model(model);
  req.set_entity(entity);
  req.set_version(version);
  req.set_clear_critical(clear_critical);
  if ((!level.empty() && !ParseThreshold(level, req.mutable_threshold())) ||
      (!critical.empty() && !ParseThreshold(critical, req.mutable_critical_threshold()))) {
    std::fprintf(stderr,
                 "aectl: a threshold is METHOD:VALUE with METHOD one of percentile, "
                 "mean-std, median-mad, fpr, fixed\n");
    return 2;
  }
  auto stub = v1::ModelAdmin::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::ModelInfoBrief b;
  grpc::Status st = stub->SetThreshold(&ctx, req, &b);
  if (!st.ok()) return Fail(st);
  PrintBrief(b);
  return 0;
}

int Policy(const Common& c, const std::string& model, const std::string& entity, uint64_t version,
           float max_missing, int impute_refinements, int max_gap_steps,
           const std::string& gap_fill, const std::string& precision) {
  v1::SetScoringPolicyRequest req;
  req.set_model(model);
  req.set_entity(entity);
  req.set_version(version);
  *req.mutable_policy() =
      PolicyOf(max_missing, impute_refinements, max_gap_steps, gap_fill, precision);
  auto stub = v1::ModelAdmin::NewStub(Connect(c));
  grpc::ClientContext ctx;
  Deadline(ctx, c);
  v1::ModelInfoBrief b;
  grpc::Status st = stub->SetScoringPolicy(&ctx, req, &b);
  if (!st.ok()) return Fail(st);
  PrintBrief(b);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"aectl: the aeserve command line"};
  app.require_subcommand(1);
  app.fallthrough();  // global options (--server, --token, ...) also after the subcommand
  Common c;
  if (const char* t = std::getenv("AESERVE_TOKEN")) c.token = t;
  if (const char* s = std::getenv("AESERVE_SERVER"); s != nullptr && *s != '\0') c.server = s;
  // The connection options, on the app and on every subcommand (so they go before or after the
  // subcommand, and every subcommand's --help lists them).
  auto add_globals = [&c](CLI::App* a) {
    a->add_option("--server", c.server,
                  "aeserve address host:port (default: $AESERVE_SERVER if set)")
        ->capture_default_str();
    a->add_option("--timeout", c.timeout, "deadline of each call in seconds")
        ->capture_default_str();
    a->add_option("--token", c.token, "bearer token (default: $AESERVE_TOKEN)");
    // TLS files must exist (never a silent fallback to the system roots); a client certificate
    // and its key come together.
    a->add_option("--tls-ca", c.tls_ca, "PEM CA bundle: connect with TLS")
        ->check(CLI::ExistingFile);
    auto* cert = a->add_option("--tls-cert", c.tls_cert, "PEM client certificate (mutual TLS)")
                     ->check(CLI::ExistingFile);
    auto* key = a->add_option("--tls-key", c.tls_key, "PEM client key (mutual TLS)")
                    ->check(CLI::ExistingFile);
    cert->needs(key);
    key->needs(cert);
    a->add_option("--lb-policy", c.lb_policy,
                  "gRPC load balancing over the addresses --server resolves to (round_robin "
                  "spreads calls over replicas behind a dns:/// name)")
        ->check(CLI::IsMember({"round_robin", "pick_first"}));
    a->add_option("--channel-arg", c.channel_args,
                  "a gRPC channel argument, key=value (an integer value is set as one); "
                  "repeatable")
        ->check([](const std::string& kv) {
          return kv.find('=') == std::string::npos || kv.front() == '='
                     ? std::string("expected key=value")
                     : std::string();
        })
        ->expected(1)  // one value per occurrence: never the data file after it
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  };
  add_globals(&app);

  // Each subcommand: its own options (a struct), registered with its flags, and a callback that
  // runs it after the whole command line is parsed. `code` is the exit code.
  int code = 2;
  // The columns options of the commands that send CSV rows.
  auto add_columns = [](CLI::App* cmd, Columns* cols) {
    cmd->add_flag(
        "--positional", cols->positional,
        "send columns by position, not by their header names (models trained without names)");
    cmd->add_flag("--ignore-extra-columns", cols->ignore_extra,
                  "drop CSV columns the model does not know instead of refusing them");
  };
  auto add_target = [](CLI::App* cmd, Target* t, const char* version_help, bool entity) {
    cmd->add_option("--model", t->model, "model name")->required();
    cmd->add_option("--version", t->version, version_help);
    if (entity) {
      cmd->add_option(
          "--entity", t->entity,
          "score with <model>/<entity> (a per-entity model; the generic one when absent)");
    }
  };
  auto add_list_format = [](CLI::App* cmd, std::string* format) {
    cmd->add_option("--format", *format, "text or json (one JSON document, the API's field names)")
        ->check(CLI::IsMember({"text", "json"}))
        ->capture_default_str();
  };

  struct ScoreArgs {
    Target target;
    std::string path = "-", format = "csv";
    uint32_t top_k = 3, batch = 4096;
    Columns cols;
  } score_args;
  auto* score =
      app.add_subcommand("score", "score a CSV file (or stdin) and print one line per row");
  add_target(score, &score_args.target, "model version (default: active)", true);
  score->add_option("--format", score_args.format, "csv or json (JSON lines)")
      ->check(CLI::IsMember({"csv", "json"}))
      ->capture_default_str();
  score->add_option("--top-k", score_args.top_k, "top contributing features per row")
      ->capture_default_str();
  score->add_option("--batch", score_args.batch, "rows per request")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  score->add_option("file", score_args.path, "CSV with a header of feature names; '-' reads stdin");
  add_columns(score, &score_args.cols);
  score->callback([&] {
    const ScoreArgs& a = score_args;
    code = Score(c, a.target, a.path, a.format, a.top_k, a.batch, a.cols);
  });

  struct StreamArgs {
    Target target;
    std::string path = "-", stream_id;
    double rate = 0, stats_every = 5;
    uint32_t batch = 100, top_k = 3, debounce_k = 0, debounce_n = 0;
    Columns cols;
  } stream_args;
  auto* stream = app.add_subcommand("stream", "replay a CSV as live telemetry over StreamScore");
  add_target(stream, &stream_args.target, "model version (default: the active one at each batch)",
             true);
  stream->add_option("--rate", stream_args.rate, "samples per second; 0 = as fast as possible")
      ->capture_default_str();
  stream->add_option("--batch", stream_args.batch, "rows per stream message")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  stream->add_option("--top-k", stream_args.top_k, "top contributing features per flagged row")
      ->capture_default_str();
  stream->add_option("--stats-every", stream_args.stats_every, "seconds between stats lines")
      ->capture_default_str();
  stream->add_option("--debounce-k", stream_args.debounce_k,
                     "alarm when k of the last n samples are anomalous");
  stream->add_option("--debounce-n", stream_args.debounce_n, "window of the alarm debounce");
  stream->add_option("--stream-id", stream_args.stream_id,
                     "name of the stream: in anomaly events, and a reconnect with the same name "
                     "carries on with its alarm and open incident");
  stream->add_option("file", stream_args.path,
                     "CSV with a header of feature names; '-' reads stdin");
  add_columns(stream, &stream_args.cols);
  stream->callback([&] {
    const StreamArgs& a = stream_args;
    code = Stream(c, a.target, a.path, a.rate, a.batch, a.top_k, a.stats_every, a.debounce_k,
                  a.debounce_n, a.cols, a.stream_id);
  });

  std::string models_format = "text";
  auto* models = app.add_subcommand("models", "list the hosted models");
  add_list_format(models, &models_format);
  models->callback([&] { code = Models(c, models_format); });

  struct ModelArgs {
    std::string name, format = "text";
  } model_args;
  auto* model_cmd = app.add_subcommand("model", "show one model: spec, threshold, training");
  model_cmd->add_option("name", model_args.name, "model name")->required();
  add_list_format(model_cmd, &model_args.format);
  model_cmd->callback([&] { code = Model(c, model_args.name, model_args.format); });

  auto* health = app.add_subcommand("health", "check the server's health (exit 0 when SERVING)");
  health->callback([&] { code = Health(c); });

  struct TransformArgs {
    Target target;
    std::string path = "-";
    Columns cols;
  };
  TransformArgs encode_args, reconstruct_args;
  auto add_transform = [&](const char* name, const char* help, TransformArgs* a) {
    auto* cmd = app.add_subcommand(name, help);
    cmd->add_option("--model", a->target.model, "model name")->required();
    cmd->add_option("--version", a->target.version, "model version (default: active)");
    cmd->add_option("file", a->path, "CSV with a header of feature names; '-' reads stdin");
    add_columns(cmd, &a->cols);
    cmd->callback([&code, &c, name, a] { code = Transform(c, name, a->target, a->path, a->cols); });
  };
  add_transform("encode", "print each CSV row's code (the latent layer) as CSV", &encode_args);
  add_transform("reconstruct",
                "print each CSV row's reconstruction (original units, gaps filled) as CSV",
                &reconstruct_args);

  struct GenerateArgs {
    Target target;
    uint32_t count = 10;
    uint64_t seed = 1;
  } generate_args;
  auto* generate = app.add_subcommand(
      "generate", "variational models: print samples drawn from the prior as CSV");
  generate->add_option("--model", generate_args.target.model, "model name")->required();
  generate->add_option("--version", generate_args.target.version,
                       "model version (default: active)");
  generate->add_option("--count", generate_args.count, "samples")->capture_default_str();
  generate->add_option("--seed", generate_args.seed, "same seed, same samples")
      ->capture_default_str();
  generate->callback(
      [&] { code = Generate(c, generate_args.target, generate_args.count, generate_args.seed); });

  TrainArgs ta;
  std::string train_path = "-";
  // One comma-separated value (a vector option would also swallow the data file after it).
  std::string time_features;
  auto* train =
      app.add_subcommand("train", "train a model version over RPC on a CSV, with a progress bar");
  train->add_option("--model", ta.model, "model name")->required();
  train->add_option("--entity", ta.entity, "train the per-entity model <model>/<entity>");
  train->add_option("--entity-column", ta.entity_column,
                    "bulk entity training: this CSV column names each row's entity, and one job "
                    "trains one model <model>/<entity> per entity on its rows");
  // Bad values are usage errors naming the flag and, for choices, the valid ones.
  const CLI::Validator widths(
      [](std::string& text) -> std::string {
        for (auto part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
          uint32_t v = 0;
          if (!absl::SimpleAtoi(part, &v) || v == 0) {
            return "'" + std::string(part) + "' is not a positive integer (widths look like 64,32)";
          }
        }
        return "";
      },
      "W1,W2,...");
  // Options left out take the server's defaults (one place: engine/spec.cc; README, "Defaults").
  train->add_option("--kind", ta.kind, "plain, denoising, sparse or variational (server default)")
      ->check(CLI::IsMember({"plain", "denoising", "sparse", "variational"}));
  train->add_option("--layers", ta.layers, "encoder hidden widths, e.g. 64,32")->check(widths);
  train->add_option("--decoder", ta.decoder, "decoder hidden widths (default: mirrored)")
      ->check(widths);
  train->add_option("--code", ta.code, "code (latent) size");
  train->add_option("--loss", ta.loss, "mse or bce (server default)")
      ->check(CLI::IsMember({"mse", "bce"}));
  train
      ->add_option("--activation", ta.activation,
                   "relu, tanh, sigmoid, elu, leaky-relu (server default)")
      ->check(CLI::IsMember({"relu", "tanh", "sigmoid", "elu", "leaky-relu", "linear"}));
  train->add_option("--noise", ta.noise, "denoising: gaussian or masking (server default)")
      ->check(CLI::IsMember({"gaussian", "masking"}));
  train->add_option("--noise-level", ta.noise_level, "denoising: std or masking probability");
  train->add_option("--l1", ta.l1, "sparse: L1 activity penalty");
  train->add_option("--kl-sparsity", ta.kl_sparsity, "sparse: KL sparsity weight");
  train->add_option("--rho", ta.rho, "sparse: target mean activation");
  train->add_option("--beta", ta.beta, "variational: KL weight");
  train->add_option("--epochs", ta.epochs, "server default")->check(CLI::Range(1u, 100000u));
  train->add_option("--batch-size", ta.batch, "server default")->check(CLI::Range(1u, 65536u));
  train->add_option("--lr", ta.lr, "Adam learning rate (server default)");
  train->add_option("--weight-decay", ta.weight_decay, "server default");
  train->add_option("--dropout", ta.dropout, "hidden-layer dropout (server default)");
  train->add_option("--validation-split", ta.validation_split, "held-out share (server default)")
      ->check(CLI::Range(0.0f, 1.0f));
  train->add_option("--patience", ta.patience,
                    "early-stopping patience in epochs (server default)");
  train->add_option("--seed", ta.seed, "server default");
  train->add_option("--scaling", ta.scaling, "standard, minmax or none (server default)")
      ->check(CLI::IsMember({"standard", "minmax", "none"}));
  train
      ->add_option("--percentile", ta.percentile,
                   "threshold percentile of held-out errors (server default)")
      ->check(CLI::Range(0.0, 100.0) & CLI::PositiveNumber);
  train->add_flag("--fine-tune", ta.fine_tune, "start from the active version's weights");
  train->add_option("--base-version", ta.base_version, "fine-tune from this version");
  train->add_flag("--no-activate", ta.no_activate, "keep the new version staged");
  train->add_flag("--retain", ta.retain,
                  "also keep these rows as the model's history for its retrain policy (set the "
                  "policy first: aectl autopilot)");
  train->add_flag("--detach", ta.detach, "print the job id and return at once");
  train->add_option("--description", ta.description);
  train->add_option(
      "--max-missing", ta.max_missing,
      "largest share of a row's features that may be missing (empty/NaN cells) for it to "
      "be scored, in [0, 1); default 0.5");
  train->add_option("--impute-refinements", ta.impute_refinements,
                    "times a missing value is refined by the model's reconstruction (0..10)");
  train->add_option("--window", ta.window,
                    "time series: samples are the last N rows (time steps) of the series, built by "
                    "the server; needs a 'timestamp' column");
  train->add_option("--stride", ta.stride, "with --window: train on every Nth window (default 1)");
  train
      ->add_option("--time-features", time_features,
                   "time series: add the time of day and/or week of each step (hour,weekday)")
      ->check([](const std::string& v) -> std::string {
        for (auto f : absl::StrSplit(v, ',', absl::SkipEmpty())) {
          if (f != "hour" && f != "weekday") return "time features are hour and weekday";
        }
        return "";
      });
  train->add_option("--max-gap-steps", ta.max_gap_steps,
                    "series: a gap of up to N missed time steps is handled by --gap-fill, a longer "
                    "one restarts the window (default: the window length)");
  train
      ->add_option("--gap-fill", ta.gap_fill,
                   "series: a short gap is closed up (join, the default) or its steps are missing "
                   "values (missing)")
      ->check(CLI::IsMember({"join", "missing"}));
  train
      ->add_option("--precision", ta.precision,
                   "arithmetic the version scores with: f32, or bf16 (default: the server's "
                   "--precision)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  train->add_option("file", train_path,
                    "training CSV (a label column is ignored); '-' reads stdin");
  train->add_flag("--from-recording", ta.from_recording,
                  "train on the rows recorded from ingest (aectl ingest record), not a file");
  train->callback([&] {
    ta.time_features = absl::StrSplit(time_features, ',', absl::SkipEmpty());
    code = Train(c, ta, train_path);
  });

  struct JobsArgs {
    std::string model, format = "text";
  } jobs_args;
  auto* jobs = app.add_subcommand("jobs", "list training jobs");
  jobs->add_option("--model", jobs_args.model, "only this model's jobs");
  add_list_format(jobs, &jobs_args.format);
  jobs->callback([&] { code = Jobs(c, jobs_args.model, jobs_args.format); });

  struct HistoryArgs {
    std::string model, entity, format = "text";
    uint32_t limit = 100;
  } history_args;
  auto* history = app.add_subcommand(
      "history", "the audit log: who trained, activated, deleted or changed what, and why");
  history->add_option("model", history_args.model, "only this model (and its entities)");
  history->add_option("--entity", history_args.entity, "only this entity's events");
  history->add_option("--limit", history_args.limit, "the newest N events (at most 10000)");
  add_list_format(history, &history_args.format);
  history->callback([&] {
    const HistoryArgs& a = history_args;
    code = History(c, a.model, a.entity, a.limit, a.format);
  });

  AutopilotArgs ap;
  auto* autopilot = app.add_subcommand(
      "autopilot",
      "set a model's retrain policy: keep the traffic it scores, retrain on it when a trigger "
      "fires, try the result in shadow and promote it by a rule (see README, Autopilot)");
  autopilot->add_option("model", ap.model)->required();
  autopilot->add_option("--entity", ap.entity);
  autopilot->add_option("--retain-rows", ap.retain_rows,
                        "keep the newest N scored rows (required unless --off)");
  autopilot->add_option("--retain-hours", ap.retain_hours, "and none older than this");
  autopilot->add_option("--flagged", ap.flagged, "flagged rows: keep, drop, keep-unless-incident")
      ->check(CLI::IsMember({"keep", "drop", "keep-unless-incident"}));
  autopilot->add_option("--drift-above", ap.drift_above, "trigger: drift KS above this ...");
  autopilot->add_option("--drift-samples", ap.drift_samples, "... for this many scored samples");
  autopilot->add_option("--grown-factor", ap.grown_factor,
                        "trigger: retained rows reach this x the rows of the last training");
  autopilot->add_option("--grown-rows", ap.grown_rows,
                        "trigger: this many rows retained since the active version");
  autopilot->add_option("--every-hours", ap.every_hours, "trigger: on a schedule");
  autopilot->add_option("--min-interval", ap.min_interval,
                        "seconds between automatic retrains (default 300)");
  autopilot->add_option("--min-rows", ap.min_rows, "retained rows a retrain needs (default 200)");
  autopilot->add_flag("--fine-tune", ap.fine_tune,
                      "start from the active version's weights (default: train afresh)");
  autopilot
      ->add_option("--promotion", ap.promotion,
                   "the new version: shadow (then promote by the rule), activate, or stage")
      ->check(CLI::IsMember({"shadow", "activate", "stage"}));
  autopilot->add_option("--shadow-samples", ap.shadow_samples, "shadow window (default 10000)");
  autopilot->add_option("--shadow-seconds", ap.shadow_seconds, "or this long (default 3600)");
  autopilot->add_option("--flag-ratio", ap.flag_ratio,
                        "MIN,MAX: promote when the candidate's flag rate is within MIN..MAX x its "
                        "target (default 0.25,4)");
  autopilot->add_flag("--off", ap.off, "remove the policy and delete the retained rows");
  autopilot->add_option("--format", ap.format, "text or json")
      ->check(CLI::IsMember({"text", "json"}));
  autopilot->callback([&] {
    if (!ap.off && ap.retain_rows == 0) {
      std::fprintf(stderr, "aectl: --retain-rows is required (or --off)\n");
      code = 2;
      return;
    }
    code = SetAutopilot(c, ap);
  });

  IngestArgs ig;
  auto* ingest = app.add_subcommand(
      "ingest",
      "bind a model's features to series sent by Prometheus remote write (POST /api/v1/write)");
  ingest->require_subcommand(1);
  auto* bind = ingest->add_subcommand("bind", "set the model's binding (replaces the old one)");
  bind->add_option("model", ig.model)->required();
  bind->add_option("--feature", ig.features,
                   "NAME=SELECTOR, once per feature: metric{label=\"v\",...} or rate(...) for "
                   "a counter")
      ->required();
  bind->add_option("--entity-label", ig.entity_label,
                   "the label naming the entity, e.g. instance (its model, else the generic one)");
  bind->add_option("--tolerance-ms", ig.tolerance_ms,
                   "samples this close in time form one row (default 2000)");
  bind->add_option("--flush-ms", ig.flush_ms,
                   "a row missing features is scored this much later (default 30000)");
  bind->add_option("--debounce-k", ig.debounce_k,
                   "alarm and incidents per entity: at least this many of its last --debounce-n "
                   "rows flagged");
  bind->add_option("--debounce-n", ig.debounce_n, "window of the alarm debounce");
  bind->add_option("--format", ig.format, "text or json")->check(CLI::IsMember({"text", "json"}));
  bind->callback([&] { code = SetIngest(c, ig); });
  struct RecordArgs {
    std::string model, format = "text";
    double minutes = 30;
    uint64_t max_rows = 0;
    bool stop = false;
  } rec;
  auto* record = ingest->add_subcommand(
      "record",
      "record the rows ingest assembles for a bound model, as a training set on the "
      "server (then: aectl train --model M --from-recording)");
  record->add_option("model", rec.model)->required();
  record->add_option("--minutes", rec.minutes, "how long (default 30)")
      ->check(CLI::Range(0.001, 527040.0));
  record->add_option("--max-rows", rec.max_rows, "stop at this many rows (default 100000)");
  record->add_flag("--stop", rec.stop, "end the running recording now, keeping its rows");
  record->add_option("--format", rec.format, "text or json")
      ->check(CLI::IsMember({"text", "json"}));
  record->callback(
      [&] { code = RecordIngest(c, rec.model, rec.minutes, rec.max_rows, rec.stop, rec.format); });
  auto* unbind = ingest->add_subcommand("unbind", "remove the model's binding");
  unbind->add_option("model", ig.model)->required();
  unbind->callback([&] {
    ig.off = true;
    code = SetIngest(c, ig);
  });

  Target retrain_args;
  auto* retrain = app.add_subcommand(
      "retrain", "retrain a model now on its retained rows, as its retrain policy says");
  retrain->add_option("model", retrain_args.model)->required();
  retrain->add_option("--entity", retrain_args.entity);
  retrain->callback([&] { code = Retrain(c, retrain_args.model, retrain_args.entity); });

  struct ShadowArgs {
    std::string model, entity, format = "text";
    uint64_t start = 0;
  } shadow_args;
  auto* shadow = app.add_subcommand(
      "shadow",
      "the shadow report: a candidate version scoring live traffic beside the active one");
  shadow->add_option("model", shadow_args.model)->required();
  shadow->add_option("--entity", shadow_args.entity);
  shadow->add_option("--start", shadow_args.start,
                     "put this staged version in shadow (the policy's window and rule)");
  shadow->add_option("--format", shadow_args.format, "text or json")
      ->check(CLI::IsMember({"text", "json"}));
  shadow->callback([&] {
    const ShadowArgs& a = shadow_args;
    code = ShadowCmd(c, a.model, a.entity, a.start, a.format);
  });

  std::string job_id;
  auto* cancel = app.add_subcommand("cancel", "cancel a training job");
  cancel->add_option("job", job_id, "job id")->required();
  cancel->callback([&] { code = Cancel(c, job_id); });

  Target activate_args;
  auto* activate =
      app.add_subcommand("activate", "make a version active (rollback = an older one)");
  activate->add_option("model", activate_args.model)->required();
  activate->add_option("version", activate_args.version)->required();
  activate->add_option("--entity", activate_args.entity);
  activate->callback([&] {
    code = Activate(c, activate_args.model, activate_args.entity, activate_args.version);
  });

  struct DeleteArgs {
    Target target;
    bool force = false;
  } delete_args;
  auto* del = app.add_subcommand("delete", "delete a version, or a whole model without --version");
  del->add_option("model", delete_args.target.model)->required();
  del->add_option("--version", delete_args.target.version);
  del->add_option("--entity", delete_args.target.entity);
  del->add_flag("--force", delete_args.force, "also when it is active");
  del->callback([&] {
    const Target& t = delete_args.target;
    code = Delete(c, t.model, t.entity, t.version, delete_args.force);
  });

  struct ThresholdArgs {
    Target target;
    std::string level, critical;
    bool clear_critical = false;
    double percentile = 0;
  } threshold_args;
  auto* threshold =
      app.add_subcommand("threshold", "change a version's threshold without retraining");
  threshold->add_option("model", threshold_args.target.model)->required();
  threshold->add_option("--version", threshold_args.target.version, "default: active");
  threshold->add_option("--entity", threshold_args.target.entity);
  threshold->add_option("--percentile", threshold_args.percentile,
                        "shorthand for --set percentile:P");
  threshold->add_option("--set", threshold_args.level,
                        "METHOD:VALUE (percentile, mean-std, median-mad, fpr, fixed)");
  threshold->add_option("--critical", threshold_args.critical, "second level, METHOD:VALUE");
  threshold->add_flag("--clear-critical", threshold_args.clear_critical);
  threshold->callback([&] {
    ThresholdArgs& a = threshold_args;
    if (a.percentile > 0) a.level = "percentile:" + std::to_string(a.percentile);
    code = Threshold(c, a.target.model, a.target.entity, a.target.version, a.level, a.critical,
                     a.clear_critical);
  });

  struct PolicyArgs {
    Target target;
    float max_missing = -1;       // -1 = unchanged
    int impute_refinements = -1;  // -1 = unchanged
    int max_gap_steps = -1;       // -1 = unchanged
    std::string gap_fill;         // empty = unchanged
    std::string precision;        // empty = unchanged
  } policy_args;
  auto* policy = app.add_subcommand(
      "policy",
      "change how a version treats missing values, or its arithmetic, without retraining");
  policy->add_option("model", policy_args.target.model)->required();
  policy->add_option("--version", policy_args.target.version, "default: active");
  policy->add_option("--entity", policy_args.target.entity);
  policy->add_option(
      "--max-missing", policy_args.max_missing,
      "largest share of a sample's features that may be missing, in [0, 1); 0 = none");
  policy->add_option("--impute-refinements", policy_args.impute_refinements,
                     "times a missing value is refined by the model's reconstruction (0..10)");
  policy->add_option(
      "--max-gap-steps", policy_args.max_gap_steps,
      "series models: a gap of up to N missed time steps is handled by --gap-fill, a "
      "longer one restarts the window");
  policy
      ->add_option("--gap-fill", policy_args.gap_fill,
                   "series models: a short gap is closed up (join) or its steps are missing values "
                   "(missing)")
      ->check(CLI::IsMember({"join", "missing"}));
  policy
      ->add_option("--precision", policy_args.precision,
                   "arithmetic the version scores with: f32, or bf16 (bfloat16 layers)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  policy->callback([&] {
    const PolicyArgs& a = policy_args;
    code = Policy(c, a.target.model, a.target.entity, a.target.version, a.max_missing,
                  a.impute_refinements, a.max_gap_steps, a.gap_fill, a.precision);
  });

  struct WatchArgs {
    std::string model;
    uint32_t min_severity = 0;
    uint64_t count = 0;
    double seconds = 0;
    bool incidents = false;
  } watch_args;
  auto* watch = app.add_subcommand(
      "watch",
      "print flagged samples as they are scored (the anomaly feed); with --server a,b or "
      "dns:///name:port, the merged feeds of every replica");
  watch->add_option("model", watch_args.model, "only this model (default: all)");
  watch->add_option("--min-severity", watch_args.min_severity, "2 = critical only");
  watch->add_flag("--incidents", watch_args.incidents,
                  "incident changes (opened, updated, closed) of debounced streams and ingest "
                  "bindings instead of flagged samples");
  watch->add_option("--count", watch_args.count,
                    "stop after this many events (0 = run until interrupted)");
  watch
      ->add_option("--seconds", watch_args.seconds,
                   "stop after this many seconds (0 = run until interrupted)")
      ->check(CLI::NonNegativeNumber);
  watch->callback([&] {
    const WatchArgs& a = watch_args;
    code = Watch(c, a.model, a.min_severity, a.count, a.seconds, a.incidents);
  });

  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) add_globals(sub);
  try {
    app.parse(argc, argv);  // runs the chosen subcommand's callback
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every usage error exits 2 (failed calls exit 1).
    return app.exit(e) == 0 ? 0 : 2;
  }
  return code;
}
