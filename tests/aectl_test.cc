// The aectl command line against a real server: each subcommand, output formats, exit codes, and
// bad arguments.
#include <sys/wait.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_split.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "tests/server_process.h"
#include "tests/test_models.h"
#include "tests/wait_for.h"

namespace aeserve::testing {
namespace {

struct Result {
  int code = -1;
  std::string out, err;
};

Result Aectl(const std::string& args, const std::string& stdin_file = "") {
  static int n = 0;
  const std::string err_path =
      "/tmp/aectl_test_err_" + std::to_string(getpid()) + "_" + std::to_string(n++);
  std::string cmd = std::string(AECTL_BINARY) + " " + args + " 2>" + err_path;
  if (!stdin_file.empty()) cmd += " < " + stdin_file;
  Result r;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[65536];
  size_t got;
  while ((got = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, got);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream e(err_path);
  std::stringstream ss;
  ss << e.rdbuf();
  r.err = ss.str();
  std::remove(err_path.c_str());
  return r;
}

int Lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

// The demo store, trained once per build by the aectl_demo_store ctest fixture (this test, run
// with --gtest_also_run_disabled_tests); every AectlTest process serves a copy of it.
TEST(AectlDemoStore, DISABLED_Train) {
  std::filesystem::remove_all(AECTL_DEMO_STORE);
  ServerProcess p;
  ASSERT_TRUE(
      p.Start(AESERVE_BINARY,
              {"--host=127.0.0.1", "--port=0", "--metrics_port=0", "--model_dir=" AECTL_DEMO_STORE,
               "--demo_csv=" AESERVE_SOURCE_DIR "/deploy/demo/smd-machine-3-4-train.csv"}))
      << p.log();
  const std::string server = "--server 127.0.0.1:" + std::to_string(p.port());
  ASSERT_TRUE(
      WaitFor([&] { return Aectl(server + " health").code == 0; }, std::chrono::seconds(120)))
      << p.log();
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(20), 0) << p.log();
  EXPECT_TRUE(std::filesystem::exists(AECTL_DEMO_STORE "/demo/1/model.pb"));
}

class AectlTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("aeserve_aectl");
    ASSERT_TRUE(std::filesystem::exists(AECTL_DEMO_STORE "/demo/1/model.pb"))
        << "run through ctest: the aectl_demo_store fixture trains the demo store first";
    std::filesystem::copy(AECTL_DEMO_STORE, dir_->path(), std::filesystem::copy_options::recursive);
    server_ = new ServerProcess;
    ASSERT_TRUE(server_->Start(AESERVE_BINARY, {"--host=127.0.0.1", "--port=0", "--metrics_port=0",
                                                "--model_dir=" + dir_->path()}));
    server_arg_ = "--server 127.0.0.1:" + std::to_string(server_->port());
    ASSERT_TRUE(
        WaitFor([] { return Aectl(server_arg_ + " health").code == 0; }, std::chrono::seconds(30)))
        << server_->log();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete dir_;
  }
  static std::string Train() { return AESERVE_SOURCE_DIR "/deploy/demo/smd-machine-3-4-train.csv"; }
  static std::string Test() { return AESERVE_SOURCE_DIR "/deploy/demo/smd-machine-3-4-test.csv"; }
  static inline TempDir* dir_ = nullptr;
  static inline ServerProcess* server_ = nullptr;
  static inline std::string server_arg_;
};

TEST_F(AectlTest, HealthAndModels) {
  auto h = Aectl(server_arg_ + " health");
  EXPECT_EQ(h.code, 0);
  EXPECT_EQ(h.out, "SERVING\n");
  auto m = Aectl(server_arg_ + " models");
  EXPECT_EQ(m.code, 0);
  EXPECT_NE(m.out.find("demo"), std::string::npos);
  EXPECT_NE(m.out.find("READY"), std::string::npos);
  auto one = Aectl(server_arg_ + " model demo");
  EXPECT_EQ(one.code, 0);
  EXPECT_NE(one.out.find("num_features: 38"), std::string::npos) << one.out;
  // --format json: one JSON document with the API's field names, for pipes (#16).
  for (const std::string cmd : {"model demo", "models", "jobs"}) {
    auto j = Aectl(server_arg_ + " " + cmd + " --format json");
    ASSERT_EQ(j.code, 0) << cmd << ": " << j.err;
    EXPECT_EQ(Lines(j.out), 1) << cmd << ": " << j.out.substr(0, 300);
    EXPECT_EQ(j.out.front(), '{') << cmd;
  }
  EXPECT_NE(Aectl(server_arg_ + " model demo --format json").out.find("\"num_features\":38"),
            std::string::npos);
  EXPECT_NE(Aectl(server_arg_ + " models --format json").out.find("\"name\":\"demo\""),
            std::string::npos);
}

TEST_F(AectlTest, ScoreCsvJsonAndStdin) {
  auto csv = Aectl(server_arg_ + " score --model demo " + Test());
  ASSERT_EQ(csv.code, 0) << csv.err;
  EXPECT_EQ(Lines(csv.out), 1001);  // header + one line per row
  EXPECT_EQ(csv.out.rfind("row,id,error,score,anomalous,p_value,top_features\n", 0), 0u);
  int flagged = 0;
  std::istringstream lines(csv.out);
  std::string line;
  std::getline(lines, line);
  while (std::getline(lines, line)) {
    std::vector<std::string> cells;
    std::stringstream ls(line);
    std::string cell;
    while (std::getline(ls, cell, ',')) cells.push_back(cell);
    ASSERT_GE(cells.size(), 6u) << line;
    flagged += cells[4] == "1";
  }
  EXPECT_NE(csv.err.find("scored 1000 samples, " + std::to_string(flagged) + " anomalous"),
            std::string::npos)
      << csv.err;
  EXPECT_NE(csv.err.find("labels: 92 anomalies"), std::string::npos) << csv.err;

  auto json = Aectl(server_arg_ + " score --model demo --format json --top-k 2 " + Test());
  ASSERT_EQ(json.code, 0);
  EXPECT_EQ(Lines(json.out), 1000);
  EXPECT_EQ(json.out.rfind("{\"row\":0,", 0), 0u) << json.out.substr(0, 200);
  EXPECT_NE(json.out.find("\"top_features\":[{\"feature\":\"f"), std::string::npos);

  // Ids are escaped in JSON (an id with a quote and a backslash), a skipped sample's score is null.
  const std::string ids_csv = "/tmp/aectl_test_ids_" + std::to_string(getpid()) + ".csv";
  {
    std::ifstream in(Test());
    std::ofstream out(ids_csv);
    std::string line;
    for (int n = 0; n < 3 && std::getline(in, line); ++n) {
      if (n == 2) {  // the second data row: every feature missing
        std::string blank(std::count(line.begin(), line.end(), ','), ',');
        line = blank + line.substr(line.rfind(',') + 1);
      }
      out << (n == 0 ? "id" : (n == 1 ? "a\"b\\c" : "gap")) << "," << line << "\n";
    }
  }
  auto escaped = Aectl(server_arg_ + " score --model demo --format json " + ids_csv);
  ASSERT_EQ(escaped.code, 0) << escaped.err;
  EXPECT_NE(escaped.out.find("\"id\":\"a\\\"b\\\\c\""), std::string::npos) << escaped.out;
  EXPECT_NE(escaped.out.find("\"score\":null"), std::string::npos) << escaped.out;
  EXPECT_NE(escaped.out.find("\"skipped\":true"), std::string::npos) << escaped.out;
  std::remove(ids_csv.c_str());

  auto piped = Aectl(server_arg_ + " score --model demo -", Test());
  ASSERT_EQ(piped.code, 0);
  EXPECT_EQ(piped.out, csv.out);
}

// Rewrites the demo test CSV: columns `a` and `b` swapped (header and values), `extra` more
// columns appended, and cell `blank_col` emptied in the first `blank_rows` rows.
std::string RewriteCsv(const std::string& src, const std::string& tag, int a, int b, bool extra,
                       int blank_col = -1, int blank_rows = 0) {
  const std::string out_path = "/tmp/aectl_test_" + tag + "_" + std::to_string(getpid()) + ".csv";
  std::ifstream in(src);
  std::ofstream out(out_path);
  std::string line;
  for (int n = 0; std::getline(in, line); ++n) {
    std::vector<std::string> cells;
    std::stringstream ls(line);
    std::string cell;
    while (std::getline(ls, cell, ',')) cells.push_back(cell);
    std::swap(cells[a], cells[b]);
    if (n > 0 && n <= blank_rows && blank_col >= 0) cells[blank_col] = "";
    if (extra) cells.push_back(n == 0 ? "cpu_user" : "0.5");
    for (size_t i = 0; i < cells.size(); ++i) out << (i ? "," : "") << cells[i];
    out << "\n";
  }
  return out_path;
}

// Columns by name (#14): a CSV with two columns swapped scores exactly as the original (aectl
// sends the header), and by position it does not; an unknown column is refused unless dropped;
// empty cells are missing values; `aectl policy` changes what the model accepts. Global options
// also work after the subcommand (#16).
TEST_F(AectlTest, ColumnsByNameAndGaps) {
  const std::string swapped = RewriteCsv(Test(), "swapped", 0, 5, false);
  auto want = Aectl(server_arg_ + " score --model demo " + Test());
  ASSERT_EQ(want.code, 0) << want.err;
  auto got = Aectl("score --model demo " + swapped + " " + server_arg_);
  ASSERT_EQ(got.code, 0) << got.err;
  EXPECT_EQ(got.out, want.out);
  auto positional = Aectl("score --model demo --positional " + swapped + " " + server_arg_);
  ASSERT_EQ(positional.code, 0) << positional.err;
  EXPECT_NE(positional.out, want.out);

  const std::string extra = RewriteCsv(Test(), "extra", 0, 0, true);
  auto refused = Aectl(server_arg_ + " score --model demo " + extra);
  EXPECT_NE(refused.code, 0);
  EXPECT_NE(refused.err.find("unknown feature 'cpu_user'"), std::string::npos) << refused.err;
  auto dropped = Aectl(server_arg_ + " score --model demo --ignore-extra-columns " + extra);
  ASSERT_EQ(dropped.code, 0) << dropped.err;
  EXPECT_EQ(dropped.out, want.out);

  const std::string gaps = RewriteCsv(Test(), "gaps", 0, 0, false, 3, 10);
  auto filled = Aectl(server_arg_ + " score --model demo " + gaps);
  ASSERT_EQ(filled.code, 0) << filled.err;
  EXPECT_NE(filled.err.find("10 samples had missing values"), std::string::npos) << filled.err;
  auto strict = Aectl(server_arg_ + " policy demo --max-missing 0");
  ASSERT_EQ(strict.code, 0) << strict.err;
  auto none = Aectl(server_arg_ + " score --model demo " + gaps);
  EXPECT_NE(none.code, 0);
  EXPECT_NE(none.err.find("missing value (NaN) at row 0, feature 'f3'"), std::string::npos)
      << none.err;
  ASSERT_EQ(Aectl(server_arg_ + " policy demo --max-missing 0.5").code, 0);
  EXPECT_EQ(Aectl(server_arg_ + " score --model demo " + gaps).out, filled.out);
  for (const auto& f : {swapped, extra, gaps}) std::remove(f.c_str());
}

// `aectl policy --precision` switches a version to bf16 and back: `aectl model` shows what the
// version scores with, bf16 moves the scores a little, f32 gives the first answer back exactly.
TEST_F(AectlTest, PolicyChangesThePrecision) {
  if (!engine::Model::Bf16Supported()) GTEST_SKIP() << "this CPU has no AVX-512";
  auto f32 = Aectl(server_arg_ + " score --model demo " + Test());
  ASSERT_EQ(f32.code, 0) << f32.err;
  auto set = Aectl(server_arg_ + " policy demo --precision bf16");
  ASSERT_EQ(set.code, 0) << set.err;
  auto shown = Aectl(server_arg_ + " model demo");
  EXPECT_NE(shown.out.find("precision: PRECISION_BF16"), std::string::npos) << shown.out;
  auto bf16 = Aectl(server_arg_ + " score --model demo " + Test());
  ASSERT_EQ(bf16.code, 0) << bf16.err;
  EXPECT_NE(bf16.out, f32.out);
  EXPECT_EQ(std::count(bf16.out.begin(), bf16.out.end(), '\n'),
            std::count(f32.out.begin(), f32.out.end(), '\n'));
  EXPECT_NE(Aectl(server_arg_ + " policy demo --precision f16").code, 0);
  ASSERT_EQ(Aectl(server_arg_ + " policy demo --precision f32").code, 0);
  EXPECT_EQ(Aectl(server_arg_ + " score --model demo " + Test()).out, f32.out);
}

// A replay shorter than --stats-every still ends with one stats line (over the whole replay).
TEST_F(AectlTest, StreamPrintsAFinalStatsLine) {
  auto r = Aectl(server_arg_ + " stream --model demo --stats-every 3600 " + Test());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("stats: 1000 samples in"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("the whole replay"), std::string::npos) << r.err;
}

TEST_F(AectlTest, StreamFlagsWhatScoreFlags) {
  auto score = Aectl(server_arg_ + " score --model demo " + Test());
  auto stream = Aectl(server_arg_ +
                      " stream --model demo --batch 64 --rate 20000 --stats-every 0.02 " + Test());
  ASSERT_EQ(stream.code, 0) << stream.err;
  // The stream prints the flagged rows only, with the same summary as score.
  const auto summary = [](const std::string& err) { return err.substr(err.find("scored")); };
  EXPECT_EQ(summary(stream.err).substr(0, 40), summary(score.err).substr(0, 40));
  EXPECT_NE(stream.err.find("stats:"), std::string::npos);
}

// Debounced streams report incidents: each alarm raised and cleared, and their number.
TEST_F(AectlTest, StreamPrintsIncidents) {
  auto r = Aectl(server_arg_ + " stream --model demo --batch 100 --debounce-k 3 --debounce-n 5 " +
                 "--stream-id demo-replay --top-k 2 " + Test());
  ASSERT_EQ(r.code, 0) << r.err;
  size_t raised = 0, cleared = 0;
  for (size_t at = r.err.find("alarm raised at row"); at != std::string::npos;
       at = r.err.find("alarm raised at row", at + 1)) {
    ++raised;
  }
  for (size_t at = r.err.find("alarm cleared: rows"); at != std::string::npos;
       at = r.err.find("alarm cleared: rows", at + 1)) {
    ++cleared;
  }
  EXPECT_GT(raised, 0u) << r.err;
  EXPECT_GE(cleared + 1, raised) << r.err;  // the last one may still be open at the end
  EXPECT_LE(cleared, raised);
  EXPECT_NE(
      r.err.find(std::to_string(raised) + " incidents (alarm: 3 of the last 5 samples flagged)"),
      std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find(", top f"), std::string::npos) << r.err;  // the worst sample's features
}

// A CSV series: hourly rows with a 'timestamp' column (NAB's format), a daily cycle, and in the
// second file a spike at `spike_row` (-1 = none).
std::string SeriesCsv(const std::string& tag, int first_hour, int hours, int spike_row,
                      bool with_time = true) {
  const std::string path = "/tmp/aectl_series_" + tag + "_" + std::to_string(getpid()) + ".csv";
  std::ofstream out(path);
  out << (with_time ? "timestamp," : "") << "load,temp\n";
  for (int i = 0; i < hours; ++i) {
    const int h = first_hour + i;
    char stamp[32];
    std::snprintf(stamp, sizeof stamp, "2024-01-%02d %02d:00:00", 1 + h / 24, h % 24);
    const double load = std::sin(2 * M_PI * h / 24) + (i == spike_row ? 4 : 0);
    if (with_time) out << stamp << ",";
    out << load << "," << 0.5 * std::cos(2 * M_PI * h / 24) + 1 << "\n";
  }
  return path;
}

// Series models: train on the raw series with --window, then score and stream one row per step.
TEST_F(AectlTest, SeriesTrainScoreStream) {
  const std::string train = SeriesCsv("train", 0, 24 * 20, -1);
  const std::string test = SeriesCsv("test", 24 * 20, 48, 30);
  auto t = Aectl(server_arg_ +
                 " train --model series --window 6 --time-features hour "
                 "--epochs 30 " +
                 train);
  ASSERT_EQ(t.code, 0) << t.err;
  EXPECT_NE(t.out.find("model series version 1 active"), std::string::npos) << t.out;
  auto m = Aectl(server_arg_ + " model series --format json");
  EXPECT_NE(m.out.find("\"interval_ms\":\"3600000\""), std::string::npos) << m.out.substr(0, 600);

  auto score = Aectl(server_arg_ + " score --model series " + test);
  ASSERT_EQ(score.code, 0) << score.err;
  EXPECT_EQ(Lines(score.out), 1 + 48);  // every row answered
  EXPECT_NE(score.err.find("5 rows were warming up"), std::string::npos) << score.err;
  // The spike (row 30) is flagged: its line reads "30,<its timestamp>,...,1,".
  const size_t at = score.out.find("\n30,2024-01-22 06:00:00,");
  ASSERT_NE(at, std::string::npos) << score.out;
  const std::string line = score.out.substr(at + 1, score.out.find('\n', at + 1) - at - 1);
  int commas = 0;
  size_t flag = 0;
  for (size_t i = 0; i < line.size() && commas < 4; ++i) {
    if (line[i] == ',' && ++commas == 4) flag = i + 1;
  }
  EXPECT_EQ(line[flag], '1') << line;

  // In calls of 10 rows, each call repeats the 5 rows before it for its window: the same answers.
  auto small = Aectl(server_arg_ + " score --model series --batch 10 " + test);
  ASSERT_EQ(small.code, 0) << small.err;
  EXPECT_EQ(small.out, score.out);
  EXPECT_NE(small.err.find("5 rows were warming up"), std::string::npos) << small.err;

  // Streamed in batches of 7, the window carries across them: the same 5 warm up.
  auto stream = Aectl(server_arg_ + " stream --model series --batch 7 " + test);
  ASSERT_EQ(stream.code, 0) << stream.err;
  EXPECT_NE(stream.err.find("5 rows were warming up"), std::string::npos) << stream.err;
  EXPECT_NE(stream.out.find("\n30,2024-01-22 06:00:00,"), std::string::npos) << stream.out;

  // Without times: refused with the reason.
  const std::string untimed = SeriesCsv("untimed", 0, 48, -1, false);
  auto no_window = Aectl(server_arg_ + " train --model series --window 6 " + untimed);
  EXPECT_EQ(no_window.code, 2);
  EXPECT_NE(no_window.err.find("need a 'timestamp' column"), std::string::npos) << no_window.err;
  auto no_times = Aectl(server_arg_ + " score --model series " + untimed);
  EXPECT_EQ(no_times.code, 1);
  EXPECT_NE(no_times.err.find("every row needs a timestamp"), std::string::npos) << no_times.err;
  EXPECT_NE(no_times.err.find("the file has no 'timestamp' column"), std::string::npos)
      << no_times.err;
  for (const auto& f : {train, test, untimed}) std::remove(f.c_str());
}

// Per-entity models from the CLI: listed with their entity, scored and streamed by entity.
TEST_F(AectlTest, EntityModels) {
  ASSERT_EQ(
      Aectl(server_arg_ + " train --model ent --layers 16 --code 4 --epochs 2 " + Test()).code, 0);
  auto t = Aectl(server_arg_ +
                 " train --model ent --entity host-7 --layers 16 --code 4 --epochs 2 --seed 2 " +
                 Test());
  ASSERT_EQ(t.code, 0) << t.err;
  auto m = Aectl(server_arg_ + " models");
  EXPECT_NE(m.out.find("ent/host-7"), std::string::npos) << m.out;
  auto own = Aectl(server_arg_ + " score --model ent --entity host-7 --version 1 " + Test());
  ASSERT_EQ(own.code, 0) << own.err;
  auto generic = Aectl(server_arg_ + " score --model ent --entity host-9 " + Test());
  ASSERT_EQ(generic.code, 0) << generic.err;  // no such entity model: the generic one scores
  EXPECT_NE(own.out, generic.out);
  auto streamed = Aectl(server_arg_ + " stream --model ent --entity host-7 --version 1 " + Test());
  ASSERT_EQ(streamed.code, 0) << streamed.err;
  auto missing = Aectl(server_arg_ + " stream --model ent --entity host-7 --version 9 " + Test());
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("aectl: NOT_FOUND"), std::string::npos) << missing.err;
}

// --entity-column: one upload, one model per entity; an entity with too few rows fails alone
// (exit 3), and each entity's outcome is one line.
TEST_F(AectlTest, BulkEntityTraining) {
  std::ifstream in(Test());
  const std::string path = dir_->path() + "/bulk.csv";
  std::ofstream out(path);
  std::string line;
  std::getline(in, line);
  out << line << ",host\n";
  for (int r = 0; std::getline(in, line) && r < 604; ++r) {
    out << line << "," << (r < 4 ? "db-9" : r % 2 == 0 ? "web-1" : "web:2") << "\n";
  }
  out.close();
  auto t = Aectl(server_arg_ + " train --model bulk --entity-column host --layers 16 --code 4 " +
                 "--epochs 2 " + path);
  EXPECT_EQ(t.code, 3) << t.err;
  EXPECT_NE(t.out.find("model bulk/web-1 version 1 active (300 rows"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("model bulk/web:2 version 1 active (300 rows"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("model bulk/db-9 FAILED: training data: 4 rows"), std::string::npos)
      << t.out;
  EXPECT_NE(t.err.find("1 of 3 entities failed"), std::string::npos) << t.err;
  // Progress in a log (stderr is not a terminal here): a line when it changes, never one twice.
  const std::vector<std::string> lines = absl::StrSplit(t.err, '\n');
  for (size_t i = 1; i < lines.size(); ++i) {
    if (!lines[i].empty()) {
      EXPECT_NE(lines[i], lines[i - 1]) << t.err;
    }
  }
  auto m = Aectl(server_arg_ + " models");
  EXPECT_NE(m.out.find("bulk/web:2"), std::string::npos) << m.out;
  auto own = Aectl(server_arg_ + " score --model bulk --entity web-1 " + Test());
  EXPECT_EQ(own.code, 0) << own.err;
  auto missing = Aectl(server_arg_ + " train --model bulk --entity-column rack " + path);
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("no column 'rack'"), std::string::npos) << missing.err;
}

// Two replicas on one store: `aectl watch --server A,B` merges both anomaly feeds (each event
// printed once, from whichever replica scored it); --lb-policy and --channel-arg are accepted.
TEST_F(AectlTest, WatchMergesTheFeedsOfEveryReplica) {
  ServerProcess other;
  ASSERT_TRUE(other.Start(AESERVE_BINARY, {"--host=127.0.0.1", "--port=0", "--metrics_port=0",
                                           "--model_dir=" + dir_->path()}));
  const std::string a = "127.0.0.1:" + std::to_string(server_->port());
  const std::string b = "127.0.0.1:" + std::to_string(other.port());
  ASSERT_TRUE(WaitFor([&] { return Aectl("--server " + b + " health").code == 0; },
                      std::chrono::seconds(30)))
      << other.log();
  // Three rows far from anything the demo model learned: flagged wherever they are scored.
  std::ifstream in(Test());
  const std::string path = dir_->path() + "/far.csv";
  std::ofstream out(path);
  std::string header, row;
  std::getline(in, header);
  std::getline(in, row);
  out << header << "\n";
  std::vector<std::string> cells = absl::StrSplit(row, ',');
  for (int r = 0; r < 3; ++r) {
    for (size_t j = 0; j < cells.size(); ++j) out << (j ? "," : "") << 1000 + 37 * (j + r);
    out << "\n";
  }
  out.close();
  ServerProcess watch;  // its output is read as it comes (Start's port wait times out at once)
  watch.Start(AECTL_BINARY,
              {"watch", "--server", a + "," + b, "--lb-policy", "pick_first", "--channel-arg",
               "grpc.enable_retries=0"},
              0.01);
  ASSERT_TRUE(WaitFor(
      [&] {
        for (const auto& [server, id] : {std::pair{a, "from-a"}, std::pair{b, "from-b"}}) {
          Aectl("--server " + server + " stream --model demo --stream-id " + id + " " + path);
        }
        const std::string log = watch.log();
        return log.find(",from-a,") != std::string::npos &&
               log.find(",from-b,") != std::string::npos;
      },
      std::chrono::seconds(30)))
      << watch.log();
  watch.Signal(SIGTERM);
  watch.Wait(10);
  auto bad = Aectl("--server " + a + " --channel-arg nokeyvalue health");
  EXPECT_EQ(bad.code, 2) << bad.err;
}

// encode, reconstruct and generate print CSV: a header, then one line per row.
TEST_F(AectlTest, EncodeReconstructGenerate) {
  auto codes = Aectl(server_arg_ + " encode --model demo " + Test());
  ASSERT_EQ(codes.code, 0) << codes.err;
  EXPECT_EQ(codes.out.rfind("row,code0,", 0), 0u) << codes.out.substr(0, 80);
  EXPECT_EQ(Lines(codes.out), 1 + 1000);  // the demo test file's rows
  auto rec = Aectl(server_arg_ + " reconstruct --model demo " + Test());
  ASSERT_EQ(rec.code, 0) << rec.err;
  EXPECT_EQ(rec.out.rfind("row,f0,f1,", 0), 0u) << rec.out.substr(0, 80);  // the model's names
  EXPECT_EQ(Lines(rec.out), 1 + 1000);
  auto gen = Aectl(server_arg_ + " generate --model demo --count 5");
  EXPECT_EQ(gen.code, 1);  // the demo model is not variational
  EXPECT_NE(gen.err.find("aectl: "), std::string::npos) << gen.err;
}

TEST_F(AectlTest, TrainThresholdActivate) {
  auto t = Aectl(server_arg_ + " train --model t2 --layers 16 --code 4 --epochs 5 " + Test());
  ASSERT_EQ(t.code, 0) << t.err;
  EXPECT_NE(t.out.find("model t2 version 1 active"), std::string::npos) << t.out;
  EXPECT_NE(t.err.find("SUCCEEDED epoch 5/5"), std::string::npos);
  auto detached =
      Aectl(server_arg_ +
            " train --model t2 --layers 16 --code 4 --epochs 2 --detach --no-activate " + Test());
  ASSERT_EQ(detached.code, 0);
  EXPECT_EQ(detached.out.rfind("job-", 0), 0u);
  auto jobs = Aectl(server_arg_ + " jobs --model t2");
  EXPECT_EQ(jobs.code, 0);
  EXPECT_NE(jobs.out.find("SUCCEEDED"), std::string::npos);
  auto th = Aectl(server_arg_ + " threshold t2 --percentile 95 --critical median-mad:10");
  EXPECT_EQ(th.code, 0) << th.err;
  EXPECT_NE(th.out.find("critical"), std::string::npos);
  auto bad = Aectl(server_arg_ + " threshold t2 --set sideways:3");
  EXPECT_EQ(bad.code, 2);
  auto missing = Aectl(server_arg_ + " activate t2 9");
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("aectl: NOT_FOUND"), std::string::npos) << missing.err;
}

// The autopilot from the command line: a policy, a retrain by hand, its shadow window and the
// audit log that records all of it (#15).
TEST_F(AectlTest, AutopilotRetrainShadowAndHistory) {
  auto set = Aectl(server_arg_ +
                   " autopilot ap --retain-rows 20000 --min-rows 100 --shadow-samples 200 "
                   "--flag-ratio 0,1000");
  ASSERT_EQ(set.code, 0) << set.err;
  EXPECT_NE(set.out.find("retained: 0 rows"), std::string::npos) << set.out;
  // The policy comes first, so the first version's training rows are kept as history too.
  ASSERT_EQ(
      Aectl(server_arg_ + " train --model ap --layers 16 --code 4 --epochs 3 --retain " + Train())
          .code,
      0);
  EXPECT_NE(Aectl(server_arg_ + " model ap").out.find("retained_rows: 12000"), std::string::npos);
  EXPECT_NE(set.out.find("retain_rows: 20000"), std::string::npos) << set.out;
  EXPECT_EQ(Aectl(server_arg_ + " autopilot ap").code, 2);  // --retain-rows is required
  ASSERT_EQ(Aectl(server_arg_ + " score --model ap " + Test()).code, 0);
  auto retrain = Aectl(server_arg_ + " retrain ap");
  ASSERT_EQ(retrain.code, 0) << retrain.err;
  EXPECT_NE(retrain.out.find("queued: retraining ap"), std::string::npos) << retrain.out;
  // The retrained version goes into shadow; scoring feeds the window until it decides.
  ASSERT_TRUE(WaitFor(
      [&] {
        Aectl(server_arg_ + " score --model ap " + Test());
        return Aectl(server_arg_ + " shadow ap").out.find("outcome:") != std::string::npos;
      },
      std::chrono::seconds(60)));
  auto report = Aectl(server_arg_ + " shadow ap");
  EXPECT_NE(report.out.find("candidate version 2 beside active version 1"), std::string::npos)
      << report.out;
  // Which way it goes depends on the data; that it is decided and recorded does not.
  const bool promoted = report.out.find("outcome: promoted") != std::string::npos;
  EXPECT_TRUE(promoted || report.out.find("outcome: rejected") != std::string::npos) << report.out;
  const std::string decision = promoted ? "promote" : "reject";
  ASSERT_TRUE(WaitFor(
      [&] { return Aectl(server_arg_ + " history ap").out.find(decision) != std::string::npos; },
      std::chrono::seconds(10)));
  auto history = Aectl(server_arg_ + " history ap");
  ASSERT_EQ(history.code, 0) << history.err;
  for (const std::string action :
       {"train", "set-retrain-policy", "retrain", "shadow", "anonymous", "autopilot"}) {
    EXPECT_NE(history.out.find(action), std::string::npos) << action << " in\n" << history.out;
  }
  auto json = Aectl(server_arg_ + " history ap --format json");
  EXPECT_EQ(Lines(json.out), 1);
  EXPECT_NE(json.out.find("\"action\":\"" + decision + "\""), std::string::npos) << json.out;
  EXPECT_EQ(Aectl(server_arg_ + " shadow demo").code, 1);  // no policy there
  auto off = Aectl(server_arg_ + " autopilot ap --off");
  EXPECT_EQ(off.code, 0) << off.err;
  EXPECT_NE(off.out.find("autopilot off"), std::string::npos);
}

TEST_F(AectlTest, WatchPrintsFlaggedSamples) {
  Result watched;
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    watched = Aectl(server_arg_ + " --timeout 30 watch demo --count 2");
    done = true;
  });
  // Score clearly anomalous rows until the watcher has its two events (bounded).
  const std::string shifted = dir_->path() + "/shifted.csv";
  {
    std::ifstream in(Test());
    std::ofstream out(shifted);
    std::string line;
    std::getline(in, line);
    out << line << "\n";
    for (int r = 0; r < 5 && std::getline(in, line); ++r) {
      std::stringstream cells(line);
      std::string cell;
      bool first = true;
      for (int c = 0; c < 38 && std::getline(cells, cell, ','); ++c) {
        out << (first ? "" : ",") << std::stod(cell) + 5.0;
        first = false;
      }
      out << ",1\n";
    }
  }
  for (int i = 0; i < 200 && !done; ++i) {
    Aectl(server_arg_ + " score --model demo " + shifted);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  watcher.join();
  EXPECT_EQ(watched.code, 0) << watched.err;
  EXPECT_EQ(Lines(watched.out), 3) << watched.out;  // header + 2 events
  EXPECT_NE(watched.out.find(",demo,1,"), std::string::npos) << watched.out;
}

// The connection options are listed in every subcommand's --help and work on either side (#16).
TEST_F(AectlTest, GlobalOptionsInEverySubcommand) {
  for (const std::string sub :
       {"score", "stream", "models", "model", "health", "train", "jobs", "cancel", "activate",
        "delete", "threshold", "policy", "watch", "history", "autopilot", "retrain", "shadow"}) {
    auto help = Aectl(sub + " --help");
    EXPECT_EQ(help.code, 0) << sub;
    for (const std::string opt :
         {"--server", "--timeout", "--token", "--tls-ca", "--tls-cert", "--tls-key"}) {
      EXPECT_NE(help.out.find(opt), std::string::npos) << sub << " --help lacks " << opt;
    }
  }
  EXPECT_EQ(Aectl("health " + server_arg_).out, "SERVING\n");
  EXPECT_EQ(Aectl(server_arg_ + " health").out, "SERVING\n");
}

TEST_F(AectlTest, ErrorsAreOneLineAndNonZero) {
  auto unknown = Aectl(server_arg_ + " score --model nope " + Test());
  EXPECT_EQ(unknown.code, 1);
  EXPECT_EQ(unknown.err, "aectl: NOT_FOUND: unknown model 'nope'\n");
  // A stream to an unknown model fails at its first answer, not after pacing the whole file
  // (3000 rows at 20 rows/s would take 150 s).
  auto unknown_stream = Aectl(server_arg_ + " stream --model nope --rate 20 --batch 10 " + Test());
  EXPECT_EQ(unknown_stream.code, 1);
  EXPECT_EQ(unknown_stream.err, "aectl: NOT_FOUND: unknown model 'nope'\n");
  auto no_model = Aectl(server_arg_ + " score " + Test());
  EXPECT_NE(no_model.code, 0);
  EXPECT_NE(no_model.err.find("--model"), std::string::npos) << no_model.err;
  auto no_file = Aectl(server_arg_ + " score --model demo /nonexistent.csv");
  EXPECT_EQ(no_file.code, 1);
  EXPECT_NE(no_file.err.find("cannot open"), std::string::npos);
  auto down = Aectl("--server 127.0.0.1:1 --timeout 2 health");
  EXPECT_EQ(down.code, 1);
  EXPECT_NE(down.err.find("UNAVAILABLE"), std::string::npos) << down.err;
  const std::string headless = "/tmp/aectl_headless_" + std::to_string(getpid()) + ".csv";
  std::ofstream(headless) << "0.5,0.25,1\n0.1,0.2,0.3\n";
  auto no_header = Aectl(server_arg_ + " score --model demo " + headless);
  EXPECT_EQ(no_header.code, 1);
  EXPECT_NE(no_header.err.find("needs a header row"), std::string::npos) << no_header.err;
  std::remove(headless.c_str());
  // Bad values are usage errors (exit 2) naming the flag and the valid choices.
  auto bad_layers = Aectl(server_arg_ + " train --model x --layers 64,abc " + Test());
  EXPECT_EQ(bad_layers.code, 2);
  EXPECT_NE(bad_layers.err.find("--layers"), std::string::npos) << bad_layers.err;
  EXPECT_NE(bad_layers.err.find("'abc' is not a positive integer"), std::string::npos)
      << bad_layers.err;
  auto bad_kind = Aectl(server_arg_ + " train --model x --kind denoise " + Test());
  EXPECT_EQ(bad_kind.code, 2);
  EXPECT_NE(bad_kind.err.find("denoising"), std::string::npos) << bad_kind.err;  // the valid ones
  EXPECT_EQ(Aectl(server_arg_ + " score --model demo --no-such-flag " + Test()).code, 2);
  // TLS files must exist, and a client certificate needs its key.
  auto no_ca = Aectl(server_arg_ + " --tls-ca /nonexistent/ca.pem health");
  EXPECT_EQ(no_ca.code, 2);
  EXPECT_NE(no_ca.err.find("/nonexistent/ca.pem"), std::string::npos) << no_ca.err;
  auto cert_only = Aectl(server_arg_ + " --tls-ca " + Test() + " --tls-cert " + Test() + " health");
  EXPECT_EQ(cert_only.code, 2);
  EXPECT_NE(cert_only.err.find("--tls-key"), std::string::npos) << cert_only.err;
  auto not_pem = Aectl(server_arg_ + " --tls-ca " + Test() + " health");
  EXPECT_EQ(not_pem.code, 2);
  EXPECT_NE(not_pem.err.find("holds no PEM certificate"), std::string::npos) << not_pem.err;
  // A TLS client against this plaintext server: the failure comes with the TLS hint.
  const std::string ca = dir_->path() + "/ca.pem";
  ASSERT_EQ(std::system(("openssl req -x509 -newkey rsa:2048 -nodes -keyout " + dir_->path() +
                         "/ca.key -out " + ca + " -days 1 -subj /CN=aectl-test 2>/dev/null")
                            .c_str()),
            0);
  auto mismatch = Aectl(server_arg_ + " --timeout 5 --tls-ca " + ca + " health");
  EXPECT_EQ(mismatch.code, 1);
  EXPECT_NE(mismatch.err.find("TLS mismatch"), std::string::npos) << mismatch.err;
  auto no_cmd = Aectl("");
  EXPECT_NE(no_cmd.code, 0);
}

}  // namespace
}  // namespace aeserve::testing
