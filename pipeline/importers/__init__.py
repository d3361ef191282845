"""Checkpoint readers: each returns a MekiModel (see hf_qwen3, megatron, mekify)."""
