"""Bad input gets a clear error naming the value and what is allowed; the CLI exits 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llmsys import LLM, SamplingParams
from llmsys.errors import CheckpointError
from llmsys.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("good"),
                                max_position_embeddings=32)


def _copy(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        LLM(tmp_path / "nope")


def test_missing_safetensors(good, tmp_path):
    bad = _copy(good, tmp_path / "bad")
    (bad / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        LLM(bad)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "header"])
def test_corrupt_safetensors(good, tmp_path, damage):
    bad = _copy(good, tmp_path / "bad")
    f = bad / "model.safetensors"
    data = f.read_bytes()
    if damage == "garbage":
        f.write_bytes(b"\x00not a safetensors file at all")
    elif damage == "truncated":
        f.write_bytes(data[: len(data) // 2])
    else:
        f.write_bytes(data[:8] + b"{" * 20 + data[28:])
    with pytest.raises(CheckpointError, match="safetensors"):
        LLM(bad)


def test_missing_shard(good, tmp_path):
    bad = make_tiny_checkpoint("llama", tmp_path / "sharded", max_shard_bytes=30_000)
    shard = sorted(bad.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match="do not exist"):
        LLM(bad)


def test_unsupported_model_type(good, tmp_path):
    bad = _copy(good, tmp_path / "bad")
    _edit_config(bad, model_type="gpt2")
    with pytest.raises(CheckpointError, match=r"unsupported model_type 'gpt2'.*llama"):
        LLM(bad)


def test_shape_mismatch(good, tmp_path):
    bad = _copy(good, tmp_path / "bad")
    _edit_config(bad, intermediate_size=96)
    pattern = r"mlp\.\w+_proj\.weight' has shape .* but config\.json implies"
    with pytest.raises(CheckpointError, match=pattern):
        LLM(bad)


def test_missing_and_unexpected_tensors(good, tmp_path):
    bad = _copy(good, tmp_path / "bad")
    _edit_config(bad, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match="missing tensor"):
        LLM(bad)
    _edit_config(bad, num_hidden_layers=1)
    with pytest.raises(CheckpointError, match="unexpected tensor 'model.layers.1"):
        LLM(bad)


def test_corrupt_config(good, tmp_path):
    bad = _copy(good, tmp_path / "bad")
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        LLM(bad)


def test_bad_dtype(good):
    with pytest.raises(ValueError, match="dtype 'float8'.*allowed"):
        LLM(good, dtype="float8")


def test_prompt_longer_than_context(good):
    llm = LLM(good)
    with pytest.raises(ValueError, match=r"40 tokens.*max_model_len\) is 32"):
        llm.generate([list(range(40))], SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="token id"):
        llm.generate([[10**6]], SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]], SamplingParams(max_tokens=1))


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(temperature=-0.5), r"temperature=-0.5.*>= 0"),
    (dict(top_p=0.0), r"top_p=0.0.*\(0, 1\]"),
    (dict(top_p=1.5), r"top_p=1.5.*\(0, 1\]"),
    (dict(top_k=-3), r"top_k=-3"),
    (dict(min_p=2.0), r"min_p=2.0.*\[0, 1\]"),
    (dict(max_tokens=0), r"max_tokens=0"),
    (dict(n=0), r"n=0"),
    (dict(stop=[""]), r"stop="),
    (dict(temperature=float("nan")), r"temperature=nan"),
])
def test_sampling_params_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SamplingParams(**kwargs)


def _cli(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "llmsys.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_cli_errors_exit_nonzero_with_message(good, tmp_path):
    r = _cli("generate", "--model", str(tmp_path / "missing"), "hi")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = _cli("generate", "--model", str(good), "--temperature", "-1", "hi")
    assert r.returncode == 2 and "temperature=-1.0" in r.stderr and "Traceback" not in r.stderr
    r = _cli("generate", "--model", str(good), "--top-p", "1.5", "hi")
    assert r.returncode == 2 and "top_p=1.5" in r.stderr
    r = _cli("generate", "--model", str(good), "x " * 60)
    assert r.returncode == 2 and "max_model_len" in r.stderr and "Traceback" not in r.stderr


def test_cli_generate_and_chat(good, tmp_path):
    r = _cli("generate", "--model", str(good), "--max-tokens", "5", "Hello")
    assert r.returncode == 0, r.stderr
    assert "tokens/s" in r.stderr
    roomy = make_tiny_checkpoint("qwen2", tmp_path / "roomy")
    r = subprocess.run([sys.executable, "-m", "llmsys.cli", "chat", "--model", str(roomy),
                        "--max-tokens", "4"], input="hi\nhow are you\n\n", capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("> ") == 3  # two turns answered, then the empty line ends it
    # A turn that overflows the context is refused with a message; the session goes on.
    r = subprocess.run([sys.executable, "-m", "llmsys.cli", "chat", "--model", str(good),
                        "--max-tokens", "4"], input="hi " * 40 + "\nhi\n", capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "max_model_len" in r.stderr and "Traceback" not in r.stderr
