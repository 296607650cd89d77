"""The OpenAI-compatible HTTP face of `rocmforge serve`: validation, the wire format, streaming, metrics."""
