"""runctl: run ML training on rented machines and know exactly when and how it ended."""

__version__ = "0.1.0"
