#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "io/error.h"
#include "io/safetensors.h"

using namespace lowsync;
namespace fs = std::filesystem;

namespace {
// A model directory with one safetensors file holding an F32, an F16 and a BF16 tensor.
fs::path make_checkpoint() {
  fs::path dir = fs::temp_directory_path() / ("lowsync_st_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const float f32[4] = {1.5f, -2.f, 0.f, 3.25f};
  // IEEE half: 1.0 = 0x3C00, -2.0 = 0xC000, 0.5 = 0x3800, 65504 = 0x7BFF, 2^-24 (subnormal) = 0x0001
  const uint16_t f16[5] = {0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001};
  // bfloat16: the upper 16 bits of the fp32 pattern: 1.0 = 0x3F80, -0.5 = 0xBF00, 256 = 0x4380
  const uint16_t bf16[3] = {0x3F80, 0xBF00, 0x4380};
  std::string header =
      R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
      R"("b":{"dtype":"F16","shape":[5],"data_offsets":[16,26]},)"
      R"("c":{"dtype":"BF16","shape":[3,1],"data_offsets":[26,32]}})";
  std::ofstream out(dir / "model.safetensors", std::ios::binary);
  uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header;
  out.write(reinterpret_cast<const char*>(f32), 16);
  out.write(reinterpret_cast<const char*>(f16), 10);
  out.write(reinterpret_cast<const char*>(bf16), 6);
  return dir;
}
}  // namespace

TEST(Safetensors, ReadsAndConvertsEveryDtype) {
  CheckpointReader r(make_checkpoint().string());
  EXPECT_EQ(r.read("a"), (std::vector<float>{1.5f, -2.f, 0.f, 3.25f}));
  EXPECT_EQ(r.read_rows("a", 1, 2), (std::vector<float>{0.f, 3.25f}));
  auto b = r.read("b");
  EXPECT_EQ(b[0], 1.f);
  EXPECT_EQ(b[1], -2.f);
  EXPECT_EQ(b[2], 0.5f);
  EXPECT_EQ(b[3], 65504.f);
  EXPECT_EQ(b[4], std::ldexp(1.f, -24));
  EXPECT_EQ(r.read("c"), (std::vector<float>{1.f, -0.5f, 256.f}));
}

TEST(Safetensors, MissingTensorAndMissingFileAreNamed) {
  CheckpointReader r(make_checkpoint().string());
  try {
    r.read("nope");
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("'nope'"), std::string::npos);
  }
  try {
    CheckpointReader missing("/nonexistent/model");
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model/model.safetensors"), std::string::npos);
  }
}
