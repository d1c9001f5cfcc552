"""Weak-to-strong scaling studies of vision foundation models, the EVA way."""
__version__ = "0.1.0"
