// Test helpers for retained-traffic segment files (server/retention.h): list them, damage one.
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace aeserve::testing {

// The segment files in `dir`, by name (oldest first: names start with their first time).
inline std::vector<std::filesystem::path> Segments(const std::string& dir) {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() == ".seg") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Flips one bit of the byte at `offset`, as a bad disk would.
inline void FlipBit(const std::filesystem::path& file, std::streamoff offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(offset);
  char c = 0;
  f.read(&c, 1);
  f.seekp(offset);
  c = static_cast<char>(c ^ 0x10);
  f.write(&c, 1);
  ASSERT_TRUE(f.good());
}

}  // namespace aeserve::testing
