"""`none`: the identity. Patching with it leaves every output bitwise unchanged."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Method


@dataclass
class NoCompression(Method):
    """Keeps every token at any ratio; the reference row of every benchmark table.

    Departures: none - the identity.
    """

    name = "none"
    stages = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ratio != 1:
            raise ValueError(
                f"method 'none' keeps every token, so it takes no ratio (got {self.ratio:g}): "
                "name a method to compress "
                "with (method='framefusion', ...; tokcompress.list_methods()) - 'none' is patch's default - or drop "
                "the ratio"
            )
