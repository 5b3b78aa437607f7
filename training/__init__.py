"""GPT-1 model, shard reader, DeepSpeed engine setup and the pretraining loop (no Ray here)."""
