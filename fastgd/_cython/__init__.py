"""Cython/OpenMP kernels, built from kernels/*.pyx by setup.py (one module per rule, named after it)."""
