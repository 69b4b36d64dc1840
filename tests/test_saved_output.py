"""An output written before the store became a package (``tests/data/output_v0_1``: a smoke
``clean_dataset`` run of three photos of two aspects and one broken file, committed as it was
written) reads the same through today's readers: the on-disk format did not change.

``output_v0_1.expected.json`` holds what the readers of that time read from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.store import (
    column_to_numpy,
    committed_ids,
    committed_runs,
    feature_grids,
    orphaned_files,
    read_feature_groups,
    read_features_table,
    read_quarantine_table,
)

DATA = Path(__file__).resolve().parent / "data"
EXPECTED = json.loads((DATA / "output_v0_1.expected.json").read_text())


@pytest.fixture()
def output(tmp_path: Path) -> str:
    """A copy of the saved output (readers never write, but a copy keeps the checkout clean
    whatever they do)."""
    return str(shutil.copytree(DATA / "output_v0_1", tmp_path / "output_v0_1"))


def test_saved_runs_and_ids_read_the_same(output: str) -> None:
    runs = committed_runs(output)
    assert [[r.manifest.run_id, r.state] for r in runs] == EXPECTED["runs"]
    assert runs[0].manifest.config_digest == EXPECTED["config_digest"]
    assert runs[0].manifest.meta.to_dict() == EXPECTED["meta"]
    assert sorted(committed_ids(output)) == EXPECTED["committed_ids"]
    assert sorted(committed_ids(output, EXPECTED["config_digest"])) == EXPECTED["committed_ids"]
    assert not committed_ids(output, "0" * 16)  # another config committed nothing
    assert sorted([list(g) for g in feature_grids(output)]) == EXPECTED["grids"]
    assert orphaned_files(output) == []  # every file is owned by the committed run


def test_saved_features_read_the_same(output: str) -> None:
    groups = read_feature_groups(output)
    assert sorted([list(g) for g in groups]) == EXPECTED["grids"]
    seen = {}
    for grid, table in groups.items():
        for i, image_id in enumerate(table["image_id"].to_pylist()):
            want = EXPECTED["images"][image_id]
            assert list(grid) == want["grid"]
            assert table["source_uri"][i].as_py().endswith("/" + want["source"])
            for column in ("raw", "clean", "artifact"):
                tokens = column_to_numpy(table[column])[i]
                assert tokens.shape == (*grid, EXPECTED["meta"]["channels"])
                assert float(tokens.astype(np.float64).sum()) == pytest.approx(
                    want[column], abs=1e-6
                )
            seen[image_id] = grid
    assert set(seen) == set(EXPECTED["images"])
    square = read_features_table(output, grid=(7, 7))
    assert square.schema.names == EXPECTED["columns"]
    quarantine = read_quarantine_table(output)
    assert [u.rsplit("/", 1)[-1] for u in quarantine["source_uri"].to_pylist()] == EXPECTED[
        "quarantine"
    ]
