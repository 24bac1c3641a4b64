"""RSFT: adapt speech recognisers to new accents and noisy rooms."""

__version__ = "0.1.0"
