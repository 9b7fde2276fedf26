"""Compute kernels: attention (contiguous, paged reference, tiled paged) and half-precision
matmuls for CPUs without native bfloat16."""
