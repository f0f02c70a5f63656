"""What the decoupled-model tools know about each Hugging Face family: class names, where layer
tensors live, the sizes that get split, and how a model's heads and FFN columns are shared out over
the P sub-blocks and how its layers group into segments."""
import re

FAMILIES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel", "bert": "BertModel"}
LAYER_RE = {
    "llama": re.compile(r"^model\.layers\.(\d+)\.(.+)$"),
    "gpt2": re.compile(r"^transformer\.h\.(\d+)\.(.+)$"),
    "bert": re.compile(r"^encoder\.layer\.(\d+)\.(.+)$"),
}
# How a decoupled segment's P streams merge (config.json bp.merge; absent = "delta"); see model.segment.
MERGES = ("delta", "mean")
LAYER_PREFIX = {"llama": "model.layers", "gpt2": "transformer.h", "bert": "encoder.layer"}


def sizes(cfg):
    """(family, layers, hidden, heads, kv_heads, head_dim, ffn) of a Hugging Face config (dict)."""
    mt = cfg["model_type"]
    if mt not in FAMILIES:
        raise ValueError(f"unsupported model_type {mt!r} (supported: {', '.join(FAMILIES)})")
    if mt == "gpt2":
        H, L, nh = cfg["n_embd"], cfg["n_layer"], cfg["n_head"]
        return mt, L, H, nh, nh, H // nh, cfg.get("n_inner") or 4 * H
    H, L, nh = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    if mt == "llama":
        nkv = cfg.get("num_key_value_heads") or nh
        d = cfg.get("head_dim") or H // nh
        return mt, L, H, nh, nkv, d, cfg["intermediate_size"]
    return mt, L, H, nh, nh, H // nh, cfg["intermediate_size"]


def make_shares(cfg, P, shares=None):
    """Per-sub-block (heads, kv_heads, ffn) lists: even by default; `shares` = query heads per sub-block
    (the FFN split proportionally, kv heads in the GQA ratio)."""
    _, _, _, nh, nkv, _, ffn = sizes(cfg)
    if P < 1:
        raise ValueError("P must be >= 1")
    if shares is None:
        if nh % P:
            raise ValueError(f"{nh} heads do not split evenly into {P} sub-blocks; pass shares")
        heads = [nh // P] * P
    else:
        heads = [int(h) for h in shares]
        if len(heads) != P or sum(heads) != nh or min(heads) < 1:
            raise ValueError(f"shares {heads} must be {P} positive head counts summing to {nh}")
    group = nh // nkv
    if any(h % group for h in heads):
        raise ValueError(f"sub-block head counts {heads} must be multiples of the GQA group size {group} "
                         f"({nh} heads, {nkv} key/value heads)")
    kv = [h // group for h in heads]
    cum = [0]
    for h in heads:
        cum.append(cum[-1] + h)
    bounds = [ffn * c // nh for c in cum]
    ffns = [bounds[i + 1] - bounds[i] for i in range(P)]
    if min(ffns) < 1:
        raise ValueError(f"FFN split {ffns} has an empty sub-block")
    return heads, kv, ffns


def ranges(counts):
    """[(start, end)] of consecutive counts: [2, 3] -> [(0, 2), (2, 5)]."""
    out, s = [], 0
    for n in counts:
        out.append((s, s + n))
        s += n
    return out


def segments(L, k, coupled=()):
    """The layers in the order they run, as (first, end, is_coupled): every coupled layer on its own,
    and each run of decoupled layers between them cut into segments of up to k layers (a segment ends
    with its merge). lowsync's C++ engine groups them the same way (DecoupledSpec::segments)."""
    coupled = set(coupled)
    out, l = [], 0
    while l < L:
        if l in coupled:
            out.append((l, l + 1, True))
            l += 1
            continue
        e = l
        while e < L and e - l < k and e not in coupled:
            e += 1
        out.append((l, e, False))
        l = e
    return out


def parse_layers(text, L):
    """'0,3' -> [0, 3]: sorted, unique, each in [0, L)."""
    if text is None or text == "":
        return []
    layers = sorted({int(x) for x in str(text).split(",") if x.strip() != ""}) if isinstance(text, str) \
        else sorted({int(x) for x in text})
    bad = [l for l in layers if not 0 <= l < L]
    if bad:
        raise ValueError(f"coupled layers {bad} out of range: the model has {L} layers (0..{L - 1})")
    return layers
