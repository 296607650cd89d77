"""``python -m tests.server.serve_reference MODEL PORT``: the server over the reference engine (a test fake)."""

import sys

import rocmforge
from rocmforge.cli.serve import serve_app
from rocmforge.server import create_app

from .reference_engine import ReferenceEngine

if __name__ == "__main__":
    model = rocmforge.load_model(sys.argv[1])
    serve_app(create_app(ReferenceEngine(model), model, served_model_name="smol"), "127.0.0.1", int(sys.argv[2]))
