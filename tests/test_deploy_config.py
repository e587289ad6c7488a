"""`[[model]]` and `[ray]` tables: typed, paths beside the file, errors that name the key."""

from __future__ import annotations

import pytest

from fleetlm.deploy_config import RayConfig, RayDeploymentConfig
from fleetlm.fleet_toml import load_fleet_toml


def _load(tmp_path, text: str):
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return load_fleet_toml(str(path))


def test_model_tables_take_engine_keys_and_paths_beside_the_file(tmp_path):
    (tmp_path / "llama").mkdir()
    fleet = _load(tmp_path, '[[model]]\nid = "a"\nmodel = "llama"\ndtype = "float32"\nmax_num_seqs = 4\n'
                            'adapters_dir = "experts"\n[[model]]\nid = "b"\nmodel = "gemma-3-270m"\n')
    a, b = fleet.models
    assert a.engine.model == str(tmp_path / "llama") and a.engine.dtype == "float32" and a.engine.max_num_seqs == 4
    assert a.adapters_dir == str(tmp_path / "experts") and a.engine.enable_lora
    assert b.engine.model == "gemma-3-270m" and not b.engine.enable_lora


@pytest.mark.parametrize("table, match", [
    ('id = "a"\nmodel = "m"\nmax_num_seq = 4', r"Unknown model a key\(s\): max_num_seq"),
    ('id = "a"', r"model a: missing keys \['model'\]"),
    ('id = "a:b"\nmodel = "m"', "model id 'a:b'"),
    ('id = "a"\nmodel = "m"\nmax_num_seqs = 0', r"model a: EngineConfig.max_num_seqs must be >= 1"),
])
def test_model_table_errors_name_the_key(tmp_path, table, match):
    with pytest.raises(ValueError, match=match):
        _load(tmp_path, f"[[model]]\n{table}\n")


def test_model_ids_are_unique(tmp_path):
    with pytest.raises(ValueError, match="model ids must be unique"):
        _load(tmp_path, '[[model]]\nid = "a"\nmodel = "m"\n[[model]]\nid = "a"\nmodel = "n"\n')


def test_ray_table(tmp_path):
    fleet = _load(tmp_path, '[ray]\naddress = "auto"\n[[ray.deployment]]\nname = "gateway"\nnum_cpus = 0.5\n'
                            '[[ray.deployment]]\nname = "a"\nmin_replicas = 1\nmax_replicas = 3\n')
    ray = fleet.ray
    assert ray.address == "auto" and ray.for_name("gateway").num_cpus == 0.5
    assert ray.for_name("a").autoscaled and ray.for_name("a").max_replicas == 3
    assert ray.for_name("other") == RayDeploymentConfig(name="other")


@pytest.mark.parametrize("text, match", [
    ('[ray]\nadress = "auto"', r"Unknown ray key\(s\): adress"),
    ('[ray]\n[[ray.deployment]]\nname = "a"\nreplicas = 2', r"Unknown ray deployment a key\(s\): replicas"),
    ('[ray]\n[[ray.deployment]]\nname = "a"\nnum_replicas = 2\nmax_replicas = 3', "not both"),
    ('[ray]\n[[ray.deployment]]\nname = "a"\nmin_replicas = 3\nmax_replicas = 2', "min_replicas <= max_replicas"),
    ('[[ray]]\naddress = "auto"', r"\[ray\] is one table"),
])
def test_ray_table_errors_name_the_key(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        _load(tmp_path, text + "\n")


def test_ray_deployment_names_are_unique():
    with pytest.raises(ValueError, match="unique"):
        RayConfig(deployment=[{"name": "a"}, {"name": "a"}])
