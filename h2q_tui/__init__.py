"""h2q-tui: train, watch, steer and compare small Hamiltonian/quaternion language models."""

__version__ = "0.1.0"
