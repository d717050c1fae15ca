"""Compute kernels of h2q-tui, one folder per kernel: a readable reference beside a fast path.

The import name is ``h2q_kernels`` (the folder on disk is ``kernels/``): "kernels" is also a
package on PyPI, and a top-level module of that name would shadow it, or be shadowed by it.
"""
