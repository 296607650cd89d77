"""Loaders turn files into named raw tensors plus metadata; no math happens here."""
