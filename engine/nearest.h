// The neighbour distance's selection step: the mean distance to the k nearest of n reference rows,
// from their squared distances.
#pragma once

#include <cstdint>
#include <vector>

namespace aeserve::engine {

// Mean of the square roots of the k smallest of sq[0, n) (1 <= k <= n; values >= 0, not NaN).
// `sq` is overwritten; `scratch` is reused between calls. Uses MeanOfSmallestRootsAvx512 where the
// CPU has AVX-512 and k <= 16 <= n, else MeanOfSmallestRootsPortable.
float MeanOfSmallestRoots(float* sq, uint32_t n, uint32_t k, std::vector<float>& scratch);

// The mean over `groups` equal consecutive groups of sq[0, n) of MeanOfSmallestRoots in each.
float MeanOverGroups(float* sq, uint32_t n, uint32_t groups, uint32_t k,
                     std::vector<float>& scratch);

// The neighbour distance of one row x from its inner products with the n reference rows r_i
// (dots[i] = x.r_i - |r_i|^2 / 2) and xx = |x|^2: the squared distances |x - r_i|^2 =
// xx - 2 dots[i], at least 0 (+inf where that is NaN, from an overflowing input); returns
// MeanOverGroups of them. `dots` is overwritten.
float NeighbourDistance(float* dots, float xx, uint32_t n, uint32_t groups, uint32_t k,
                        std::vector<float>& scratch);

// The two implementations, public so that tests run both on every machine that can.
float MeanOfSmallestRootsPortable(float* sq, uint32_t n, uint32_t k, std::vector<float>& scratch);
// Requires AVX-512F (HasAvx512()), k <= 16 and n >= 16.
float MeanOfSmallestRootsAvx512(float* sq, uint32_t n, uint32_t k, std::vector<float>& scratch);
bool HasAvx512();

}  // namespace aeserve::engine
