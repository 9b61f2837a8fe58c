"""Declarative provisioning of NFON Multiline TAPI estates on Windows."""

__version__ = "0.1.0"
