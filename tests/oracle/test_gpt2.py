"""Oracle: lowsync on a small random-init GPT-2
against Hugging Face transformers: score log-probs within 1e-4, greedy generate identical (with and
without stopping at EOS), mean-pooled embeddings within 1e-4. See decoder_oracle.py.

Run: LOWSYNC_BIN=build/lowsync .venv/bin/python tests/oracle/test_gpt2.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import decoder_oracle  # noqa: E402

if __name__ == "__main__":
    decoder_oracle.main("gpt2")
