"""Corpus building (Debian documentation -> tokenizer -> token files) and training (bf16 AdamW)."""
