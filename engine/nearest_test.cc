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
  // Two groups of 10: {2, 5, ..., 101} -> nearest 2, 5; {122, 145, 170, 0, ...} -> 0, 122.
  std::vector<float> two = dots;
  const float want = ((std::sqrt(2.f) + std::sqrt(5.f)) / 2 + std::sqrt(122.f) / 2) / 2;
  EXPECT_FLOAT_EQ(NeighbourDistance(two.data(), 100, 20, 2, 2, scratch), want);
}

// Ties: the k smallest count a repeated value as often as it is among them.
TEST(Nearest, ATiedValueCountsAsOftenAsItIsAmongTheNearest) {
  for (Selector s : Selectors()) {
    std::vector<float> sq(40, 4.f);  // every candidate ties: more than 16 of them
    sq[7] = 1;
    EXPECT_FLOAT_EQ(Select(s, sq, 3), (1 + 2 + 2) / 3.f);
    std::vector<float> zeros(33, 0.f);
    EXPECT_FLOAT_EQ(Select(s, zeros, 8), 0.f);
  }
}

// The default shape (two groups of 128, 8 nearest) and groups of an odd size, from inner products,
// against sorting each group's squared distances.
TEST(Nearest, GroupsFromInnerProductsAgreeWithSorting) {
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal;
  struct Shape {
    uint32_t n, groups, k;
  };
  for (Shape shape : {Shape{256, 2, 8}, Shape{63, 3, 4}, Shape{33, 1, 16}, Shape{16, 1, 1}}) {
    for (int trial = 0; trial < 50; ++trial) {
      const float xx = 40 + 10 * normal(rng);
      std::vector<float> dots(shape.n + 16, -7.f), scratch;
      double want = 0;
      const uint32_t size = shape.n / shape.groups;
      for (uint32_t g = 0; g < shape.groups; ++g) {
        std::vector<float> sq;
        for (uint32_t i = 0; i < size; ++i) {
          const float d = xx / 2 - 10 * std::abs(normal(rng));
          dots[g * size + i] = d;
          sq.push_back(std::max(xx - 2.f * d, 0.f));
        }
        want += BySorting(sq, shape.k) / shape.groups;
      }
      const float got = NeighbourDistance(dots.data(), xx, shape.n, shape.groups, shape.k, scratch);
      ASSERT_NEAR(got, want, 1e-5 * (1 + want))
          << shape.n << " rows, " << shape.groups << " groups";
      for (uint32_t i = shape.n; i < dots.size(); ++i) ASSERT_EQ(dots[i], -7.f) << "wrote past n";
    }
  }
}

// -0 ranks with +0; +inf is the farthest; a NaN squared distance (inf - inf, from an input so large
// that it overflows) is +inf, in the 16-lane part and in the tail alike.
TEST(Nearest, SpecialValues) {
  for (Selector s : Selectors()) {
    std::vector<float> zeros = {-0.f, 0.f, -0.f, 0.f, -0.f, 0.f, -0.f, 0.f, -0.f, 0.f,
                                1.f,  4.f, 9.f,  9.f, 9.f,  9.f, 9.f,  9.f, 9.f,  9.f};
    EXPECT_FLOAT_EQ(Select(s, zeros, 12), 3.f / 12);
    std::vector<float> far(20, INFINITY);
    far[5] = 1;
    far[17] = 4;
    EXPECT_FLOAT_EQ(Select(s, far, 2), 1.5f);
    EXPECT_EQ(Select(s, far, 3), INFINITY);
  }
  std::vector<float> scratch;
  // 33 rows: index 3 in the 16-lane part, 32 in the tail. xx = 10, dots 1: squared distances 8.
  std::vector<float> dots(33, 1.f);
  dots[32] = 6;    // 10 - 12 < 0: 0
  dots[3] = 4.5f;  // 1
  EXPECT_FLOAT_EQ(NeighbourDistance(dots.data(), 10, 33, 1, 2, scratch), 0.5f);
  std::vector<float> nan(33, 1.f);
  nan[3] = nan[32] = NAN;  // NaN squared distances: +inf, never the nearest (0 would be)
  EXPECT_FLOAT_EQ(NeighbourDistance(nan.data(), 10, 33, 1, 1, scratch), std::sqrt(8.f));
  std::vector<float> inf(33, INFINITY);  // inf - inf everywhere: every row infinitely far
  EXPECT_EQ(NeighbourDistance(inf.data(), INFINITY, 33, 1, 2, scratch), INFINITY);
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
