import os
import shutil
import tempfile

import pytest


def pytest_configure(config):
    """Derived files (serve's cached confidence calibration, $XDG_CACHE_HOME/avqa-edge) go to a
    folder of this test run, for the test process and the servers it starts, not to ~/.cache."""
    cache = tempfile.mkdtemp(prefix="avqa-edge-test-cache-")
    os.environ["XDG_CACHE_HOME"] = cache
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory):
    """A small built-in benchmark (cached in a temp dir) for end-to-end tests."""
    from avqa_edge.toolkit.data.synth import GENERATOR_VERSION, SynthConfig
    cfg = SynthConfig(seed=3, train_clips=48, val_clips=16, test_clips=16, questions_per_clip=6)
    return {"kind": "builtin", "generator_version": GENERATOR_VERSION, "synth": cfg.to_dict(),
            "cache_dir": str(tmp_path_factory.mktemp("synth-cache"))}


@pytest.fixture(scope="session")
def tiny_run(tiny_spec, tmp_path_factory):
    """A finished 24-step training run on the tiny benchmark."""
    from avqa_edge.toolkit.config import TrainConfig, preset
    from avqa_edge.toolkit.train import train
    run = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(steps=12, refit_steps=12, batch_size=16, eval_every=12, val_samples=48, seed=0,
                      avr_finetune_frac=0.25)
    summary = train(run, preset("edge"), cfg, tiny_spec, log=lambda *_: None)
    return run, summary


# Property tests explore the same examples on every run, so CI cannot flake on a new draw.
from hypothesis import settings  # noqa: E402

settings.register_profile("repeatable", derandomize=True)
settings.load_profile("repeatable")


@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory):
    """`avqa-edge export RUN --out BUNDLE` on the tiny run, parity gate on one thread, once per test
    run for the export and parity tests; a test copies it before changing it. -> (bundle dir, CLI output)."""
    pytest.importorskip("onnxruntime", reason="needs the export extra: pip install -e '.[export]'")
    from typer.testing import CliRunner

    from avqa_edge.cli import app
    run, _ = tiny_run
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    return out, res.output
