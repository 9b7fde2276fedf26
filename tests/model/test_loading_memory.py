"""Loading never holds two copies of the weights: peak resident memory during `load_model`
stays near the size of the loaded parameters (measured in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llmsys.testing import make_tiny_checkpoint

PROBE = r"""
import json, sys, torch
from llmsys.model.checkpoint import load_config, load_model
from llmsys.model.transformer import Transformer

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
# Let torch finish its own lazy imports (~80 MB the first time a module is built on meta).
with torch.device("meta"):
    Transformer(load_config(sys.argv[1])[0])
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
model, _ = load_model(sys.argv[1], dtype=sys.argv[2])
params = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"extra": status("VmHWM") - before, "params": params}))
"""


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux /proc/self/clear_refs to reset the peak RSS")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_peak_memory_of_loading_is_one_copy(tmp_path_factory, dtype):
    path = tmp_path_factory.getbasetemp() / "mem-ckpt"
    if not (path / "config.json").exists():
        make_tiny_checkpoint("llama", path, hidden_size=512, intermediate_size=1536,
                             num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8,
                             vocab_size=8192)
    r = subprocess.run([sys.executable, "-c", PROBE, str(path), dtype], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    largest_tensor = 8192 * 512 * 4  # the float32 embedding, read through one buffer
    assert m["params"] > 50e6 if dtype == "float32" else m["params"] > 25e6
    # Two copies would be >= 2x params; allow one copy plus one tensor plus allocator slack.
    assert m["extra"] < m["params"] * 1.15 + largest_tensor + 24e6, m
