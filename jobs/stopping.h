#pragma once
// When a generated row ends, and why. Static and continuous batching share these rules, so a row
// ends at the same token whichever runs it.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/job_config.h"
#include "io/model_config.h"
#include "io/prompts.h"
#include "jobs/finish_reason.h"

namespace lowsync {

// The job's generate options with its stop rules made concrete for this model and input:
// stop_token_ids the ids that end a row (those given, else the model's EOS ids; none with
// stop_at_eos: false) and stop_sequences the prompts file's. UserError naming the key when a given
// id is not in the model's vocabulary.
GenerateOptions resolve_stops(const GenerateOptions& opt, const ModelConfig& model, const PromptReader& input,
                              const std::string& job_path);

// Why a row with these new tokens ends, or nothing when it goes on. In order: its last token is a
// stop token id (eos) or its new tokens end with a stop sequence (stop), neither before
// min_new_tokens; it has max_new_tokens (length); the next pass would put its last token past the
// model's last position (context).
std::optional<FinishReason> finish_reason(const ModelConfig& model, const GenerateOptions& opt, size_t prompt_tokens,
                                          const std::vector<int32_t>& generated);

}  // namespace lowsync
