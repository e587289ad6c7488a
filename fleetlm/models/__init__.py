"""Weights on disk: the embedded default model, local Hugging Face folders, adapters."""
