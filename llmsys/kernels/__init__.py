"""Compute kernels: attention (reference path for now)."""
