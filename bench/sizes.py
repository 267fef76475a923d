"""Sizes on benchmark command lines: ``100k``, ``1m``, ``250000``, comma-separated."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable


def size_list(minimum: int = 1) -> Callable[[str], list[int]]:
    """An argparse ``type`` reading ``100k,1m,5m`` into sorted distinct sizes >= ``minimum``."""

    def parse_size(text: str) -> int:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
        if not match:
            raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 100k, 1m, 250000)")
        factor = {"": 1, "k": 1000, "m": 1_000_000}[match.group(2).lower()]
        size = int(float(match.group(1)) * factor)
        if size < minimum:
            raise argparse.ArgumentTypeError(f"size {text!r} is too small (at least {minimum})")
        return size

    def parse_sizes(text: str) -> list[int]:
        return sorted({parse_size(part) for part in text.split(",") if part.strip()})

    return parse_sizes
