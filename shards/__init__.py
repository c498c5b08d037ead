"""Image corpora to verified WebDataset shards, and the shard reader used by training.

This package holds the data format only (no model code); ``cdc`` and ``pipelines`` build on it.
"""

__version__ = "0.1.0"
