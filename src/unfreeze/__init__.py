"""unfreeze: which parameters should I train? Fine-tuning ablations as declared experiments."""

__version__ = "0.1.0"
