"""Stop strings as token-id sequences for lowsync's prompts file (/stop_ids int32, /stop_offsets int64,
CSR; README "Prompts").

lowsync has no tokenizer: it stops a row when its generated token ids end with one of these
sequences. A string is written in each tokenization it commonly takes when generated: as it is, and
after a space (for BPE and SentencePiece tokenizers "\\n\\nUser:" and " User:" start different tokens).
What this misses: a model that spells the string with other token boundaries (say "Us" + "er:")
does not stop, and a sequence also matches when the string is only part of a longer word's tokens.
"""


def token_sequences(tokenizer, stops):
    """The distinct, non-empty token-id sequences of each stop string, as is and after a space."""
    seqs = []
    for s in stops:
        if not s:
            raise ValueError("a stop string is empty")
        variants = [tokenizer(s, add_special_tokens=False)["input_ids"]]
        # After a space: the space's own tokens are left out (what precedes the string is not part of it).
        space = tokenizer(" ", add_special_tokens=False)["input_ids"]
        spaced = tokenizer(" " + s, add_special_tokens=False)["input_ids"]
        if space and spaced[:len(space)] == space:
            spaced = spaced[len(space):]
        variants.append(spaced)
        for ids in variants:
            ids = [int(t) for t in ids]
            if ids and ids not in seqs:
                seqs.append(ids)
    return seqs


def write(h5file, seqs):
    """Writes /stop_ids and /stop_offsets into an open h5py file."""
    import numpy as np
    h5file["stop_ids"] = np.array([t for s in seqs for t in s], dtype=np.int32)
    h5file["stop_offsets"] = np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)
