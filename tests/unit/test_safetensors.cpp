#include <gtest/gtest.h>
#include <sys/stat.h>

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

namespace {
// A model directory whose model.safetensors has the given header over `data_bytes` zero bytes.
std::string checkpoint_with_header(const std::string& tag, const std::string& header, size_t data_bytes) {
  fs::path dir = fs::temp_directory_path() / ("lowsync_st_" + tag + "_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream out(dir / "model.safetensors", std::ios::binary);
  uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << std::string(data_bytes, '\0');
  return dir.string();
}

// The UserError message of opening `dir`, or "" if it opened.
std::string open_error(const std::string& dir) {
  try {
    CheckpointReader r(dir);
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

// Issue 14: offsets are checked as signed values against the data, spans against dtype x shape,
// tensors against each other, and wrong-typed fields name the tensor.
TEST(Safetensors, BadHeadersAreNamed) {
  const struct {
    const char* tag;
    const char* header;
    const char* needle;
  } cases[] = {
      {"neg", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", "'a': 'data_offsets'"},
      {"past", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", "'a': 'data_offsets'"},
      {"span", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", "needs 12"},
      {"overlap", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       "overlap"},
      {"shape", R"({"a":{"dtype":"F32","shape":"x","data_offsets":[0,8]}})", "'a': 'shape'"},
      {"negdim", R"({"a":{"dtype":"F32","shape":[-2,-1],"data_offsets":[0,8]}})", "'a': 'shape'"},
      {"dtype", R"({"a":{"dtype":5,"shape":[2],"data_offsets":[0,8]}})", "'a': 'dtype'"},
      {"entry", R"({"a":[1,2]})", "'a' is [1,2]"},
      {"array", R"([1,2])", "not a JSON object"},
      {"huge", R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}})", "more than the file holds"},
  };
  for (const auto& c : cases) {
    const std::string dir = checkpoint_with_header(c.tag, c.header, 16);
    const std::string msg = open_error(dir);
    EXPECT_NE(msg.find(c.needle), std::string::npos) << c.tag << ": " << msg;
    EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << c.tag << ": " << msg;
  }
  // Empty tensors occupy no bytes: two at the same offset do not overlap.
  EXPECT_EQ(open_error(checkpoint_with_header(
                "empty", R"({"a":{"dtype":"F32","shape":[0,4096],"data_offsets":[8,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8)),
            "");
}

TEST(Safetensors, HeaderLengthPastTheFile) {
  fs::path dir = fs::temp_directory_path() / ("lowsync_st_len_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream out(dir / "model.safetensors", std::ios::binary);
  const uint64_t n = uint64_t(1) << 40;
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << "{}";
  out.close();
  EXPECT_NE(open_error(dir.string()).find("header length"), std::string::npos);
}

TEST(Safetensors, NonFiniteWeightsAreRefusedOnRead) {
  const std::string header = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  const std::string dir = checkpoint_with_header("nan", header, 16);
  {  // element [1, 0] = NaN
    std::fstream f(fs::path(dir) / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8 + header.size() + 8);
    const float nan = std::nanf("");
    f.write(reinterpret_cast<const char*>(&nan), 4);
  }
  CheckpointReader r(dir);
  EXPECT_EQ(r.read_rows("w", 0, 1), (std::vector<float>{0.f, 0.f}));  // a rank reading row 0 only is unaffected
  try {
    r.read("w");
    FAIL() << "no error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("'w' holds NaN at [1, 0]"), std::string::npos) << e.what();
  }
  try {
    r.read_cols("w", 0, 1);
    FAIL() << "no error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("[1, 0]"), std::string::npos) << e.what();
  }
  EXPECT_EQ(r.read_cols("w", 1, 2), (std::vector<float>{0.f, 0.f}));
}

TEST(Safetensors, FifoInPlaceOfTheWeightsIsRefused) {
  fs::path dir = fs::temp_directory_path() / ("lowsync_st_fifo_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::remove(dir / "model.safetensors");
  ASSERT_EQ(::mkfifo((dir / "model.safetensors").c_str(), 0600), 0);
  EXPECT_NE(open_error(dir.string()).find("FIFO"), std::string::npos);
}
