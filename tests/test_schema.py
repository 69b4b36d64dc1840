"""The on-disk contract: canonical tensor columns, committed-only readers, three reader paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.stages.read import RowStatus
from pipeline.store import (
    FeatureDataset,
    RunMeta,
    column_to_numpy,
    committed_ids,
    feature_table,
    features_schema,
    newest_config_digest,
    raw_minus_artifact,
    read_features_table,
    tensor_array,
)
from pipeline.store.format import table_bytes
from pipeline.store.layout import COMMITTED, MANIFEST

GRID, CHANNELS = (3, 4), 8


def _table(ids: list[str], rng: np.random.Generator) -> pa.Table:
    n = len(ids)
    maps = [rng.standard_normal((*GRID, CHANNELS)).astype(np.float32) for _ in range(n)]
    meta = RunMeta(model="m", weights_digest="w", layer=11, config_digest="c", method="dvt-fit")
    return feature_table(
        meta,
        "0",
        image_ids=ids,
        source_uris=[f"file:///x/{i}.jpg" for i in ids],
        widths=[64] * n,
        heights=[48] * n,
        metrics=[{"r2": 0.9}] * n,
        raw=maps,
        clean=maps,
    )


def _write_run(
    root: Path, name: str, ids: list[str], commit: bool, config_digest: str = "c"
) -> pa.Table:
    run = root / "runs" / name
    run.mkdir(parents=True)
    table = _table(ids, np.random.default_rng(len(ids)))
    data, digest = table_bytes(table)
    (run / f"part-00000-{digest[:12]}.parquet").write_bytes(data)
    meta = {
        "model": "m",
        "weights_digest": "w",
        "grid": GRID[0],
        "channels": CHANNELS,
        "method": "dvt-fit",
    }
    manifest = {
        "config_digest": config_digest,
        "quarantine": [],
        "meta": meta,
        "files": [{"path": f"part-00000-{digest[:12]}.parquet", "image_ids": ids}],
    }
    (run / MANIFEST).write_text(json.dumps(manifest))
    if commit:
        (run / COMMITTED).write_text("")
    return table


def test_tensor_columns_are_canonical(tmp_path: Path) -> None:
    table = _write_run(tmp_path, "r1", ["a", "b"], commit=True)
    (path,) = (tmp_path / "runs" / "r1").glob("part-*.parquet")
    on_disk = pq.read_table(path)
    assert on_disk.schema.field("raw").type.extension_name == "arrow.fixed_shape_tensor"
    assert on_disk.schema.field("raw").type.shape == [3, 4, 8]
    assert np.array_equal(column_to_numpy(on_disk["clean"]), column_to_numpy(table["clean"]))
    assert column_to_numpy(on_disk["raw"]).dtype == np.float16


def test_tensor_columns_are_written_plain() -> None:
    """Tensor columns carry no dictionary and no statistics (what made writes slow); every
    other leaf column, a struct's fields included, keeps both; the bytes read back equal."""
    maps = np.random.default_rng(0).standard_normal((3, *GRID, CHANNELS))
    meta = RunMeta(model="m", weights_digest="w", layer=1, config_digest="c", method="dvt-fit")
    table = feature_table(
        meta,
        "0",
        image_ids=["a", "b", "c"],
        source_uris=["u", "v", "w"],
        widths=[1, 2, 3],
        heights=[4, 5, 6],
        metrics=[{"r2": 0.9}] * 3,
        raw=maps,
        clean=maps,
        artifact=maps,
        clean_hr=np.repeat(np.repeat(maps, 2, axis=1), 2, axis=2),
    )
    tensors = {f.name for f in table.schema if isinstance(f.type, pa.FixedShapeTensorType)}
    assert tensors == {"raw", "clean", "artifact", "clean_hr"}
    data, _ = table_bytes(table)
    group = pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(0)
    chunks = [group.column(i) for i in range(group.num_columns)]
    assert {c.path_in_schema for c in chunks} >= {"metrics.r2", "raw.list.element", "image_id"}
    for chunk in chunks:
        plain = chunk.path_in_schema.split(".")[0] in tensors
        assert ("RLE_DICTIONARY" in chunk.encodings) != plain, chunk.path_in_schema
        assert chunk.is_stats_set != plain, chunk.path_in_schema
    assert pq.read_table(pa.BufferReader(data)).equals(table)


def test_readers_see_committed_runs_only(tmp_path: Path) -> None:
    _write_run(tmp_path, "r1", ["a", "b"], commit=True)
    _write_run(tmp_path, "r2", ["c"], commit=False)  # crashed before its marker
    _write_run(tmp_path, "r3", ["d"], commit=True)
    (tmp_path / "runs" / "r3" / "part-99999-stray.parquet").write_bytes(b"partial")  # unlisted
    table = read_features_table(str(tmp_path))
    assert sorted(table["image_id"].to_pylist()) == ["a", "b", "d"]
    assert committed_ids(str(tmp_path)) == {"a", "b", "d"}
    assert committed_ids(str(tmp_path), config_digest="other") == set()
    dataset = FeatureDataset(str(tmp_path))
    assert len(dataset) == 3 and dataset[0]["raw"].shape == (3, 4, 8)


def test_no_committed_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no committed"):
        read_features_table(str(tmp_path))


def test_a_folder_refreshed_under_another_config_is_read_once(tmp_path: Path) -> None:
    """The same images committed under two configs: readers take one config, never both."""
    from pipeline.distributed.train import describe_corpus
    from pipeline.job_config import TrainJobConfig, resolve_job

    _write_run(tmp_path, "20250101T000000Z-old", ["a", "b"], commit=True, config_digest="old")
    _write_run(tmp_path, "20250102T000000Z-new", ["a", "b", "c"], commit=True, config_digest="new")
    assert newest_config_digest(str(tmp_path)) == "new"
    assert len(read_features_table(str(tmp_path))) == 5  # the raw table holds both
    assert len(read_features_table(str(tmp_path), config_digest="old")) == 2
    assert sorted(FeatureDataset(str(tmp_path)).image_ids) == ["a", "b", "c"]
    assert sorted(FeatureDataset(str(tmp_path), config_digest="old").image_ids) == ["a", "b"]
    corpus = describe_corpus(
        resolve_job(
            TrainJobConfig, "train_smoke", [f"input.uri={tmp_path}", "train.val_fraction=0.0"]
        )
    )
    assert corpus.config_digests == ["new"] and corpus.train_images == 3
    chosen = describe_corpus(
        resolve_job(
            TrainJobConfig,
            "train_smoke",
            [f"input.uri={tmp_path}", "input.config_digest=old", "train.val_fraction=0.0"],
        )
    )
    assert chosen.config_digests == ["old"] and chosen.train_images == 2


def test_raw_minus_artifact() -> None:
    rng = np.random.default_rng(0)
    raw, artifact = rng.normal(size=(2, 3, 4, 4, 5)).astype(np.float16)
    table = pa.table({"raw": tensor_array(list(raw)), "artifact": tensor_array(list(artifact))})
    detail = raw_minus_artifact(table)
    assert detail.dtype == np.float32 and detail.shape == (3, 4, 4, 5)
    np.testing.assert_allclose(detail, raw.astype(np.float32) - artifact.astype(np.float32))
    assert raw_minus_artifact(table.drop_columns(["artifact"])) is None


def test_run_meta_writes_back_the_json_it_read() -> None:
    """Every key a job sets, unknown keys of a newer writer and nulls survive a read and a
    write (a seal copies a run's meta); unset fields stay absent."""
    stored = {
        "model": "m",
        "weights": "hub",
        "weights_digest": "w",
        "layer": 11,
        "config_digest": "c",
        "channels": 8,
        "method": "dvt-fit",
        "patch_size": 16,
        "grid": 7,
        "aspect": "keep",
        "upsample": 2,
        "artifact_model": "file:///a",
        "artifact_model_sha256": "s",
        "from_a_newer_writer": [1],
        "denoiser_uri": None,
    }
    meta = RunMeta.from_dict(stored)
    assert meta.to_dict() == stored and meta.grid == 7
    assert meta.grid == 7 and meta.denoiser_uri is None and meta.denoiser_digest is None
    assert RunMeta.from_dict(None).to_dict() == {} == RunMeta().to_dict()
    assert RunMeta(method="denoiser", aspect="keep").to_dict() == {
        "method": "denoiser",
        "aspect": "keep",
    }


def test_feature_table_builds_the_schema() -> None:
    """The one feature-table builder: grid, channels, the artifact and clean_hr columns come
    from the tensors; metrics keep the known fields."""
    maps = np.ones((2, *GRID, CHANNELS), np.float32)
    hr = np.ones((2, 2 * GRID[0], 2 * GRID[1], CHANNELS), np.float32)
    meta = RunMeta(model="m", weights_digest="w", layer=3, config_digest="c", method="dvt-fit")
    table = feature_table(
        meta,
        "1.0",
        image_ids=["a", "b"],
        source_uris=["u", "v"],
        widths=[1, 2],
        heights=[3, 4],
        metrics=[{"r2": 1.0, "x": 2}] * 2,
        raw=maps,
        clean=maps,
        artifact=maps,
        clean_hr=hr,
        dtype="float32",
    )
    assert table.schema == features_schema(GRID, CHANNELS, "float32", True, 2)
    assert table["grid_h"].to_pylist() == [GRID[0]] * 2 and table["layer"].to_pylist() == [3, 3]
    assert table["metrics"][0].as_py()["r2"] == 1.0 and "x" not in table["metrics"][0].as_py()
    assert column_to_numpy(table["clean_hr"]).shape == (2, 2 * GRID[0], 2 * GRID[1], CHANNELS)
    assert RowStatus.DONE == "done" and pa.array([RowStatus.ERROR]).to_pylist() == ["error"]
