// The neighbour distance's selection step against answers worked by hand and against sorting.
#include "engine/nearest.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace aeserve::engine {
namespace {

using Selector = float (*)(float*, uint32_t, uint32_t, std::vector<float>&);

// The mean of the square roots of the k smallest, by sorting, in double.
double BySorting(std::vector<float> sq, uint32_t k) {
  std::sort(sq.begin(), sq.end());
  double sum = 0;
  for (uint32_t i = 0; i < k; ++i) sum += std::sqrt(static_cast<double>(sq[i]));
  return sum / k;
}

// Runs `select` on a copy of `sq` followed by 16 sentinels, which it must leave alone.
float Select(Selector select, const std::vector<float>& sq, uint32_t k) {
  std::vector<float> buf = sq;
  buf.resize(sq.size() + 16, -7.f);
  std::vector<float> scratch;
  const float got = select(buf.data(), static_cast<uint32_t>(sq.size()), k, scratch);
  for (size_t i = sq.size(); i < buf.size(); ++i)
    EXPECT_EQ(buf[i], -7.f) << "wrote past n at " << i;
  return got;
}

std::vector<Selector> Selectors() {
  std::vector<Selector> s = {&MeanOfSmallestRootsPortable, &MeanOfSmallestRoots};
  if (HasAvx512()) s.push_back(&MeanOfSmallestRootsAvx512);
  return s;
}

TEST(Nearest, KnownAnswers) {
  // Roots 3, 1, 2, 4, 0.5: the two smallest are 0.5 and 1.
  EXPECT_FLOAT_EQ(Select(&MeanOfSmallestRootsPortable, {9, 1, 4, 16, 0.25f}, 2), 0.75f);
  // The squares of 20..1: the three nearest are 1, 2, 3, mean 2; all 20: mean 10.5.
  std::vector<float> sq;
  for (int i = 20; i >= 1; --i) sq.push_back(static_cast<float>(i * i));
  for (Selector s : Selectors()) {
    EXPECT_FLOAT_EQ(Select(s, sq, 3), 2.f);
    EXPECT_FLOAT_EQ(Select(s, sq, 1), 1.f);
    EXPECT_FLOAT_EQ(Select(s, sq, 16), 8.5f);  // 1..16
  }
  // Two groups of 4: {4, 0, 9, 1} -> nearest two 0, 1 -> 0.5; {16, 25, 36, 49} -> 4.5. Mean 2.5.
  std::vector<float> groups = {4, 0, 9, 1, 16, 25, 36, 49}, scratch;
  EXPECT_FLOAT_EQ(MeanOverGroups(groups.data(), 8, 2, 2, scratch), 2.5f);
}

// From inner products: with |x|^2 = 100, dots (100 - s) / 2 give squared distances s; a dot above
// 50 would give a negative one, which is 0.
TEST(Nearest, NeighbourDistanceFromInnerProducts) {
  std::vector<float> dots, scratch;
  for (int i = 1; i <= 20; ++i) dots.push_back((100.f - static_cast<float>(i * i + 1)) / 2);
  dots[13] = 60;  // squared distance -20: 0
  // One group: the nearest two are 0 and 2 (= 1 + 1), roots 0 and sqrt 2.
  std::vector<float> one = dots;
  EXPECT_FLOAT_EQ(NeighbourDistance(one.data(), 100, 20, 1, 2, scratch), std::sqrt(2.f) / 2);
  EXPECT_FLOAT_EQ(one[0], 2.f);
  EXPECT_FLOAT_EQ(one[13], 0.f);
  EXPECT_FLOAT_EQ(one[19], 401.f);
  // Two groups of 10: {2, 5, ..., 101} -> nearest 2, 5; {122, 145, 170, 0, ...} -> 0, 122.
  std::vector<float> two = dots;
  const float want = ((std::sqrt(2.f) + std::sqrt(5.f)) / 2 + std::sqrt(122.f) / 2) / 2;
  EXPECT_FLOAT_EQ(NeighbourDistance(two.data(), 100, 20, 2, 2, scratch), want);
}

// Ties: the k smallest count a repeated value as often as it is among them.
TEST(Nearest, TiesAreCountedOnce) {
  for (Selector s : Selectors()) {
    std::vector<float> sq(40, 4.f);  // every candidate ties: more than 16 of them
    sq[7] = 1;
    EXPECT_FLOAT_EQ(Select(s, sq, 3), (1 + 2 + 2) / 3.f);
    std::vector<float> zeros(33, 0.f);
    EXPECT_FLOAT_EQ(Select(s, zeros, 8), 0.f);
  }
}

// Every size from 16 to 300 and every k the fast version takes, over data with and without ties,
// in every order, against sorting.
TEST(Nearest, AgreesWithSorting) {
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal;
  for (Selector s : Selectors()) {
    for (uint32_t n = 16; n <= 300; n += (n < 70 ? 1 : 13)) {
      for (uint32_t k = 1; k <= 16; ++k) {
        for (int kind = 0; kind < 5; ++kind) {
          std::vector<float> sq(n);
          for (uint32_t i = 0; i < n; ++i) {
            const float z = normal(rng);
            sq[i] = kind == 0   ? z * z
                    : kind == 1 ? static_cast<float>(rng() % 4)  // many ties
                    : kind == 2 ? static_cast<float>(i)          // ascending
                    : kind == 3 ? static_cast<float>(n - i)      // descending
                                : 100 + z;                       // all close together
          }
          const double want = BySorting(sq, k);
          ASSERT_NEAR(Select(s, sq, k), want, 1e-5 * (1 + want))
              << "n " << n << " k " << k << " kind " << kind;
        }
      }
    }
  }
}

// The portable version takes any k <= n, including more than 16 neighbours and fewer than 16 rows.
TEST(Nearest, PortableTakesAnyKAndN) {
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> u(0, 10);
  for (uint32_t n : {1u, 2u, 5u, 15u, 64u, 1000u}) {
    for (uint32_t k : {1u, 2u, 5u, 17u, 40u, 1000u}) {
      if (k > n) continue;
      std::vector<float> sq(n);
      for (float& v : sq) v = u(rng);
      const double want = BySorting(sq, k);
      EXPECT_NEAR(Select(&MeanOfSmallestRootsPortable, sq, k), want, 1e-5 * (1 + want))
          << n << " " << k;
      EXPECT_NEAR(Select(&MeanOfSmallestRoots, sq, k), want, 1e-5 * (1 + want)) << n << " " << k;
    }
  }
}

}  // namespace
}  // namespace aeserve::engine
