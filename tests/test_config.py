"""Configuration: the shipped example loads as documented."""
from __future__ import annotations

from pathlib import Path

from dispersiond.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_example_config_is_valid():
    cfg = load_config(ROOT / "config" / "dispersiond.example.yaml")
    assert cfg.public.mode == "erasure" and cfg.public.k == 2 and cfg.public.n == 3
    assert cfg.private.stores == ["vault"]
