"""``--config``: a YAML path, or the name of a config that ships with the package."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from deeprebirth.train.config import ConfigError, load_config
from deeprebirth.train.config_files import available_configs, resolve_config_path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_every_repository_config_is_available_by_name():
    assert available_configs() == sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    for name in available_configs():
        assert resolve_config_path(name).read_text() == (CONFIGS / f"{name}.yaml").read_text()


def test_load_config_by_name_reads_the_packaged_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    cfg = load_config("synthetic_smoke", [f"output_dir={tmp_path / 'run'}"])
    source = OmegaConf.load(CONFIGS / "synthetic_smoke.yaml")
    assert cfg.model.width == source.model.width and cfg.batch_size == source.batch_size


def test_a_path_wins_over_a_packaged_name(tmp_path, monkeypatch):
    (tmp_path / "synthetic_smoke").write_text("lr: 0.123\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("synthetic_smoke") == Path("synthetic_smoke")
    assert load_config("synthetic_smoke").lr == 0.123
    other = tmp_path / "mine.yaml"
    other.write_text("lr: 0.5\n")
    assert load_config(str(other)).lr == 0.5


def test_unknown_name_lists_the_packaged_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="config name not found: synthetic_smok ") as error:
        load_config("synthetic_smok")
    assert all(name in str(error.value) for name in available_configs())


@pytest.mark.parametrize("config", ["synthetic_smoke.yaml", "configs/nonexistent.yaml"])
def test_a_missing_path_is_not_looked_up_by_name(config, tmp_path, monkeypatch):
    """Only a bare name (no folder, no suffix) means a packaged config."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"config file not found: {config}.*synthetic_smoke"):
        load_config(config)
