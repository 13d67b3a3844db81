// The model file: a 24-byte header (magic, payload length, XXH64 of the payload) and a
// serialized v1::ModelFile. Writes are atomic: temp file, fsync, rename, fsync of the directory.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "aeserve/v1/model.pb.h"

namespace aeserve::engine {

inline constexpr uint32_t kModelFormatVersion = 1;

// Writes `file` to `path` atomically: readers see the old file or the new one, never a mix.
absl::Status SaveModelFile(const v1::ModelFile& file, const std::string& path);

// Reads and checks a model file. A missing file is NOT_FOUND; a truncated, corrupted or foreign
// file is DATA_LOSS with the reason.
absl::StatusOr<v1::ModelFile> LoadModelFile(const std::string& path);

// The same checks on bytes already in memory (used by the loader and the fuzzer).
absl::StatusOr<v1::ModelFile> ParseModelFile(absl::string_view bytes);
std::string SerializeModelFile(const v1::ModelFile& file);

}  // namespace aeserve::engine
