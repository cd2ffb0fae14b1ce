"""Configuration: the shipped example loads as documented."""
from __future__ import annotations

from pathlib import Path

from dispersiond.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_example_config_is_valid():
    cfg = load_config(ROOT / "config" / "dispersiond.example.yaml")
    assert cfg.public.mode == "erasure" and cfg.public.k == 2 and cfg.public.n == 3
    assert cfg.private.stores == ["vault"]
    assert cfg.upload_memory == "32MiB"


def test_upload_memory_sets_the_process_part_budget(tmp_path):
    import yaml

    import pytest
    from backends.budget import SHARED
    from dispersiond.stores import Stores

    raw = yaml.safe_load((ROOT / "config" / "dispersiond.example.yaml").read_text())
    before = SHARED.limit
    try:
        for given, want in (("40MiB", 40 << 20), (0, 0)):
            path = tmp_path / "c.yaml"
            path.write_text(yaml.safe_dump({**raw, "upload_memory": given}))
            Stores(load_config(path))
            assert SHARED.limit == want
        path.write_text(yaml.safe_dump({**raw, "upload_memory": "lots"}))
        with pytest.raises(Exception, match="upload_memory"):
            load_config(path)
    finally:
        SHARED.set_limit(before)
