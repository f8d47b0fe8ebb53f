"""The A/B tools' --tile spelling (dg_moe.bench.tile_spec)."""

import argparse

import pytest

from dg_moe.bench.tile_spec import TileSpec, parse_tile


@pytest.mark.parametrize(("text", "spec", "name"), [
    ("128x192", TileSpec(128, 192), "128x192x1s4"),
    ("128x192x2B", TileSpec(128, 192, 2, True), "128x192x2Bs4"),
    ("128x128x2", TileSpec(128, 128, 2, False), "128x128x2s4"),
    ("256x128s3", TileSpec(256, 128, 1, False, 3), "256x128x1s4"),
])
def test_parse_tile(text: str, spec: TileSpec, name: str) -> None:
    assert parse_tile(text) == spec
    assert spec.name(4) == name


@pytest.mark.parametrize("text", ["128", "128x", "128x192x3", "128x192xB", "axb", "128x192s"])
def test_parse_tile_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="BMxBN"):
        parse_tile(text)
