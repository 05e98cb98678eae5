"""Tools that turn one model into deployable artifacts and check them by running them.

The compiler (one ONNX model in, every tier's artifact out, with measured fidelity) and the
Hugging Face exporter live here, above ``runtime/``, because they run models to verify them.
"""
