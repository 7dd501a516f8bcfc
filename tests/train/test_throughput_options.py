"""The loop's speed options train and keep their promises: packing, buckets, token budgets,
gradient caching, torch.compile, bf16."""

from __future__ import annotations

import pytest
import torch

from clse.errors import ConfigError
from tests.train.test_train_loop import compose_cfg, final_params

DUAL = ["objective=none", "alignment=contrastive", "regularizer=none", "pooling=mean"]


def run(tmp_path, name, overrides):
    from clse.train.loop import train

    return train(compose_cfg(["trainer.steps=3", "trainer.checkpoint_every=3"] + overrides),
                 tmp_path / name)


def test_packed_and_padded_runs_agree(tmp_path):
    """Without dropout the packed and padded runs take the same steps (fp32 tolerance)."""
    common = DUAL + ["encoder.hidden_dropout=0.0", "trainer.lr=1e-3"]
    run(tmp_path, "packed", common + ["encoder.packing=packed"])
    run(tmp_path, "padded", common + ["encoder.packing=padded"])
    packed, padded = final_params(tmp_path / "packed"), final_params(tmp_path / "padded")
    for key in packed:
        assert torch.allclose(packed[key], padded[key], atol=1e-4), key
    assert any(not torch.equal(packed[k], padded[k]) for k in packed)  # two computations ran


def test_grad_cache_run_equals_plain_run(tmp_path):
    common = DUAL + ["encoder.hidden_dropout=0.0", "trainer.lr=1e-3", "data.batch_size=6"]
    run(tmp_path, "plain", common)
    run(tmp_path, "cached", common + ["trainer.grad_cache_chunk=2"])
    plain, cached = final_params(tmp_path / "plain"), final_params(tmp_path / "cached")
    for key in plain:
        assert torch.allclose(plain[key], cached[key], atol=1e-5), key


def test_grad_cache_needs_a_dual_encoder(tmp_path):
    with pytest.raises(ConfigError, match="grad_cache_chunk needs a dual encoder"):
        run(tmp_path, "mexma", ["trainer.grad_cache_chunk=2"])


@pytest.mark.parametrize("options", [
    ["data.bucket=4"],
    ["data.max_tokens=300", "data.bucket=2"],
    ["data.max_tokens=200", "data.token_cost=padded", "encoder.packing=padded"],
])
def test_batching_options_train(tmp_path, options):
    result = run(tmp_path, "run", options)
    assert result.steps == 3


def test_bf16_autocast_trains_with_fp32_losses(tmp_path):
    from clse.train.loop import pair_losses

    result = run(tmp_path, "bf16", ["trainer.precision=bf16"])
    assert result.steps == 3

    class Comp:  # the loop's loss glue casts bf16 vectors to fp32 before any reduction
        class alignment:
            weight = 1.0

            def __call__(self, a, b):
                assert a.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                return (a - b).pow(2).mean()

        class regularizer:
            weight = 0.5

            def __call__(self, x):
                assert x.dtype == torch.float32
                return x.pow(2).mean()

    comp = Comp()
    comp.alignment, comp.regularizer = Comp.alignment(), Comp.regularizer()
    a, b = torch.randn(4, 8, dtype=torch.bfloat16), torch.randn(4, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, terms = pair_losses(comp, a, b, None)
    expected = (a.float() - b.float()).pow(2).mean() + 0.5 * (a.float().pow(2).mean()
                                                              + b.float().pow(2).mean()) / 2
    assert loss.dtype == torch.float32 and torch.allclose(loss, expected)


def test_compiled_encoder_takes_the_eager_steps(tmp_path):
    """aot_eager (graph capture + AOT autograd, no code generation) trains like eager mode."""
    common = DUAL + ["encoder.hidden_dropout=0.0", "trainer.lr=1e-3", "trainer.steps=2"]
    run(tmp_path, "eager", common)
    result = run(tmp_path, "compiled", common + ["trainer.compile=aot_eager"])
    assert result.steps == 2
    eager, compiled = final_params(tmp_path / "eager"), final_params(tmp_path / "compiled")
    assert eager.keys() == compiled.keys()  # same parameter names: checkpoints interchange
    for key in eager:
        assert torch.allclose(eager[key], compiled[key], atol=1e-5), key


def test_inductor_trains_or_says_how_to_fall_back(tmp_path):
    """inductor needs a working C++ toolchain; without one the run stops with a clse error
    naming the fallbacks, never a bare dynamo traceback."""
    try:
        result = run(tmp_path, "inductor", DUAL + ["trainer.compile=true", "trainer.steps=1"])
    except ConfigError as exc:
        assert "trainer.compile=aot_eager" in str(exc)
        pytest.skip(f"inductor cannot compile on this machine: {exc}")
    assert result.steps == 1


def test_compile_failure_is_a_config_error():
    from clse.train.compiling import CompiledEncoder

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    model = CompiledEncoder(torch.nn.Linear(4, 4), broken_backend)
    with pytest.raises(ConfigError, match="could not build the encoder.*trainer.compile=aot_eager"):
        model(torch.randn(2, 4))


@pytest.mark.parametrize("value", ["fast", 1, "inductor "])
def test_unknown_compile_option_is_a_config_error(value):
    from clse.train.compiling import backend_of

    with pytest.raises(ConfigError, match="trainer.compile must be"):
        backend_of(value)
