// Retained traffic in checksummed segment files.
#include "server/retention.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <numeric>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/file_io.h"

namespace aeserve::server {
namespace {

namespace fs = std::filesystem;

constexpr char kMagic[4] = {'A', 'E', 'R', '1'};
constexpr uint64_t kMaxSegmentFileBytes = 1ull << 30;

std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

// <first>-<last>-<rows>-<replica>-<seq>.seg
bool ParseName(const std::string& name, int64_t* first, int64_t* last, uint64_t* rows,
               uint64_t* seq) {
  if (name.size() < 5 || name.compare(name.size() - 4, 4, ".seg") != 0 || name[0] == '.') {
    return false;
  }
  std::vector<std::string> parts = absl::StrSplit(name.substr(0, name.size() - 4), '-');
  if (!absl::SimpleAtoi(parts.back(), seq)) *seq = 0;  // read anyway; its checksum decides
  return parts.size() >= 5 && absl::SimpleAtoi(parts[0], first) &&
         absl::SimpleAtoi(parts[1], last) && absl::SimpleAtoi(parts[2], rows);
}

// Segment names carry the replica; keep it to [A-Za-z0-9] and '_' so names parse.
std::string FileTag(const std::string& replica) {
  std::string out;
  for (char c : replica) out.push_back(std::isalnum(static_cast<unsigned char>(c)) ? c : '_');
  return out;
}

}  // namespace

uint32_t Crc32cBytewise(const void* data, size_t size) {
  static const std::array<uint32_t, 256> table = MakeCrcTable();
  uint32_t c = 0xFFFFFFFFu;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

#if defined(__x86_64__)
// SSE4.2's crc32 computes CRC-32C: 8 bytes per instruction, then the tail a byte at a time.
__attribute__((target("sse4.2"))) static uint32_t Crc32cSse42(const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t c = 0xFFFFFFFFu;
  for (; size >= 8; p += 8, size -= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
  }
  auto c32 = static_cast<uint32_t>(c);
  for (; size > 0; ++p, --size) c32 = _mm_crc32_u8(c32, *p);
  return c32 ^ 0xFFFFFFFFu;
}
#endif

uint32_t Crc32c(const void* data, size_t size) {
#if defined(__x86_64__)
  static const bool sse42 = __builtin_cpu_supports("sse4.2");
  if (sse42) return Crc32cSse42(data, size);
#endif
  return Crc32cBytewise(data, size);
}

size_t Retention::SegmentRows(uint32_t d) {
  return std::clamp<size_t>(kMaxSegmentBytes / RowBytes(d), 1, kSegmentRows);
}

Retention::Retention(std::string dir, const std::string& replica)
    : dir_(std::move(dir)), replica_(FileTag(replica)) {}

void Retention::SetBounds(uint64_t rows, double hours, v1::FlaggedRows flagged) {
  absl::MutexLock lock(&mu_);
  max_rows_ = rows;
  max_hours_ = hours;
  flagged_ = flagged;
}

size_t Retention::Append(uint32_t d, const google::protobuf::RepeatedPtrField<std::string>& names,
                         absl::Span<const float> values, absl::Span<const int64_t> timestamps,
                         absl::Span<const uint8_t> flagged, absl::Span<const uint8_t> alarmed,
                         int64_t now_ms, bool series) {
  if (d == 0) return 0;
  const size_t n = values.size() / d;
  size_t kept = 0;
  absl::MutexLock lock(&mu_);
  // A segment holds one feature set: the model's features changed, the open segment is closed.
  // Checked once per call (every row of a call has the same), not per row.
  const v1::RetainedSegment& open = open_.seg;
  if (open_.rows > 0 && (open.num_features() != d || open.feature_names_size() != names.size() ||
                         !std::equal(names.begin(), names.end(), open.feature_names().begin()))) {
    CloseOpenLocked();
  }
  const size_t per_segment = SegmentRows(d);
  const size_t segment_bytes = per_segment * RowBytes(d);
  // Rows [a, b), all kept, copied in runs (a segment's values and timestamps grow by whole runs,
  // not row by row: this runs on the scoring path).
  auto copy = [&](size_t a, size_t b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    while (a < b) {
      v1::RetainedSegment& seg = open_.seg;
      if (open_.rows == 0) {
        // A segment starts only when the writer's queue has room for it full, so a started
        // segment is never refused when it closes (the queue only shrinks meanwhile). Else the
        // writer is behind: the rows are counted as dropped instead of copied.
        if (pending_bytes_ + segment_bytes > kMaxPendingBytes) {
          dropped_ += b - a;
          return;
        }
        seg.set_num_features(d);
        *seg.mutable_feature_names() = names;
        seg.set_first_unix_ms(now_ms);
      }
      const size_t take = std::min(b - a, per_segment - open_.rows);
      seg.mutable_values()->Add(values.begin() + a * d, values.begin() + (a + take) * d);
      auto* ts = seg.mutable_timestamps_ms();
      const size_t stamped = std::min(a + take, std::max(a, timestamps.size()));
      ts->Add(timestamps.begin() + a, timestamps.begin() + stamped);
      ts->Resize(ts->size() + static_cast<int>(a + take - stamped), 0);  // rows without a time
      seg.set_last_unix_ms(now_ms);
      kept += take;
      open_.rows += take;
      a += take;
      if (open_.rows >= per_segment) CloseOpenLocked();
    }
  };
  size_t run = 0;  // the first row not yet copied or skipped
  for (size_t i = 0; i < n; ++i) {
    bool skip = false;
    if (series && i < timestamps.size()) {
      // A step before the newest kept, or the newest again with the same values, was sent
      // again (a stream warming its window up). An equal timestamp with other values is the
      // next step (a daylight-saving hour).
      const float* row = values.data() + i * d;
      if (timestamps[i] < last_series_ms_ ||
          (timestamps[i] == last_series_ms_ && last_series_row_.size() == d &&
           std::equal(row, row + d, last_series_row_.begin()))) {
        skip = true;
      } else {
        last_series_ms_ = timestamps[i];
        last_series_row_.assign(row, row + d);
      }
    }
    const bool is_flagged = i < flagged.size() && flagged[i] != 0;
    const bool in_alarm = i < alarmed.size() && alarmed[i] != 0;
    if (!skip && is_flagged &&
        (flagged_ == v1::FLAGGED_ROWS_DROP ||
         (flagged_ == v1::FLAGGED_ROWS_KEEP_UNLESS_INCIDENT && in_alarm))) {
      ++dropped_;
      skip = true;
    }
    if (skip) {
      copy(run, i);
      run = i + 1;
    }
  }
  copy(run, n);
  return kept;
}

void Retention::CloseOpenLocked() {
  if (open_.rows == 0) return;
  const size_t bytes = static_cast<size_t>(open_.seg.values_size()) * sizeof(float) +
                       static_cast<size_t>(open_.seg.timestamps_ms_size()) * sizeof(int64_t);
  if (pending_bytes_ + bytes > kMaxPendingBytes) {
    // The writer is behind: count, never queue without bound. (Append starts a segment only when
    // it will fit, so this guards the bound rather than happening.)
    dropped_ += open_.rows;
  } else {
    pending_bytes_ += bytes;
    pending_.push_back(std::move(open_.seg));
  }
  open_ = Open{};
}

std::vector<Retention::FileInfo> Retention::List() const {
  std::vector<FileInfo> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    FileInfo f;
    const std::string name = it->path().filename().string();
    if (!ParseName(name, &f.first_ms, &f.last_ms, &f.rows, &f.seq)) continue;
    std::error_code sec;
    if (!it->is_regular_file(sec)) continue;
    f.path = it->path().string();
    f.bytes = it->file_size(sec);
    out.push_back(std::move(f));
  }
  std::sort(out.begin(), out.end(), [](const FileInfo& a, const FileInfo& b) {
    // Segments closed in the same millisecond (a wide model's batch fills several) in the order
    // their writer numbered them.
    return std::tie(a.first_ms, a.last_ms, a.seq, a.path) <
           std::tie(b.first_ms, b.last_ms, b.seq, b.path);
  });
  return out;
}

absl::Status Retention::Maintain(int64_t now_ms, bool force) {
  absl::MutexLock writing(&write_mu_);
  std::deque<v1::RetainedSegment> todo;
  uint64_t max_rows;
  double max_hours;
  {
    absl::MutexLock lock(&mu_);
    if (open_.rows > 0 && (force || now_ms - open_.seg.first_unix_ms() >= kSegmentSeconds * 1000)) {
      CloseOpenLocked();
    }
    todo.swap(pending_);
    pending_bytes_ = 0;
    for (const auto& seg : todo) writing_ += static_cast<uint64_t>(seg.timestamps_ms_size());
    max_rows = max_rows_;
    max_hours = max_hours_;
  }
  absl::Status status;
  if (!todo.empty()) {
    std::error_code ec;
    fs::create_directories(dir_, ec);
  }
  for (const v1::RetainedSegment& seg : todo) {
    const uint64_t rows = static_cast<uint64_t>(seg.timestamps_ms_size());
    uint64_t seq;
    {
      absl::MutexLock lock(&mu_);
      seq = ++seq_;
    }
    const std::string name = absl::StrCat(seg.first_unix_ms(), "-", seg.last_unix_ms(), "-", rows,
                                          "-", replica_, "-", seq, ".seg");
    // magic, CRC-32C of the payload (little-endian), payload: serialized in place.
    const size_t size = seg.ByteSizeLong();
    std::string bytes(8 + size, '\0');
    seg.SerializeWithCachedSizesToArray(reinterpret_cast<uint8_t*>(bytes.data() + 8));
    const uint32_t crc = Crc32c(bytes.data() + 8, size);
    std::memcpy(bytes.data(), kMagic, 4);
    for (int b = 0; b < 4; ++b) bytes[4 + b] = static_cast<char>((crc >> (8 * b)) & 0xFF);
    if (auto st = engine::WriteFileAtomically((fs::path(dir_) / name).string(), bytes); !st.ok()) {
      absl::MutexLock lock(&mu_);
      dropped_ += rows;
      status = st;
    }
  }
  // Bounds: whole segments, oldest first.
  std::vector<FileInfo> files = List();
  RetentionTotals totals;
  uint64_t newer_rows = 0;
  for (auto it = files.rbegin(); it != files.rend(); ++it) {
    const bool too_old =
        max_hours > 0 && static_cast<double>(now_ms - it->last_ms) > max_hours * 3600e3;
    if (too_old || (max_rows > 0 && newer_rows >= max_rows)) {
      std::error_code ec;
      fs::remove(it->path, ec);  // another replica may have removed it first
      continue;
    }
    newer_rows += it->rows;
    totals.rows += it->rows;
    totals.bytes += it->bytes;
    ++totals.segments;
  }
  absl::MutexLock lock(&mu_);
  disk_ = totals;
  writing_ = 0;  // now on disk (counted in disk_) or dropped (counted in dropped_)
  return status;
}

RetentionTotals Retention::Totals() const {
  absl::MutexLock lock(&mu_);
  RetentionTotals t = disk_;
  t.rows += open_.rows + writing_;
  for (const auto& seg : pending_) t.rows += static_cast<uint64_t>(seg.timestamps_ms_size());
  t.dropped_rows = dropped_;
  return t;
}

absl::StatusOr<RetainedRows> Retention::Read(uint32_t num_features, uint64_t max_rows,
                                             const std::vector<std::string>& names) const {
  RetainedRows out;
  out.num_features = num_features;
  std::vector<v1::RetainedSegment> segs;
  for (const FileInfo& f : List()) {
    auto bytes = engine::ReadRegularFile(f.path, kMaxSegmentFileBytes);
    if (absl::IsNotFound(bytes.status())) continue;  // dropped meanwhile
    if (!bytes.ok() || bytes->size() < 8 || std::memcmp(bytes->data(), kMagic, 4) != 0) {
      ++out.corrupt_segments;
      continue;
    }
    uint32_t crc = 0;
    for (int b = 0; b < 4; ++b) {
      crc |= static_cast<uint32_t>(static_cast<unsigned char>((*bytes)[4 + b])) << (8 * b);
    }
    v1::RetainedSegment seg;
    if (Crc32c(bytes->data() + 8, bytes->size() - 8) != crc ||
        !seg.ParseFromArray(bytes->data() + 8, static_cast<int>(bytes->size() - 8)) ||
        seg.num_features() == 0 ||
        static_cast<uint64_t>(seg.values_size()) !=
            static_cast<uint64_t>(seg.timestamps_ms_size()) * seg.num_features()) {
      ++out.corrupt_segments;
      continue;
    }
    const bool other_names = !names.empty() && seg.feature_names_size() > 0 &&
                             !std::equal(names.begin(), names.end(), seg.feature_names().begin(),
                                         seg.feature_names().end());
    if (seg.num_features() != num_features || other_names) {
      ++out.other_features;
      continue;
    }
    if (out.feature_names.empty()) {
      out.feature_names.assign(seg.feature_names().begin(), seg.feature_names().end());
    }
    segs.push_back(std::move(seg));
  }
  // Rows in time order: by timestamp when every row has one (series), else by segment.
  size_t total = 0;
  bool stamped = true;
  for (const auto& s : segs) {
    total += static_cast<size_t>(s.timestamps_ms_size());
    for (int64_t t : s.timestamps_ms()) stamped = stamped && t != 0;
  }
  std::vector<std::pair<const v1::RetainedSegment*, int>> rows;
  rows.reserve(total);
  for (const auto& s : segs) {
    for (int i = 0; i < s.timestamps_ms_size(); ++i) rows.emplace_back(&s, i);
  }
  if (stamped) {
    std::stable_sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
      return a.first->timestamps_ms(a.second) < b.first->timestamps_ms(b.second);
    });
  }
  const size_t skip = max_rows > 0 && rows.size() > max_rows ? rows.size() - max_rows : 0;
  out.values.reserve((rows.size() - skip) * num_features);
  if (stamped) out.timestamps_ms.reserve(rows.size() - skip);
  for (size_t r = skip; r < rows.size(); ++r) {
    const auto& [s, i] = rows[r];
    const float* v = s->values().data() + static_cast<size_t>(i) * num_features;
    out.values.insert(out.values.end(), v, v + num_features);
    if (stamped) out.timestamps_ms.push_back(s->timestamps_ms(i));
  }
  return out;
}

void Retention::DeleteAll() {
  absl::MutexLock writing(&write_mu_);
  {
    absl::MutexLock lock(&mu_);
    open_ = Open{};
    writing_ = 0;
    last_series_ms_ = INT64_MIN;
    pending_.clear();
    pending_bytes_ = 0;
    disk_ = RetentionTotals{};
  }
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

}  // namespace aeserve::server
