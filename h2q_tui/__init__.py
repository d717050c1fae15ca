"""h2q-tui: train, watch, steer and compare small Hamiltonian/quaternion language models."""

from __future__ import annotations

FALLBACK_VERSION = "0.1.0"  # only for a bare checkout that was never installed


def __getattr__(name: str) -> str:
    """``h2q_tui.__version__``: the installed distribution's version (pyproject.toml), read lazily."""
    if name != "__version__":
        raise AttributeError(f"module 'h2q_tui' has no attribute {name!r}")
    from importlib import metadata  # lazy: read only by --version and serve's /api/version

    try:
        return metadata.version("h2q-tui")
    except metadata.PackageNotFoundError:
        return FALLBACK_VERSION
