"""fai-rl: one YAML recipe, five post-training algorithms, local GPUs/CPU or Tinker."""

__version__ = "0.1.0"
