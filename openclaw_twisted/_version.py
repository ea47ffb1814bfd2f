"""The package's version (its own module: the edges report it without importing the root)."""

__version__ = "0.1.0"
