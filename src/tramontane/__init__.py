"""Tramontane: a sovereign AI compute platform."""

__version__ = "0.1.0"
