"""Test support any plugin can use: tiny random models and the conformance suite."""
