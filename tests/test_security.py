"""Untrusted inputs: no network unless asked, no pickle from model folders or checkpoints, no
code from a model folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_xlmr
from tests_cli_helpers import SMALL_EVAL, TINY  # noqa: F401 (conftest puts tests/ on path)

NO_NETWORK = """
import socket
_connect = socket.socket.connect
def refuse(self, address):
    if self.family != socket.AF_UNIX:
        raise OSError(f"clse test: network access attempted: {address}")
    return _connect(self, address)
socket.socket.connect = refuse
socket.create_connection = lambda *a, **k: (_ for _ in ()).throw(OSError("network access attempted"))
"""


def test_train_and_eval_make_no_network_call(tmp_path):
    """Default `clse train` then `clse eval` on its export, with every socket refused and
    HF_HUB_OFFLINE unset: nothing asks the network."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_NETWORK)
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "clse.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "network access attempted" not in proc.stderr
        return proc

    run("train", *TINY, *SMALL_EVAL, "trainer.steps=2", "hydra.run.dir=run")
    run("eval", "model=run/export/sentence_transformers", *SMALL_EVAL, "hydra.run.dir=ev")
    assert (tmp_path / "ev" / "results.json").is_file()


def test_a_pickle_only_model_folder_is_refused(tmp_path):
    from clse.errors import ClseError
    from clse.eval.model import load_eval_model
    from clse.model.loader import load_encoder as load_pretrained

    model = tiny_xlmr()
    model.save_pretrained(tmp_path)  # then swap the weights for a pickle: pytorch_model.bin only
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert (tmp_path / "pytorch_model.bin").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    from clse.data.tokenizer import train_tokenizer

    train_tokenizer(["a b c d e f g"] * 50, vocab_size=30, save_dir=tmp_path)
    with pytest.raises(ClseError, match="could not load encoder"):
        load_pretrained(str(tmp_path))
    with pytest.raises(ClseError, match="cannot load model"):
        load_eval_model(str(tmp_path), pooling="mean")


def test_a_malicious_optimizer_pickle_does_not_run(tmp_path):
    """optimizer.pt is read with weights_only=True: a pickle payload is refused, not executed."""
    from clse.train.checkpoint import load_state

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    from safetensors.torch import save_file

    save_file({"rng.torch": torch.get_rng_state(),
               "rng.mask": torch.Generator().get_state()}, str(tmp_path / "extra.safetensors"))
    (tmp_path / "state.json").write_text('{"step": 1}')
    torch.save({"state": Payload()}, tmp_path / "optimizer.pt")
    with pytest.raises(Exception):
        load_state(tmp_path)
    assert not marker.exists()


def test_remote_code_in_a_model_folder_is_not_run(tmp_path):
    """A folder whose config maps to its own Python code: clse refuses instead of importing it."""
    from clse.errors import ClseError
    from clse.model.loader import load_encoder as load_pretrained

    marker = tmp_path / "imported"
    tiny_xlmr().save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text()
    config = config.replace('"model_type": "xlm-roberta"', '"model_type": "evil",\n  "auto_map": '
                            '{"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}')
    (tmp_path / "config.json").write_text(config)
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ClseError):
        load_pretrained(str(tmp_path))
    assert not marker.exists()
