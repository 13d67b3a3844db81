// The model file: header (magic, payload length, XXH64) and a serialized v1::ModelFile.
#include "engine/model_file.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/file_io.h"
#include "xxhash.h"

namespace aeserve::engine {
namespace {

constexpr char kMagic[8] = {'A', 'E', 'S', 'V', 'M', 'D', 'L', '1'};
constexpr size_t kHeaderSize = 24;
// Protobuf refuses messages over 2 GiB; a model is far smaller.
constexpr uint64_t kMaxPayload = uint64_t{1} << 31;

void PutU64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

}  // namespace

std::string SerializeModelFile(const v1::ModelFile& file) {
  std::string payload;
  file.SerializeToString(&payload);
  std::string out(kMagic, sizeof kMagic);
  PutU64(out, payload.size());
  PutU64(out, XXH64(payload.data(), payload.size(), 0));
  out += payload;
  return out;
}

absl::StatusOr<v1::ModelFile> ParseModelFile(absl::string_view bytes) {
  if (bytes.size() < kHeaderSize || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) {
    return absl::DataLossError("model file: not an aeserve model file (bad magic or too short)");
  }
  const uint64_t length = GetU64(bytes.data() + 8);
  const uint64_t checksum = GetU64(bytes.data() + 16);
  if (length > kMaxPayload || length != bytes.size() - kHeaderSize) {
    return absl::DataLossError(absl::StrCat("model file: truncated or padded (header says ", length,
                                            " bytes, file has ", bytes.size() - kHeaderSize, ")"));
  }
  const char* payload = bytes.data() + kHeaderSize;
  if (XXH64(payload, length, 0) != checksum) {
    return absl::DataLossError("model file: checksum mismatch (corrupted)");
  }
  v1::ModelFile file;
  if (!file.ParseFromArray(payload, static_cast<int>(length))) {
    return absl::DataLossError("model file: payload does not parse");
  }
  if (file.format_version() != kModelFormatVersion) {
    return absl::DataLossError(
        absl::StrCat("model file: unsupported format version ", file.format_version()));
  }
  return file;
}

absl::StatusOr<v1::ModelFile> LoadModelFile(const std::string& path) {
  auto bytes = ReadRegularFile(path, kHeaderSize + kMaxPayload);
  if (!bytes.ok()) {
    if (bytes.status().code() == absl::StatusCode::kNotFound) {
      return absl::NotFoundError(absl::StrCat("model file ", path, " does not exist"));
    }
    return absl::DataLossError(absl::StrCat("model file: ", bytes.status().message()));
  }
  auto file = ParseModelFile(*bytes);
  if (!file.ok())
    return absl::Status(file.status().code(), absl::StrCat(path, ": ", file.status().message()));
  return file;
}

absl::Status SaveModelFile(const v1::ModelFile& file, const std::string& path) {
  return WriteFileAtomically(path, SerializeModelFile(file));
}

}  // namespace aeserve::engine
