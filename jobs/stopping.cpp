#include "jobs/stopping.h"

#include <algorithm>

#include "io/error.h"

namespace lowsync {

GenerateOptions resolve_stops(const GenerateOptions& opt, const ModelConfig& model, const PromptReader& input,
                              const std::string& job_path) {
  GenerateOptions out = opt;
  for (int id : opt.stop_token_ids)
    if (id >= model.vocab)
      throw UserError(job_path + ": key 'generate.stop_token_ids' holds " + std::to_string(id) +
                      "; expected ids below the model's vocabulary size " + std::to_string(model.vocab));
  if (opt.logprobs > model.vocab)
    throw UserError(job_path + ": key 'generate.logprobs' is " + std::to_string(opt.logprobs) +
                    "; expected at most the model's vocabulary size " + std::to_string(model.vocab));
  if (!opt.has_stop_token_ids) out.stop_token_ids.assign(model.eos_token_ids.begin(), model.eos_token_ids.end());
  if (!opt.stop_at_eos) out.stop_token_ids.clear();
  out.has_stop_token_ids = true;
  out.stop_sequences = input.stop_sequences();
  return out;
}

std::optional<FinishReason> finish_reason(const ModelConfig& model, const GenerateOptions& opt, size_t prompt_tokens,
                                          const std::vector<int32_t>& generated) {
  const int64_t n = static_cast<int64_t>(generated.size());
  if (n >= opt.min_new_tokens) {
    const std::vector<int>& ids = opt.stop_token_ids;
    if (std::find(ids.begin(), ids.end(), generated.back()) != ids.end()) return FinishReason::eos;
    for (const std::vector<int32_t>& seq : opt.stop_sequences)
      if (seq.size() <= generated.size() && std::equal(seq.rbegin(), seq.rend(), generated.rbegin()))
        return FinishReason::stop;
  }
  if (n >= opt.max_new_tokens) return FinishReason::length;
  // The next pass would put the last token at position prompt + generated - 1.
  if (static_cast<int64_t>(prompt_tokens) + n > model.max_positions) return FinishReason::context;
  return std::nullopt;
}

}  // namespace lowsync
