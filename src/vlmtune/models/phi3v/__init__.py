"""Phi-3-Vision implemented on transformers Phi3 + CLIP parts."""
