"""Data for the stages: webdataset shard streams, the synthetic captioned world, block masking,
the tokenizer, transforms and zero-shot evaluation sets.

Submodules import their heavy dependencies (torch, webdataset, open_clip) themselves, so that
``import scaling.data`` stays cheap.
"""

from scaling.data.errors import DataError

__all__ = ["DataError"]
