"""Head-grouping initialisation for extremely sensitive blocks (the SPD paper's step before
distilling them): a permutation of a block's heads and FFN columns over the tensor-parallel ranks
that leaves full TP's function unchanged but makes the block's Sync-Point Drop form closer to it.

1. Heads: under SPD each rank's FFN sees only its own heads' attention output, so heads that attend
   alike should sit on different ranks (each rank then sees a bit of every kind of behaviour).
   The unit that moves is a key/value group (its query heads read one key/value head, and lowsync
   keeps groups whole when tp divides the key/value heads); two units' similarity is the cosine of
   their mean attention maps on calibration activations. Units are placed greedily, most similar
   first, each on the rank with room (its share's count of groups: uneven at SmolLM2's tp 2) where
   its largest similarity to the units already there is smallest. With one unit per rank (SmolLM2
   at tp 3: 3 key/value heads) every placement is the same up to renaming the ranks, and only step
   2 changes anything. With fewer key/value heads than ranks (tp 4) a group's query heads are split
   over ranks in order and no unit can move without breaking that: heads stay, only step 2 runs.
2. FFN columns matched to head groups by the size of the FFN output: FFN column j on rank r sees
   norm2(x + a_r) instead of norm2(x + a); the size of that change of its output,
   mean |act_j(norm2(x + a_r)) - act_j(norm2(x + a))| * ||W_down[:, j]||, is its cost on rank r.
   Columns are assigned, each rank keeping its share's count, greedily by how much they lose when
   not placed on their cheapest rank (largest regret first).
3. The weights are permuted accordingly (q rows, k/v rows, o columns; gate/up rows, down columns).
"""
import torch
import torch.nn.functional as F

from spd_model import rms_norm, rotate


@torch.no_grad()
def attention_maps(block, x, cos, sin):
    """Mean attention probabilities per query head [nh, T, T] over the rows of x [N, T, H]."""
    B, T, _ = x.shape
    h = rms_norm(x, block.norm1, block.eps)
    q = F.linear(h, block.wq).view(B, T, block.nh, block.d).transpose(1, 2)
    k = F.linear(h, block.wk).view(B, T, block.nkv, block.d).transpose(1, 2)
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    k = k.repeat_interleave(block.nh // block.nkv, dim=1)
    scores = q @ k.transpose(-1, -2) / block.d ** 0.5
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)
    return scores.masked_fill(causal, float("-inf")).softmax(-1).mean(0)


def group_units(similarity, capacity):
    """Units (key/value groups) onto ranks, capacity[r] on rank r, similar units apart: a list of
    len(capacity) lists."""
    n, P = similarity.shape[0], len(capacity)
    order = sorted(range(n), key=lambda u: -(similarity[u].sum() - similarity[u, u]).item())
    ranks = [[] for _ in range(P)]
    for u in order:
        room = [r for r in range(P) if len(ranks[r]) < capacity[r]]
        worst = lambda r: max((similarity[u, v].item() for v in ranks[r]), default=-1.0)  # noqa: E731
        ranks[min(room, key=lambda r: (worst(r), r))].append(u)
    return [sorted(g) for g in ranks]


@torch.no_grad()
def ffn_column_costs(block, x, cos, sin):
    """cost [I, P]: how much FFN column j's output changes on rank r under SPD (module docstring)."""
    heads = block.head_outputs(x, cos, sin)
    P = len(block.shares)
    a = [block.attention_partial(heads, r) for r in range(P)]

    def act(h):
        n = rms_norm(h, block.norm2, block.eps)
        return F.silu(F.linear(n, block.w_gate)) * F.linear(n, block.w_up)      # [N, T, I]

    full = act(x + sum(a))
    size = block.w_down.norm(dim=0)                                               # [I]
    return torch.stack([(act(x + a[r]) - full).abs().mean((0, 1)) * size for r in range(P)], dim=1)


def assign_columns(cost, capacity):
    """Columns onto ranks, capacity[r] on rank r, largest regret first: a list of P lists."""
    I, P = cost.shape
    best = cost.min(1).values
    second = cost.sort(1).values[:, 1] if P > 1 else best
    ranks = [[] for _ in range(P)]
    for j in sorted(range(I), key=lambda j: -(second[j] - best[j]).item()):
        room = [r for r in range(P) if len(ranks[r]) < capacity[r]]
        ranks[min(room, key=lambda r: cost[j, r].item())].append(j)
    return [sorted(g) for g in ranks]


@torch.no_grad()
def permute_block(block, unit_groups, column_groups):
    """Reorders the block's weights in place so that rank r's heads are the units of unit_groups[r]
    and its FFN columns those of column_groups[r] (the full-TP function is unchanged)."""
    group, d = block.nh // block.nkv, block.d
    units = [u for g in unit_groups for u in g]
    q_heads = [u * group + i for u in units for i in range(group)]
    q_rows = torch.tensor([h * d + i for h in q_heads for i in range(d)])
    kv_rows = torch.tensor([u * d + i for u in units for i in range(d)])
    cols = torch.tensor([j for g in column_groups for j in g])
    block.wq.copy_(block.wq[q_rows])
    block.wk.copy_(block.wk[kv_rows])
    block.wv.copy_(block.wv[kv_rows])
    block.wo.copy_(block.wo[:, q_rows])
    block.w_gate.copy_(block.w_gate[cols])
    block.w_up.copy_(block.w_up[cols])
    block.w_down.copy_(block.w_down[:, cols])


def head_grouping(block, x, cos, sin, log=print):
    """Permutes `block` (in place) for the SPD form, from calibration activations x [N, T, H]."""
    P = len(block.shares)
    group = block.nh // block.nkv
    heads = [h1 - h0 for h0, h1 in (s["heads"] for s in block.shares)]
    if all(h % group == 0 for h in heads):  # whole key/value groups per rank: they can move
        maps = attention_maps(block, x, cos, sin)                      # [nh, T, T]
        unit_maps = F.normalize(maps.view(block.nkv, group, -1).mean(1), dim=1)  # [nkv, T*T]
        units = group_units(unit_maps @ unit_maps.T, [h // group for h in heads])
    else:  # groups split over ranks (tp > key/value heads): the heads stay where they are
        units = [list(range(block.nkv))]
    # The column costs depend on which heads each rank holds: permute the heads first.
    permute_block(block, units, [list(range(block.w_gate.shape[0]))])
    cost = ffn_column_costs(block, x, cos, sin)
    before = sum(cost[block.shares[r]["ffn"][0]:block.shares[r]["ffn"][1], r].sum().item() for r in range(P))
    columns = assign_columns(cost, [f1 - f0 for f0, f1 in (s["ffn"] for s in block.shares)])
    permute_block(block, [list(range(block.nkv))], columns)
    after = sum(cost[j, r].item() for r in range(P) for j in columns[r])
    log(f"    head grouping: kv groups per rank {units}; FFN column cost {before:.4g} -> {after:.4g}")
    return units, columns
