// Peak multiply-add rate of one core, f32 FMA (vfmadd231ps) against bf16 dot products
// (vdpbf16ps), with 12 independent accumulators in registers: whether bf16 can pay on this CPU.
// bf16 layers (ScoringPolicy.precision) can only be faster where the second figure is well above
// the first (bench/RESULTS.md, "bf16").
//
//   build/bench/fma_peak
#include <immintrin.h>

#include <chrono>
#include <cstdio>

namespace {

using Clock = std::chrono::steady_clock;
constexpr long kLoops = 100'000'000;

#define AE_TWELVE(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11)

// GFLOPS of 12 chains of f32 fused multiply-adds on 16 lanes (2 FLOPs each).
__attribute__((target("avx512f"))) double F32Peak() {
// Distinct starting values: identical chains would be merged into one by the compiler.
#define AE_ZERO(k) __m512 a##k = _mm512_set1_ps(static_cast<float>(k));
  AE_TWELVE(AE_ZERO)
  const __m512 x = _mm512_set1_ps(1e-9f), y = _mm512_set1_ps(1.f);
  const auto start = Clock::now();
  for (long i = 0; i < kLoops; ++i) {
#define AE_FMA(k) a##k = _mm512_fmadd_ps(x, y, a##k);
    AE_TWELVE(AE_FMA)
    asm volatile("" ::: "memory");
  }
  const double s = std::chrono::duration<double>(Clock::now() - start).count();
  float sink = 0;
  float lanes[16];
#define AE_SUM(k)                \
  _mm512_storeu_ps(lanes, a##k); \
  sink += lanes[0];
  AE_TWELVE(AE_SUM)
  asm volatile("" ::"r"(sink));
  return kLoops * 12.0 * 32 / s / 1e9;
}

// GFLOPS of 12 chains of bf16 dot products: 16 lanes x 2 pairs x 2 FLOPs per instruction.
__attribute__((target("avx512f,avx512bf16"))) double Bf16Peak() {
  AE_TWELVE(AE_ZERO)
  const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80);  // 1.0 in bf16
  const auto start = Clock::now();
  for (long i = 0; i < kLoops; ++i) {
#define AE_DOT(k) a##k = _mm512_dpbf16_ps(a##k, x, x);
    AE_TWELVE(AE_DOT)
    asm volatile("" ::: "memory");
  }
  const double s = std::chrono::duration<double>(Clock::now() - start).count();
  float sink = 0;
  float lanes[16];
  AE_TWELVE(AE_SUM)
  asm volatile("" ::"r"(sink));
  return kLoops * 12.0 * 64 / s / 1e9;
}

}  // namespace

int main() {
  if (!__builtin_cpu_supports("avx512f")) {
    std::printf("this CPU has no AVX-512\n");
    return 0;
  }
  const double f32 = F32Peak();
  std::printf("f32 FMA (vfmadd231ps zmm):       %7.1f GFLOPS per core\n", f32);
  if (!__builtin_cpu_supports("avx512bf16")) {
    std::printf("no AVX512_BF16: bf16 layers run on emulation, slower than f32\n");
    return 0;
  }
  const double bf16 = Bf16Peak();
  std::printf("bf16 dot product (vdpbf16ps zmm): %7.1f GFLOPS per core (%.2fx f32)\n", bf16,
              bf16 / f32);
  return 0;
}
