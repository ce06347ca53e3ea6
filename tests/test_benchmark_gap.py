"""Version 2 of the built-in benchmark has a real gap with the camera missing: a small model
answers its partly-answerable types clearly better with both sensors than with audio alone."""
import pytest

from avqa_edge.toolkit.scoring import answerable_accuracy, answerable_sets, predict, score

GAP_POINTS = 10.0


@pytest.mark.slow
def test_version_2_camera_missing_gap(tmp_path):
    import torch

    from avqa_edge.runtime.text import Vocabulary
    from avqa_edge.toolkit.checkpoint import load_model
    from avqa_edge.toolkit.config import TrainConfig, preset
    from avqa_edge.toolkit.data.loader import SplitData
    from avqa_edge.toolkit.data.specs import load_split
    from avqa_edge.toolkit.data.synth import SynthConfig, generator_version
    from avqa_edge.toolkit.train import train

    synth = SynthConfig(seed=11, train_clips=400, val_clips=32, test_clips=200, version=2)
    spec = {"kind": "builtin", "generator_version": generator_version(synth), "synth": synth.to_dict(),
            "cache_dir": str(tmp_path / "cache")}
    # modality dropout: trained for missing sensors, so its audio-only answers are its best guesses
    cfg = TrainConfig(method="dropout", steps=400, refit_steps=0, batch_size=32, eval_every=400, val_samples=64,
                      seed=0, threads=2)
    threads = torch.get_num_threads()
    try:
        train(tmp_path / "run", preset("edge"), cfg, spec, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    model, config = load_model(tmp_path / "run")
    test = SplitData(load_split(spec, "test"), Vocabulary(config["model"]["vocab"]), config["model"]["answers"],
                     strict_answers=False, name="test")
    test.cache_mel(model.audio_encoder.frontend)
    acc = {scen: score(test, *predict(model, test, scen, "zero_fill"))
           for scen in ("complete", "visual_missing", "audio_missing")}
    for scen in ("visual_missing", "audio_missing"):
        for level in ("answerable", "partly"):
            types = list(answerable_sets(2, level)[scen])
            both, left = (100 * answerable_accuracy(acc[s], test, types) for s in ("complete", scen))
            print(f"\n{scen} {level}: complete {both:.1f}, zero_fill {left:.1f}, gap {both - left:+.1f} points")
    partly = list(answerable_sets(2, "partly")["visual_missing"])
    gap = 100 * (answerable_accuracy(acc["complete"], test, partly)
                 - answerable_accuracy(acc["visual_missing"], test, partly))
    assert gap >= GAP_POINTS, f"camera missing: complete - zero_fill on the partly-answerable types is {gap:.1f} points"
