"""Lowering the folded backbone to on-device formats; one module per backend behind a registry."""
