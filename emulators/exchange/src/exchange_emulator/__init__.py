"""Protocol-faithful Exchange Web Services (EWS) emulator."""

__all__ = ["__version__"]

__version__ = "0.1.0"
