"""Experimental modifiers: created by the factory only with ``allow_experimental=True``."""

__all__: list[str] = []
