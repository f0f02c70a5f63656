#include "app/inspect.h"

#include <cstdio>

#include "io/model_config.h"
#include "io/safetensors.h"
#include "io/weights_dtype.h"

namespace lowsync {

void inspect_model(const std::string& model_dir) {
  const ModelConfig m = load_model_config(model_dir);
  CheckpointReader ckpt(model_dir);
  int64_t stored = 0, stored_bytes = 0;
  for (const auto& name : ckpt.names()) {
    const TensorInfo& t = ckpt.info(name);
    stored += t.numel();
    stored_bytes += t.bytes;
  }
  const int64_t params = m.parameter_count();
  std::printf("model:          %s\n", model_dir.c_str());
  std::printf("architecture:   %s (family %s, %s)\n", m.architecture.c_str(), family_name(m.family),
              m.is_decoder() ? "decoder" : "encoder");
  std::printf("layers:         %d\n", m.n_layers);
  std::printf("hidden:         %d\n", m.hidden);
  std::printf("heads:          %d (key/value heads %d, head dim %d)\n", m.n_heads, m.n_kv_heads, m.head_dim);
  const char* act = m.activation == Activation::SiLU ? "SiLU" : m.activation == Activation::GeluTanh ? "GELU (tanh)" : "GELU";
  std::printf("ffn:            %d (%s%s)\n", m.intermediate, m.gated_ffn() ? "gated " : "", act);
  std::printf("vocab:          %d\n", m.vocab);
  std::printf("max positions:  %d%s%s\n", m.max_positions, m.positions_note.empty() ? "" : ": ", m.positions_note.c_str());
  if (m.sliding_window) std::printf("sliding window: %d keys\n", m.sliding_window);
  if (m.rope_scaling.type != RopeScaling::Type::None)
    std::printf("rope scaling:   %s, factor %g\n", m.rope_scaling.type == RopeScaling::Type::Linear ? "linear" : "llama3",
                m.rope_scaling.factor);
  std::printf("embeddings:     %s\n", m.tied_embeddings ? "tied to the LM head" : (m.is_decoder() ? "untied" : "no LM head"));
  std::printf("parameters:     %lld (%.1f M); checkpoint holds %lld values, %.1f MiB\n", static_cast<long long>(params),
              params / 1e6, static_cast<long long>(stored), stored_bytes / 1048576.0);
  // weights.dtype stores the matrices narrower; norm weights and biases stay fp32. A decode step
  // reads every weight once, but of an untied input embedding only its few rows.
  const int64_t vectors = m.vector_parameter_count(), matrices = params - vectors;
  const int64_t unread = m.is_decoder() && !m.tied_embeddings ? int64_t(m.vocab) * m.hidden : 0;
  std::printf("KV cache:       %.1f KiB per token (fp32)\n", 2.0 * m.n_layers * m.kv_dim() * 4 / 1024.0);
  for (WeightsDType d : {WeightsDType::F32, WeightsDType::BF16, WeightsDType::F16, WeightsDType::Q8_0}) {
    const double b = weights_dtype_bytes(d);
    std::printf("weights %-5s  %.1f MiB per replica; a decode step reads %.1f MiB per token\n", weights_dtype_name(d),
                (b * matrices + 4.0 * vectors) / 1048576.0, (b * (matrices - unread) + 4.0 * vectors) / 1048576.0);
  }
}

}  // namespace lowsync
