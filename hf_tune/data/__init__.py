"""Data loading, splitting and preprocessing for every recipe kind."""

from hf_tune.data.images import DataError

__all__ = ["DataError"]
