"""sprout: train a small language model from nothing and make it useful."""

__version__ = "0.1.0"
