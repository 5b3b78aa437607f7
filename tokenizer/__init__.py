"""GPT-1 style BPE: normalisation, pre-tokenisation, training, special tokens, save/load, export."""
