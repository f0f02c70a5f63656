// The compressed sync's encodings (mpi_comm/sync_codec.h) against their stated bounds, computed
// here from the definition: bf16 rounds to nearest (relative 2^-8); q8 keeps each block's largest
// |x| exact and the other 31 within half a scale, the scale max |rest| / 127 rounded up to a bf16.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "mpi_comm/sync_codec.h"

namespace lowsync {
namespace {

std::vector<float> round_trip(SyncDType d, const std::vector<float>& x) {
  std::vector<uint8_t> bytes(encoded_bytes(d, static_cast<int64_t>(x.size())));
  encode(d, x.data(), static_cast<int64_t>(x.size()), bytes.data());
  std::vector<float> y(x.size(), 0.f);
  decode(d, bytes.data(), static_cast<int64_t>(x.size()), y.data());
  return y;
}

// The q8 bound of every value of x (a multiple of 32 long), from the definition.
std::vector<double> q8_bound(const std::vector<float>& x) {
  std::vector<double> bound(x.size());
  for (size_t b0 = 0; b0 < x.size(); b0 += 32) {
    size_t top = b0;
    for (size_t j = b0; j < b0 + 32; ++j)
      if (std::fabs(x[j]) > std::fabs(x[top])) top = j;
    double rest = 0;
    for (size_t j = b0; j < b0 + 32; ++j)
      if (j != top) rest = std::max(rest, double(std::fabs(x[j])));
    for (size_t j = b0; j < b0 + 32; ++j)
      bound[j] = j == top ? 0 : 1.0001 * (rest / 127 * (1 + std::ldexp(1.0, -7))) / 2;
  }
  return bound;
}

TEST(SyncCodec, BytesOnTheWire) {
  EXPECT_EQ(encoded_bytes(SyncDType::F32, 64), 256);
  EXPECT_EQ(encoded_bytes(SyncDType::BF16, 64), 128);
  EXPECT_EQ(encoded_bytes(SyncDType::Q8, 64), 2 * (4 + 2 + 1 + 32));
  EXPECT_DOUBLE_EQ(sync_bytes_per_value(SyncDType::Q8), 39.0 / 32);
  // Sizes that are not a multiple of a block are padded to one (the sync zero-fills the tail).
  EXPECT_EQ(sync_padded(SyncDType::Q8, 1), 32);
  EXPECT_EQ(sync_padded(SyncDType::Q8, 33), 64);
  EXPECT_EQ(sync_padded(SyncDType::Q8, 64), 64);
  EXPECT_EQ(sync_padded(SyncDType::BF16, 33), 33);
}

TEST(SyncCodec, Bf16RoundsToNearest) {
  std::mt19937 rng(1);
  std::normal_distribution<float> g(0.f, 3.f);
  std::vector<float> x(1000);
  for (auto& v : x) v = g(rng);
  const std::vector<float> y = round_trip(SyncDType::BF16, x);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_LE(std::fabs(y[i] - x[i]), std::ldexp(std::fabs(x[i]), -8)) << i;
}

// Random blocks over many magnitudes, with and without one huge channel (SmolLM2's partial sums
// reach 6e4 x their median): the outlier comes back exact, the others within half a scale that
// the outlier does not set.
TEST(SyncCodec, Q8KeepsEachBlocksOutlierAndBoundsTheRest) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> x(32 * 200);
  for (size_t b = 0; b < 200; ++b) {
    const float magnitude = std::pow(10.f, float(int(b % 9) - 6));  // 1e-6 .. 1e2
    for (size_t j = 0; j < 32; ++j) x[b * 32 + j] = magnitude * u(rng);
    if (b % 2) x[b * 32 + b % 32] = magnitude * 6e4f * (b % 4 == 1 ? 1 : -1);  // an outlier channel
  }
  const std::vector<float> y = round_trip(SyncDType::Q8, x);
  const std::vector<double> bound = q8_bound(x);
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double err = std::fabs(double(y[i]) - x[i]);
    ASSERT_LE(err, bound[i]) << "i=" << i << " x=" << x[i] << " got " << y[i];
    if (bound[i] > 0) worst = std::max(worst, err / bound[i]);
  }
  EXPECT_GT(worst, 0.5);  // the bound is tight: some value lands near half a step from its code
  for (size_t b = 1; b < 200; b += 2) EXPECT_EQ(y[b * 32 + b % 32], x[b * 32 + b % 32]) << "outlier of block " << b;
  // The other 31 of an outlier block keep their resolution: relative error <= 1/254 of their max.
  for (size_t j = 0; j < 32; ++j)
    if (j != 1) EXPECT_NEAR(y[32 + j], x[32 + j], 1e-5 / 254 * (1 + std::ldexp(1.0, -7)) * 1.0001) << j;
}

// Edge blocks: all zero, one value only, equal magnitudes (ties), values whose max |rest| / 127
// rounds down to a bf16 (the scale must round up, or the max would clip at 127), tiny values.
TEST(SyncCodec, Q8EdgeBlocks) {
  std::vector<float> x(32 * 5, 0.f);
  x[32 + 7] = -3.5f;                                        // block 1: one value
  for (int j = 0; j < 32; ++j) x[64 + j] = j % 2 ? 2.f : -2.f;  // block 2: ties
  for (int j = 0; j < 32; ++j) x[96 + j] = 127.f * 1.0004f * (j % 3 - 1);  // block 3: scale 1.0004, bf16 1.0 below it: up to 1.0078
  for (int j = 0; j < 32; ++j) x[128 + j] = 1e-7f * (j - 16);  // block 4: tiny values
  const std::vector<float> y = round_trip(SyncDType::Q8, x);
  const std::vector<double> bound = q8_bound(x);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_LE(std::fabs(double(y[i]) - x[i]), bound[i]) << i;
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], 0.f);
  EXPECT_EQ(y[32 + 7], -3.5f);
  EXPECT_EQ(y[64], x[64]);  // the first of equal magnitudes is the outlier, exact
}

TEST(SyncCodec, DecodeAddAccumulates) {
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[i] = float(i) - 20.f;
  for (SyncDType d : {SyncDType::F32, SyncDType::BF16, SyncDType::Q8}) {
    std::vector<uint8_t> bytes(encoded_bytes(d, 64));
    encode(d, x.data(), 64, bytes.data());
    std::vector<float> once(64), acc(64, 1.f);
    decode(d, bytes.data(), 64, once.data());
    decode_add(d, bytes.data(), 64, acc.data());
    for (int i = 0; i < 64; ++i) EXPECT_EQ(acc[i], 1.f + once[i]) << sync_dtype_name(d) << " " << i;
  }
}

}  // namespace
}  // namespace lowsync
