"""Profiles load, overrides are typed, and bad keys or values are named in the error."""
from importlib import resources

import pytest

from mmcl.config import ConfigError, available_profiles, load_config, parse_override


def test_shipped_profiles_load():
    assert set(available_profiles()) >= {"smoke", "tiny", "paper"}
    for name in ("smoke", "tiny", "paper"):
        config = load_config(name)
        assert config.profile == name
        for scenario in config.scenarios.values():
            assert scenario.benchmark in config.benchmarks


def test_override_values_are_parsed_as_yaml():
    config = load_config("smoke", ["train.epochs=7", "model.pretrained=null", "train.lr=0.5",
                                   "model.classifier_templates=['a {}.']"])
    assert config.train.epochs == 7 and config.model.pretrained is None
    assert config.train.lr == 0.5 and config.model.classifier_templates == ["a {}."]


def test_dict_overrides_as_used_by_notebooks():
    assert load_config("smoke", {"train.batch_size": 4}).train.batch_size == 4


@pytest.mark.parametrize("override, key", [
    ("train.epochz=3", "train.epochz"),
    ("model.pretrain.stepz=1", "model.pretrain.stepz"),
    ("nonsense=1", "nonsense"),
])
def test_unknown_key_is_named(override, key):
    with pytest.raises(ConfigError, match=rf"{key}: unknown key"):
        load_config("smoke", [override])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"train\.epochs:.*integer"):
        load_config("smoke", ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_config("smoke", ["train.lr=-1"])


def test_unknown_modality_and_dangling_scenario_benchmark():
    with pytest.raises(ConfigError, match=r"benchmarks\.av-events\.modalities"):
        load_config("smoke", ["benchmarks.av-events.modalities=[smell]"])
    with pytest.raises(ConfigError, match=r"scenarios\.class_incremental\.benchmark"):
        load_config("smoke", ["scenarios.class_incremental.benchmark=missing"])


def test_unknown_profile_and_malformed_override():
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config("huge")
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="not a section"):
        load_config("smoke", ["train.epochs.inner=1"])


def test_profile_from_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    smoke = resources.files("mmcl.profiles").joinpath("smoke.yaml").read_text()
    path.write_text(smoke.replace("profile: smoke", "profile: mine"))
    assert load_config(path).profile == "mine"
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
