"""Wire and canonical types of the gateway, as msgspec Structs."""

__version__ = "0.1.0"
