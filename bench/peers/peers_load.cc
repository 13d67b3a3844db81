// The C++ side of bench/peers: the aeserve engine in-process, and a StreamScore load generator
// that drives any server speaking aeserve.v1.Scoring (aeserve itself, or the Python peer).
//
//   peers_load --engine --layers 38,64,32,8 --batch 256 [--threads 1] [--seconds 2]
//   peers_load --target 127.0.0.1:50051 --model m --features 38 --batch 256 --streams 4 [--seconds
//   2]
// Prints one line: "samples_per_second <value>".
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "aeserve/v1/scoring.grpc.pb.h"
#include "bench/stream_load.h"
#include "engine/dnnl_util.h"
#include "engine/model.h"
#include "engine/params.h"
#include "engine/spec.h"
#include "grpcpp/grpcpp.h"

namespace {

using namespace aeserve;
using Clock = std::chrono::steady_clock;

double EngineRate(const std::vector<uint32_t>& layers, uint32_t batch, int threads,
                  double seconds) {
  v1::ModelSpec s;
  s.set_num_features(layers[0]);
  for (size_t i = 1; i + 1 < layers.size(); ++i) s.add_encoder_units(layers[i]);
  s.set_code_size(layers.back());
  s.set_neighbors(0);  // the same autoencoder as the PyTorch peer
  auto spec = *engine::ResolveSpec(s, layers[0]);
  std::mt19937_64 rng(1);
  engine::Params p = engine::InitParams(spec, rng);
  v1::ModelFile f;
  f.set_format_version(1);
  *f.mutable_spec() = spec;
  for (uint32_t j = 0; j < layers[0]; ++j) {
    f.mutable_scaler()->add_offset(0);
    f.mutable_scaler()->add_scale(1);
  }
  engine::ToModelFile(p, f);
  f.add_calibration_errors(1);
  f.set_threshold_value(1);
  engine::ScopedThreads scoped(threads);
  auto model = *engine::Model::Create(f, {threads, 4096});
  auto ctx = model->NewContext();
  std::vector<float> x(size_t{batch} * layers[0]);
  std::normal_distribution<float> n(0, 1);
  for (float& v : x) v = n(rng);
  engine::ScoreResult r;
  (void)model->Score(*ctx, x, {}, &r);
  uint64_t done = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  do {
    (void)model->Score(*ctx, x, {}, &r);
    done += batch;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < seconds);
  return done / elapsed;
}

double StreamRate(const std::string& target, const std::string& model, uint32_t d, uint32_t batch,
                  int streams, double seconds) {
  std::mt19937_64 rng(1);
  std::normal_distribution<float> n(0, 1);
  v1::Samples samples;
  samples.set_num_features(d);
  for (size_t i = 0; i < size_t{batch} * d; ++i) samples.add_values(n(rng));
  return bench::StreamRate<v1::Scoring>(target, model, samples, streams, seconds);
}

}  // namespace

int main(int argc, char** argv) {
  bool engine_mode = false;
  std::string target, model, layers_arg;
  uint32_t d = 0, batch = 256;
  int streams = 1, threads = 1;
  double seconds = 2;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--engine")
      engine_mode = true;
    else if (a == "--layers")
      layers_arg = next();
    else if (a == "--target")
      target = next();
    else if (a == "--model")
      model = next();
    else if (a == "--features")
      d = static_cast<uint32_t>(std::stoul(next()));
    else if (a == "--batch")
      batch = static_cast<uint32_t>(std::stoul(next()));
    else if (a == "--streams")
      streams = std::stoi(next());
    else if (a == "--threads")
      threads = std::stoi(next());
    else if (a == "--seconds")
      seconds = std::stod(next());
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  double rate = 0;
  if (engine_mode) {
    std::vector<uint32_t> layers;
    for (auto part : absl::StrSplit(layers_arg, ',')) {
      uint32_t v = 0;
      if (!absl::SimpleAtoi(part, &v)) return 2;
      layers.push_back(v);
    }
    if (layers.size() < 2) return 2;
    rate = EngineRate(layers, batch, threads, seconds);
  } else {
    rate = StreamRate(target, model, d, batch, streams, seconds);
  }
  std::printf("samples_per_second %.0f\n", rate);
  return 0;
}
