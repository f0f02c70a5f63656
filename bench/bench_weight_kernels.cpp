// The decode products of SmolLM2-135M (30 layers of q, k, v, o, gate, up, down, then the 49152-row
// head) through the few-rows kernel with fp32, bf16 and q8_0 weights (random values), at 1 and 8
// rows of x; lowsync's bf16_dot kernel (x rounded to bf16 once per product: layers/bf16_dot_matmul.h)
// with vdpbf16ps where the CPU has AVX512_BF16, with its largest deviation from the fp32-activation
// result; and lowsync's q8_dot kernel (x quantised to q8_0, int8 block products:
// layers/q8_dot_matmul.h) at each level this CPU runs but scalar. Each with the bandwidth at which
// it streams its weights (bytes / time). Timed in the thread's CPU time, the minimum of --reps
// interleaved repetitions: on a machine shared with other work, wall time measures the others as
// much as the kernel. (At --threads 2 that is the calling thread's share of the work.)
//
//   build/bench/bench_weight_kernels [--threads 1] [--reps 15]
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include <algorithm>
#include <cmath>

#include "layers/bf16_dot_matmul.h"
#include "layers/few_rows_matmul.h"
#include "layers/q8_dot_matmul.h"
#include "layers/weight_memory.h"

using namespace lowsync;

namespace {

// n values of T in the CPU backend's weight memory (layers/weight_memory.h).
template <typename T>
class Stored {
 public:
  Stored(WeightMemory& memory, int64_t n) : mem_(memory.take(sizeof(T) * n)) {}
  T* data() const { return static_cast<T*>(mem_.get()); }
  T& operator[](int64_t i) const { return data()[i]; }

 private:
  std::shared_ptr<void> mem_;
};

struct Shape {
  int64_t N, K;
};

double thread_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, reps = 15;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
  }
  std::vector<Shape> shapes;
  for (int l = 0; l < 30; ++l)
    for (Shape s : {Shape{576, 576}, Shape{192, 576}, Shape{192, 576}, Shape{576, 576}, Shape{1536, 576},
                    Shape{1536, 576}, Shape{576, 1536}})
      shapes.push_back(s);
  shapes.push_back({49152, 576});
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> u(-1, 1);
  // Each precision's matrices in weight memory of its own, as the CPU backend keeps them (on huge
  // pages: with 4 KiB pages a 1-row product spends its time on page walks, and software prefetch
  // then pays where it does not in lowsync).
  WeightMemory f32_memory, bf16_memory, q8_memory;
  std::vector<Stored<float>> f32;
  std::vector<Stored<BFloat16>> bf16;
  std::vector<Stored<BlockQ8_0>> q8;
  for (Shape s : shapes) {
    Stored<float> w(f32_memory, s.N * s.K);
    for (int64_t i = 0; i < s.N * s.K; ++i) w[i] = u(gen);
    Stored<BFloat16> b(bf16_memory, s.N * s.K);
    for (int64_t i = 0; i < s.N * s.K; ++i) b[i] = to_bf16(w[i]);
    Stored<BlockQ8_0> q(q8_memory, s.N * s.K / kQ8_0Block);
    for (int64_t i = 0; i < s.N * s.K / kQ8_0Block; ++i) q[i] = quantize_q8_0(w.data() + kQ8_0Block * i);
    f32.push_back(w);
    bf16.push_back(b);
    q8.push_back(q);
  }
  std::vector<float> x(8 * 1536), y(8 * 49152);
  for (float& v : x) v = u(gen);
  WorkerThreads workers(threads);
  const SimdLevel level = best_simd_level();
  // Columns: the few-rows kernel per weight type, bf16_dot (vdpbf16ps) where the CPU has it, then
  // q8_dot per level. kind: what each column calls; bytes: the weights it streams per pass.
  enum class Kind { Fp32, Bf16, Q8Widening, Bf16Dot, Q8Dot };
  struct Column {
    const char* name;
    Kind kind;
    Q8DotLevel q8 = Q8DotLevel::Scalar;
  };
  std::vector<Column> columns = {{"fp32", Kind::Fp32}, {"bf16", Kind::Bf16}, {"q8_0 (widening)", Kind::Q8Widening}};
  const bool dpbf16 = cpu_has_avx512_bf16();
  if (dpbf16) columns.push_back({"bf16_dot", Kind::Bf16Dot});
  for (Q8DotLevel l : {Q8DotLevel::Avx512Vnni, Q8DotLevel::AvxVnni, Q8DotLevel::Avx2})
    if (cpu_runs(l)) columns.push_back({q8_dot_level_name(l), Kind::Q8Dot, l});
  int64_t values = 0;
  for (Shape s : shapes) values += s.N * s.K;
  const auto bytes = [&](Kind k) {
    return k == Kind::Fp32 ? 4.0 * values
           : k == Kind::Bf16 || k == Kind::Bf16Dot ? 2.0 * values
                                                  : double(values / kQ8_0Block * sizeof(BlockQ8_0));
  };
  Q8Activations xq;
  std::vector<BFloat16> xb;
  for (int M : {1, 8}) {
    std::vector<double> best(columns.size(), 1e30);
    for (int r = 0; r < reps; ++r)
      for (size_t d = 0; d < columns.size(); ++d) {
        const double t0 = thread_seconds();
        for (size_t i = 0; i < shapes.size(); ++i) {
          const Shape s = shapes[i];
          switch (columns[d].kind) {
            case Kind::Fp32: few_rows_matmul(level, workers, x.data(), M, s.K, f32[i].data(), s.N, y.data(), false); break;
            case Kind::Bf16: few_rows_matmul(level, workers, x.data(), M, s.K, bf16[i].data(), s.N, y.data(), false); break;
            case Kind::Q8Widening:
              few_rows_matmul(level, workers, x.data(), M, s.K, q8[i].data(), s.N, y.data(), false);
              break;
            case Kind::Bf16Dot:
              bf16_dot_matmul(true, level, workers, x.data(), M, s.K, bf16[i].data(), s.N, y.data(), false, xb);
              break;
            case Kind::Q8Dot:
              q8_dot_matmul(columns[d].q8, workers, x.data(), M, s.K, q8[i].data(), s.N, y.data(), false, xq);
              break;
          }
        }
        best[d] = std::min(best[d], thread_seconds() - t0);
      }
    std::printf("%s, %d thread(s), %d row(s) of x:\n", simd_level_name(level), threads, M);
    for (size_t d = 0; d < columns.size(); ++d)
      std::printf("  %-16s %6.2f ms (%.2fx fp32) %5.1f GB/s\n", columns[d].name, 1e3 * best[d], best[0] / best[d],
                  bytes(columns[d].kind) / best[d] * 1e-9);
    if (!dpbf16) continue;
    std::vector<float> ref(M * 49152);
    double worst = 0;
    for (size_t i = 0; i < shapes.size(); i += 7) {  // bf16_dot's deviation from fp32 activations, relative to sum |x w|
      const Shape sh = shapes[i];
      bf16_dot_matmul(true, level, workers, x.data(), M, sh.K, bf16[i].data(), sh.N, y.data(), false, xb);
      few_rows_matmul(level, workers, x.data(), M, sh.K, bf16[i].data(), sh.N, ref.data(), false);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < sh.N; ++n) {
          double mag = 0;
          for (int64_t k = 0; k < sh.K; ++k) mag += std::abs(x[m * sh.K + k] * to_float(bf16[i][n * sh.K + k]));
          worst = std::max(worst, std::abs(double(y[m * sh.N + n]) - ref[m * sh.N + n]) / mag);
        }
    }
    std::printf("  bf16_dot: largest |deviation| from fp32 activations / sum |x w| %.1e\n", worst);
  }
}
