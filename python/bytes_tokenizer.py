#!/usr/bin/env python3
"""Byte-level tokenizer for the tiny decoders in examples/models/ (byte-gpt2, byte-llama).

Token ids 0..255 are the UTF-8 bytes of the text; 256 is EOS/BOS.

CLI:
    python/bytes_tokenizer.py encode FILE OUT.h5   # one prompt per line -> prompts HDF5 (CSR)
    python/bytes_tokenizer.py decode IDS...        # print decoded text
"""
import sys

EOS = 256
BOS = 256
VOCAB_SIZE = 257


def encode(text):
    """UTF-8 bytes of text as a list of ints in 0..255."""
    return list(text.encode("utf-8"))


def decode(ids):
    """Inverse of encode; drops EOS/BOS (256) and anything else outside 0..255."""
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


def write_prompts(lines, out_path):
    """Write prompts HDF5: /input_ids int32 [T], /offsets int64 [N+1]."""
    import h5py
    import numpy as np
    seqs = [encode(line) for line in lines]
    ids = np.array([t for s in seqs for t in s], dtype=np.int32)
    offsets = np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)
    with h5py.File(out_path, "w") as f:
        f["input_ids"] = ids
        f["offsets"] = offsets
    return len(seqs), len(ids)


def main(argv):
    if len(argv) == 3 and argv[0] == "encode":
        with open(argv[1], encoding="utf-8") as f:
            lines = [l.rstrip("\r\n") for l in f]
        lines = [l for l in lines if l]
        n, t = write_prompts(lines, argv[2])
        print(f"wrote {argv[2]}: {n} prompts, {t} tokens")
        return 0
    if len(argv) >= 1 and argv[0] == "decode":
        print(decode(argv[1:]))
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
