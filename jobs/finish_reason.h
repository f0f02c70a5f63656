#pragma once
// Why a generated row ended: the codes of /generated/finish_reason (README "Results").
#include <cstdint>

namespace lowsync {

enum class FinishReason : uint8_t {
  length = 0,   // generate.max_new_tokens new tokens
  eos = 1,      // a stop token id (generate.stop_token_ids, by default the model's EOS ids)
  stop = 2,     // the new tokens end with a stop sequence of the prompts file (/stop_ids)
  context = 3,  // the next token would not fit the model's positions
};

// The dataset's `codes` attribute: the names in code order.
inline constexpr const char* kFinishReasonCodes = "length,eos,stop,context";

}  // namespace lowsync
