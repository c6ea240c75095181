"""CT cohorts to a training-ready HDF5 cache: readers, HU calibration, orientation, resampling.

`preprocessing.run(cfg)` is the library entry that `ctclip preprocess` calls; `preprocessing.cache`
is the read API of the cache. Heavy modules are imported on first use so `import preprocessing`
stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from preprocessing.runner import Summary


def run(cfg: dict[str, Any]) -> Summary:
    """Preprocess a cohort into a cache; see `preprocessing.runner.DEFAULTS` for the keys."""
    from preprocessing.runner import run as _run

    return _run(cfg)


def open_cache(path: Any, verify: bool = False) -> Any:
    """Open a cache for reading (`verify`: check checksums); see `preprocessing.cache.VolumeCache`."""
    from preprocessing.cache import open_cache as _open

    return _open(path, verify=verify)
