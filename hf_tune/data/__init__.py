"""Data loading, splitting and preprocessing for every recipe kind."""

from hf_tune.errors import DataError

__all__ = ["DataError"]
