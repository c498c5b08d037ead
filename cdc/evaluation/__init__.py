"""Measuring codecs: evaluation datasets, metrics, the classical baselines (JPEG, WebP, AVIF), the
harness and its cache, rate-distortion curves, BD-rate, plots and galleries. May import the codec
core (models, zoo, coding) and the shared modules; never training or the registry."""
