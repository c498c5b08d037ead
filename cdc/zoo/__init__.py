"""Codecs on disk: checkpoints (save, load, verify, fingerprint) and the shipped models in ``weights/``,
loadable by name, with their cards and default decodes. May import ``cdc.models`` and the shared
modules; never training, evaluation or MLflow."""
