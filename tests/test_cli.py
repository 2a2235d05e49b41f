"""The four CLIs follow one pattern: flags defined into a given FlagValues, never at import."""

import dataclasses
import importlib

import pytest
from absl import flags

CLIS = ("train", "evaluate", "analyze", "report")


def test_importing_every_cli_defines_no_flags_and_they_coexist():
    before = set(flags.FLAGS)
    mods = [importlib.import_module(f"tf_divtrain.{name}") for name in CLIS]
    assert set(flags.FLAGS) == before  # nothing defined at import
    for mod in mods:
        fv = flags.FlagValues()
        mod.define_flags(fv)  # each into its own FlagValues: shared names do not clash
        assert "dataset" in fv or "results_dir" in fv
        assert callable(mod.run)


def test_train_flags_are_validated_by_the_config():
    from tf_divtrain import train, training

    fv = flags.FlagValues()
    train.define_flags(fv)
    names = {f.name for f in dataclasses.fields(training.TrainConfig)}
    assert names <= set(fv)  # every config field is a flag
    with pytest.raises(flags.IllegalFlagValueError, match=r"gal_lambda must be >= 0"):
        fv(["train", "--out_dir=x", "--gal_lambda=-1"])
    fv2 = flags.FlagValues()
    train.define_flags(fv2)
    fv2(["train", "--out_dir=x", "--mode=div", "--ensemble_size=3", "--max_steps=5"])
    cfg = train.config_from_flags(fv2)
    assert (cfg.mode, cfg.ensemble_size, cfg.max_steps) == ("div", 3, 5)


def test_resumable_fields_come_from_the_config():
    from tf_divtrain import training

    assert "max_steps" in training.RESUMABLE_KEYS and "gal_lambda" not in training.RESUMABLE_KEYS
    old = training.TrainConfig(max_steps=1).to_json()
    assert training._config_diff(old, training.TrainConfig(max_steps=9).to_json()) == {}
    assert set(training._config_diff(old, training.TrainConfig(seed=1).to_json())) == {"seed"}


def test_atomic_writes_leave_no_temp_files(tmp_path):
    from tf_divtrain import io_utils

    p = str(tmp_path / "a.json")
    io_utils.atomic_write_json(p, {"x": 1})
    io_utils.atomic_write_json(p, {"x": 2})
    assert open(p).read() == '{"x": 2}' and sorted(__import__("os").listdir(tmp_path)) == ["a.json"]
    with pytest.raises(ValueError):
        io_utils.atomic_write_json(p, {"x": float("nan")}, allow_nan=False)
    assert open(p).read() == '{"x": 2}'  # a failed write leaves the old file intact
