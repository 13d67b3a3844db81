// The neighbour distance's selection step (nearest.h).
//
// Both versions bound the search the same way: the k-th smallest of the minima of disjoint blocks
// is at least the k-th smallest value (those minima are k distinct values), so only values at or
// below it can be among the k nearest. What is left is a handful of candidates (about 11 of 128
// with 8 neighbours), from which the k smallest are taken exactly.
#include "engine/nearest.h"

#include <algorithm>
#include <cmath>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace aeserve::engine {
namespace {

// The minima of n / kBlock consecutive blocks of kBlock values, into scratch.
template <uint32_t kBlock>
uint32_t BlockMinima(const float* sq, uint32_t n, std::vector<float>& scratch) {
  const uint32_t blocks = n / kBlock;
  scratch.resize(blocks);
  for (uint32_t b = 0; b < blocks; ++b) {
    float m = sq[b * kBlock];
    for (uint32_t i = 1; i < kBlock; ++i) m = std::min(m, sq[b * kBlock + i]);
    scratch[b] = m;
  }
  return blocks;
}

// Mean of the square roots of the k smallest of sq[0, kept), reordering them; +inf when fewer than
// k were kept (only NaN inputs, outside the contract, make that happen).
float MeanOfKSmallestRoots(float* sq, uint32_t kept, uint32_t k) {
  if (kept < k) return INFINITY;
  std::nth_element(sq, sq + (k - 1), sq + kept);
  float sum = 0;
  for (uint32_t i = 0; i < k; ++i) sum += std::sqrt(sq[i]);
  return sum / static_cast<float>(k);
}

// A squared distance from xx - 2 dot: at least 0 (rounding can take it below), and +inf when it is
// NaN (inf - inf, from an input so large that it overflows): infinitely far, never a near row.
float SquaredDistance(float xx, float dot) {
  const float s = xx - 2.f * dot;
  return std::isnan(s) ? INFINITY : std::max(s, 0.f);
}

}  // namespace

// Blocks of 16, 8 or 4 values, at least 2k-4k of them, keep the bound tight for small groups too
// (128 rows, 8 neighbours: 16 blocks of 8). The pass over all n values is branch-free; the rare
// candidates are partitioned by nth_element.
float MeanOfSmallestRootsPortable(float* sq, uint32_t n, uint32_t k, std::vector<float>& scratch) {
  const uint32_t blocks = n / 16 >= 4 * k  ? BlockMinima<16>(sq, n, scratch)
                          : n / 8 >= 2 * k ? BlockMinima<8>(sq, n, scratch)
                                           : BlockMinima<4>(sq, n, scratch);
  float bound = INFINITY;
  if (blocks >= k) {
    std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end());
    bound = scratch[k - 1];
  }
  uint32_t kept = 0;
  for (uint32_t i = 0; i < n; ++i) {
    sq[kept] = sq[i];
    kept += sq[i] <= bound;
  }
  return MeanOfKSmallestRoots(sq, kept, k);
}

#if defined(__x86_64__)
// GCC 12 warns of the undefined vectors inside its own AVX-512 intrinsics (_mm512_undefined_ps).
#if !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
namespace {

// The rank of each lane of v (values >= 0) among its 16 lanes, ties broken by lane: a permutation
// of 0..15. Non-negative floats order as their bit patterns do as integers, so lane j precedes lane
// i (v_j < v_i, or v_j == v_i and j < i) exactly when (v_j - [j < i]) - v_i is negative as
// integers: integer subtractions and a shift, where float compares would queue on one port.
__attribute__((target("avx512f"))) __m512i Ranks16(__m512 v) {
  const __m512i bits = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7FFFFFFF));
  alignas(64) int32_t b[16];
  _mm512_store_si512(b, bits);
  const __m512i one = _mm512_set1_epi32(1);
  __m512i rank[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
  for (int j = 0; j < 16; ++j) {
    const auto after_j = static_cast<__mmask16>(~((2u << j) - 1));
    const __m512i bj = _mm512_set1_epi32(b[j]);
    const __m512i vj = _mm512_mask_sub_epi32(bj, after_j, bj, one);
    rank[j & 1] = _mm512_add_epi32(rank[j & 1], _mm512_srli_epi32(_mm512_sub_epi32(vj, bits), 31));
  }
  return _mm512_add_epi32(rank[0], rank[1]);
}

// Appends the lanes of v at or below `bound` (only those in `valid`) to sq[kept...], which must
// not reach past the values still to be read; returns the new count.
__attribute__((target("avx512f"))) uint32_t Keep(float* sq, uint32_t kept, __m512 v, __m512 bound,
                                                 __mmask16 valid) {
  const __mmask16 keep = _mm512_mask_cmp_ps_mask(valid, v, bound, _CMP_LE_OQ);
  const auto count = static_cast<uint32_t>(__builtin_popcount(keep));
  _mm512_mask_storeu_ps(sq + kept, static_cast<__mmask16>((1u << count) - 1),
                        _mm512_maskz_compress_ps(keep, v));
  return kept + count;
}

}  // namespace

// 16 lanes: lane b's block is every 16th value from b. The k-th smallest of the 16 minima comes
// from their ranks; candidates are compressed in place (a chunk's candidates land at or before the
// chunk, already read); up to 16 candidates are ranked in one register, more (ties, k near 16)
// go to nth_element.
__attribute__((target("avx512f"))) float MeanOfSmallestRootsAvx512(float* sq, uint32_t n,
                                                                   uint32_t k,
                                                                   std::vector<float>&) {
  const uint32_t full = n / 16;
  const auto tail = static_cast<__mmask16>((1u << (n % 16)) - 1);
  __m512 minima = _mm512_loadu_ps(sq);
  for (uint32_t c = 1; c < full; ++c) minima = _mm512_min_ps(minima, _mm512_loadu_ps(sq + 16 * c));
  const __m512i kv = _mm512_set1_epi32(static_cast<int>(k));
  const __mmask16 first_k = _mm512_cmp_epi32_mask(Ranks16(minima), kv, _MM_CMPINT_LT);
  const __m512 bound = _mm512_set1_ps(_mm512_mask_reduce_max_ps(first_k, minima));
  uint32_t kept = 0;
  for (uint32_t c = 0; c < full; ++c) {
    kept = Keep(sq, kept, _mm512_loadu_ps(sq + 16 * c), bound, 0xFFFF);
  }
  if (tail != 0) kept = Keep(sq, kept, _mm512_maskz_loadu_ps(tail, sq + 16 * full), bound, tail);
  if (kept > 16) return MeanOfKSmallestRoots(sq, kept, k);
  const __m512 c =
      _mm512_mask_loadu_ps(_mm512_set1_ps(INFINITY), static_cast<__mmask16>((1u << kept) - 1), sq);
  const __mmask16 nearest = _mm512_cmp_epi32_mask(Ranks16(c), kv, _MM_CMPINT_LT);
  return _mm512_mask_reduce_add_ps(nearest, _mm512_sqrt_ps(c)) / static_cast<float>(k);
}

// SquaredDistance of every dot, 16 lanes at a time.
static __attribute__((target("avx512f"))) void SquaredDistancesAvx512(float* dots, float xx,
                                                                      uint32_t n) {
  const __m512 x = _mm512_set1_ps(xx), two = _mm512_set1_ps(2.f), zero = _mm512_setzero_ps();
  const __m512 inf = _mm512_set1_ps(INFINITY);
  uint32_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 s = _mm512_fnmadd_ps(two, _mm512_loadu_ps(dots + i), x);
    // max(s, 0) would make NaN 0: NaN lanes become +inf first, as SquaredDistance does.
    const __m512 finite = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(s, s, _CMP_UNORD_Q), s, inf);
    _mm512_storeu_ps(dots + i, _mm512_max_ps(finite, zero));
  }
  for (; i < n; ++i) dots[i] = SquaredDistance(xx, dots[i]);
}

#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif

bool HasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}
#else
float MeanOfSmallestRootsAvx512(float* sq, uint32_t n, uint32_t k, std::vector<float>& scratch) {
  return MeanOfSmallestRootsPortable(sq, n, k, scratch);
}
bool HasAvx512() { return false; }
#endif

float MeanOfSmallestRoots(float* sq, uint32_t n, uint32_t k, std::vector<float>& scratch) {
  if (k <= 16 && n >= 16 && HasAvx512()) return MeanOfSmallestRootsAvx512(sq, n, k, scratch);
  return MeanOfSmallestRootsPortable(sq, n, k, scratch);
}

// SquaredDistance of every dot: 16 lanes at a time where the CPU has AVX-512.
static void SquaredDistances(float* dots, float xx, uint32_t n) {
#if defined(__x86_64__)
  if (HasAvx512()) return SquaredDistancesAvx512(dots, xx, n);
#endif
  for (uint32_t i = 0; i < n; ++i) dots[i] = SquaredDistance(xx, dots[i]);
}

float NeighbourDistance(float* dots, float xx, uint32_t n, uint32_t groups, uint32_t k,
                        std::vector<float>& scratch) {
  SquaredDistances(dots, xx, n);
  return MeanOverGroups(dots, n, groups, k, scratch);
}

float MeanOverGroups(float* sq, uint32_t n, uint32_t groups, uint32_t k,
                     std::vector<float>& scratch) {
  const uint32_t size = n / groups;
  float sum = 0;
  for (uint32_t g = 0; g < groups; ++g) sum += MeanOfSmallestRoots(sq + g * size, size, k, scratch);
  return sum / static_cast<float>(groups);
}

}  // namespace aeserve::engine
