"""Serving an artifact: Triton model repositories, and a small Open Inference Protocol server."""
