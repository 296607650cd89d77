"""Built-in architecture plugins. Each module registers through the same hooks
a third-party plugin uses (see rocmforge.hookspecs)."""
