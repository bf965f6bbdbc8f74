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
