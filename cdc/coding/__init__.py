"""Images to ``.cdc`` bytes and back: the bitstream format, the ``Coder`` (header, fingerprint check,
limits), tile-by-tile coding of large images and encoder effort. May import ``cdc.models``,
``cdc.zoo`` and the shared modules; never training, evaluation or MLflow."""
