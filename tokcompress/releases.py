"""The transformers releases tokcompress supports: the floor it needs and the newest minor its tests ran on.

Checked first thing on `import tokcompress`, before anything imports transformers' internals (an older release
lacks names the engine imports, and would fail on an ImportError that does not say what to do), and again by
`patch()`, which also warns once about a release newer than the tested one.
"""

from __future__ import annotations

import warnings

import transformers
from packaging.version import Version

FLOOR = Version("5.23")
"""Oldest transformers release tokcompress supports (pyproject's lower bound)."""
NEWEST_TESTED = Version("5.25")
"""Newest transformers minor release the test suite ran on."""

_warned_untested = False


class UntestedTransformersWarning(UserWarning):
    """transformers is newer than the newest release tokcompress was tested with."""


def refuse_older_than_floor(version: str | None = None, error: type[Exception] = RuntimeError) -> None:
    """Raise `error` naming the upgrade command where transformers is older than the floor."""
    installed = Version(version or transformers.__version__)
    if installed.release[:2] < FLOOR.release[:2]:
        raise error(
            f"tokcompress needs transformers >= {FLOOR}, found {installed}; "
            f"upgrade with: pip install -U 'transformers>={FLOOR},<6'"
        )


def check_transformers_version(version: str | None = None) -> None:
    """Refuse a transformers older than the floor; warn (once) about one newer than the newest tested minor."""
    global _warned_untested
    refuse_older_than_floor(version)
    installed = Version(version or transformers.__version__)
    if installed.release[:2] > NEWEST_TESTED.release[:2] and not _warned_untested:
        _warned_untested = True
        warnings.warn(
            f"tokcompress was tested with transformers {FLOOR}-{NEWEST_TESTED}.x, found {installed}: it hooks "
            "transformers' internals, so check the results (handle.stats) or install a tested release "
            f"(pip install 'transformers>={FLOOR},<{NEWEST_TESTED.major}.{NEWEST_TESTED.minor + 1}')",
            UntestedTransformersWarning,
            stacklevel=3,
        )
