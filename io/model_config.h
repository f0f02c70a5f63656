#pragma once
// The shape of a model, read from a Hugging Face config.json. One struct serves the three
// families; the flags say which variant of each block part the family uses. The llama family
// covers the LLaMA-shaped decoders (llama, mistral, qwen2, phi3, gemma): the fields below say how
// each differs (checkpoint layout, activation, embedding scale, norm weight offset, sliding window,
// RoPE scaling).
#include <cstdint>
#include <string>
#include <vector>

namespace lowsync {

enum class Family { Llama, GPT2, Bert };
enum class Activation { SiLU, GeluTanh, GeluErf };

// How a checkpoint of the llama family names its projections.
enum class Layout {
  Separate,  // q_proj, k_proj, v_proj; gate_proj, up_proj (llama, mistral, qwen2, gemma)
  Fused,     // Phi-3: qkv_proj = [q; k; v] and gate_up_proj = [gate; up] along the output rows
};

// RoPE frequency scaling (config.json's `rope_scaling`), as transformers 4.44 computes it.
struct RopeScaling {
  enum class Type { None, Linear, Llama3 };
  Type type = Type::None;
  float factor = 1.f;                    // Linear and Llama3: wavelengths stretched by this much
  float low_freq_factor = 1.f, high_freq_factor = 4.f;  // Llama3: the band that is interpolated
  int original_max_positions = 8192;     // Llama3: the context the model was trained at
};

// A decoupled model (block parallelism, DeTransformer): every layer is `sub_blocks` independent
// sub-blocks, each with its own heads, FFN columns and residual stream; the streams merge with one
// all-reduce every `sync_every` layers. The `coupled` layers stay the base model's layers and run
// tensor-parallel (2 all-reduces each); segments of decoupled layers end before them. Empty
// (sub_blocks = 0) for an ordinary model.
struct DecoupledSpec {
  // How a segment's P streams x_r merge (config.json bp.merge; absent = Delta). One all-reduce either way.
  //   Delta: x = x + sum_r (x_r - x)  each stream adds its share of the layers (pre-LN decoders)
  //   Mean:  x = (1/P) sum_r x_r      each stream estimates the whole layers (row-parallel outputs scaled
  //                                   up at conversion); fits post-LN models, whose streams are full states
  enum class Merge { Delta, Mean };
  int sub_blocks = 0, sync_every = 1;
  Merge merge = Merge::Delta;
  std::vector<int> heads, kv_heads, ffn;  // per sub-block; may be uneven
  std::vector<int> coupled;               // layer indices, increasing
  bool enabled() const { return sub_blocks > 0; }
  bool is_coupled(int layer) const;

  // Layers [first, end) that run between two syncs: a coupled layer on its own, or up to
  // `sync_every` consecutive decoupled layers whose streams merge after the last.
  struct Segment {
    int first = 0, end = 0;
    bool coupled = false;
  };
  // The model's layers in the order they run (python/decoupled/family.py `segments` is the same).
  std::vector<Segment> segments(int n_layers) const;
};

// A checkpoint whose blocks were recovered for Sync-Point Drop at one tensor-parallel split
// (python/spd_recover.py: distilled and regrouped blocks, config.json key 'lowsync_spd'): its weights
// are right only with exactly these ranks, shares and dropped syncs. Empty (tp = 0) otherwise.
struct SpdCheckpoint {
  int tp = 0;
  std::vector<int> drop;        // layers whose attention sync is dropped, ascending
  std::vector<int> heads, ffn;  // query heads and FFN columns of each rank, in rank order
  bool present() const { return tp > 0; }
};

struct ModelConfig {
  std::string dir;
  std::string architecture;  // e.g. "LlamaForCausalLM"
  Family family = Family::Llama;
  int hidden = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, intermediate = 0;
  int vocab = 0, max_positions = 0, type_vocab = 0;
  std::string positions_note;       // why max_positions is less than max_position_embeddings, if it is
  float norm_eps = 1e-5f, rope_theta = 10000.f;
  Activation activation = Activation::SiLU;  // of the FFN; gated FFNs apply it to the gate
  Layout layout = Layout::Separate;
  float embed_scale = 1.f;          // token embeddings are multiplied by this (Gemma: sqrt(hidden))
  float norm_weight_offset = 0.f;   // RMSNorm scales by (offset + weight) (Gemma: 1; folded at load)
  int sliding_window = 0;           // a query sees only the last this many keys (itself included); 0: all
  RopeScaling rope_scaling;
  bool tied_embeddings = false;
  bool attention_bias = false;      // q/k/v/o biases (GPT-2, BERT; optional for LLaMA)
  std::vector<int> eos_token_ids;
  std::string json_text;            // config.json as read, for fingerprints
  DecoupledSpec bp;
  SpdCheckpoint spd_checkpoint;

  bool is_decoder() const { return family != Family::Bert; }
  bool gated_ffn() const { return family == Family::Llama; }
  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  int64_t parameter_count() const;
  // Of those, the norm weights and biases (fp32 whatever weights.dtype is; the rest are matrices).
  int64_t vector_parameter_count() const;
};

// Reads MODEL_DIR/config.json; an unknown architecture or a missing key is a UserError naming it.
ModelConfig load_model_config(const std::string& model_dir);
const char* family_name(Family f);

}  // namespace lowsync
