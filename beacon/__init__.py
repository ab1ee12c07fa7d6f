"""Beacon: inject facts into a language model with LoRA, and see honestly what it does."""
