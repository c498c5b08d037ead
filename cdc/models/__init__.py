"""The networks of the codec (Yang & Mandt, NeurIPS 2023): layers, the analysis and synthesis transforms,
the conditional U-Net, the diffusion process and its DDIM sampler, the entropy models, the perceptual
networks, and ``CDCCodec`` that joins them. May import only the shared modules (``cdc.config``, ...)."""
