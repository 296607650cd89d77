"""The serving engine: scheduler, KV block pool with prefix cache, batched model step.

The HTTP face (rocmforge.server) talks to it only through rocmforge.engine.protocol.
"""
