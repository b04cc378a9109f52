"""One module per runtime, each a loader and a runner behind one interface.

A runner takes a float32 NCHW numpy batch and returns ``{output name: array}``.
"""

from .base import Runner

__all__ = ["Runner"]
