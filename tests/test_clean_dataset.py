"""jobs/clean_dataset's pipeline on a local Ray: local folders, S3 (moto), re-runs, bad inputs."""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from pipeline import clean_images, load_extractor
from pipeline.distributed.clean import run_clean_job
from pipeline.distributed.features import ProgressLog
from pipeline.job_config import CleanJobConfig, resolve_clean_job
from pipeline.models.artifact_model import read_artifact_model
from pipeline.store import (
    column_to_numpy,
    committed_ids,
    read_features,
    read_features_table,
    read_quarantine_table,
)
from pipeline.store.layout import run_folder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def _jpeg(array: np.ndarray, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _small(photo: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(photo).resize((160, 120)))


def _job(input_uri: str, output_uri: str, *extra: str) -> CleanJobConfig:
    return resolve_clean_job(
        "smoke",
        [f"input.uri={input_uri}", f"output.uri={output_uri}", "engine.fit.steps=20", *extra],
    )


@pytest.fixture()
def photo_dir(tmp_path: Path, photos: dict[str, np.ndarray]) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i, (name, photo) in enumerate(photos.items()):
        target = folder / "sub" if i == 0 else folder
        (target / f"{name}.jpg").write_bytes(_jpeg(_small(photo)))
    (folder / "notes.txt").write_text("not an image and not matched by the patterns")
    return folder


def test_end_to_end_local(
    photo_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="pipeline.distributed.features")
    summary = run_clean_job(_job(str(photo_dir), str(out), "compute.progress_s=0.2"))
    assert (summary["inputs"], summary["done"], summary["quarantined"]) == (3, 3, 0)
    # the driver logged progress while the graph ran, counted from the commit records
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress: ")]
    assert lines and all(" of 3 listed inputs committed" in line for line in lines)
    run_path = run_folder(str(out), summary["run_id"])
    assert ProgressLog(LocalFileSystem(), run_path, 3, 0).poll() == 3
    assert ProgressLog(LocalFileSystem(), str(tmp_path / "no-run"), 3, 0).poll() == 0
    table = read_features_table(str(out))
    assert table.num_rows == 3
    assert table.schema.field("clean").type.extension_name == "arrow.fixed_shape_tensor"
    clean = column_to_numpy(table["clean"])
    # 160 x 120 photos, 112 px: 7 tokens on the short side, 9 on the long one (aspect kept)
    assert clean.shape == (3, 7, 9, 64) and clean.dtype == np.float16
    assert set(table["model"].to_pylist()) == {"test_vit"}
    assert all(uri.endswith(".jpg") for uri in table["source_uri"].to_pylist())
    # the same numbers as calling the engine directly on the decoded images
    ext = load_extractor("test_vit", weights="random", device="cpu")
    row = table.to_pylist()[0]
    image = np.asarray(Image.open(row["source_uri"]).convert("RGB"))
    cfg = _job(str(photo_dir), str(out)).engine
    (direct,) = clean_images(ext, [image], cfg, ids=[row["image_id"]])
    assert np.allclose(clean[0].astype(np.float32), direct.clean, atol=2e-2, rtol=1e-2)
    assert np.allclose(column_to_numpy(table["raw"])[0], direct.raw, atol=1e-2, rtol=1e-2)
    # the Ray reader streams the same rows as torch batches (B, h, w, C)
    batches = list(
        read_features(str(out), ["clean"]).iter_torch_batches(
            batch_size=2, dtypes={"clean": torch.float32}
        )
    )
    rows = torch.cat([b["clean"] for b in batches])
    assert rows.shape == (3, 7, 9, 64) and rows.dtype == torch.float32
    expected = torch.from_numpy(clean.astype(np.float32))
    for row in rows:  # every streamed row is one of the committed rows
        assert min(float((row - e).abs().max()) for e in expected) == 0.0


def test_rerun_does_nothing_and_refresh_takes_only_new(
    photo_dir: Path, tmp_path: Path, photos: dict[str, np.ndarray]
) -> None:
    out = str(tmp_path / "out")
    first = run_clean_job(_job(str(photo_dir), out))
    again = run_clean_job(_job(str(photo_dir), out))
    assert again["done"] == 0 and again["skipped_committed"] == first["done"] == 3
    (photo_dir / "new.jpg").write_bytes(_jpeg(_small(photos["coffee"])[::-1].copy()))
    refresh = run_clean_job(_job(str(photo_dir), out))
    assert refresh["done"] == 1 and refresh["skipped_committed"] == 3
    ids = read_features_table(str(out), ["image_id"])["image_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 4
    # another config digest does not count as done
    other = run_clean_job(_job(str(photo_dir), out, "engine.fit.steps=21"))
    assert other["done"] == 4


def test_shift_method_calibrates_once_and_matches_the_engine(
    photo_dir: Path, tmp_path: Path, photos: dict[str, np.ndarray]
) -> None:
    out = tmp_path / "out"

    def job() -> CleanJobConfig:
        return resolve_clean_job(
            "smoke",
            [
                f"input.uri={photo_dir}",
                f"output.uri={out}",
                "preset=shift_smoke",
                "calibration.crops_per_image=2",
            ],
        )

    inputs = {p: p.read_bytes() for p in photo_dir.rglob("*") if p.is_file()}
    first = run_clean_job(job())
    assert (first["done"], first["quarantined"]) == (3, 0)
    assert {p: p.read_bytes() for p in photo_dir.rglob("*") if p.is_file()} == inputs
    (stored,) = list((out / "artifact_models").glob("*.safetensors"))
    model, sha = read_artifact_model(str(stored))
    assert model.samples == 3 * 86 and model.pattern.shape == (7, 7, 64)  # min_crops 256
    table = read_features_table(str(out))
    row = table.to_pylist()[0]
    image = np.asarray(Image.open(row["source_uri"]).convert("RGB"))
    ext = load_extractor("test_vit", weights="random", device="cpu")
    (direct,) = clean_images(
        ext, [image], job().engine, ids=[row["image_id"]], artifact_model=model
    )
    assert np.allclose(column_to_numpy(table["clean"])[0], direct.clean, atol=2e-2, rtol=1e-2)
    assert not np.allclose(direct.clean, direct.raw, atol=1e-2)
    # a refresh over a grown input reuses the stored model: same digest, only the new image
    before = stored.stat().st_mtime_ns
    (photo_dir / "new.jpg").write_bytes(_jpeg(_small(photos["coffee"])[::-1].copy()))
    refresh = run_clean_job(job())
    assert refresh["done"] == 1 and refresh["skipped_committed"] == 3
    assert refresh["config_digest"] == first["config_digest"]
    assert stored.stat().st_mtime_ns == before and read_artifact_model(str(stored))[1] == sha


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def _huge_png_header(side: int) -> bytes:
    """A PNG whose header claims side x side pixels, with a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


def test_poison_set_is_quarantined_and_the_rest_commits(
    tmp_path: Path, photos: dict[str, np.ndarray]
) -> None:
    src = tmp_path / "poison"
    src.mkdir()
    base = _small(photos["chelsea"])
    good_jpeg = _jpeg(base)
    exif = Image.Exif()
    exif[0x0112] = 6
    wide = Image.fromarray(base[..., 0].astype(np.uint16) * 257)
    files = {
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 3],
        "text.jpg": b"hello, I am text",
        "empty.jpg": b"",
        "tiny.png": _png(Image.new("RGB", (1, 1))),
        "huge.png": _huge_png_header(3000),  # over the job's 4 MP cap
        "bomb.png": _huge_png_header(60000),  # a decompression bomb
        "sixteen.png": _png(wide),
        "la.png": _png(Image.fromarray(base).convert("LA")),
        "p.png": _png(Image.fromarray(base).convert("P")),
        "rotated.jpg": _jpeg(base, exif=exif.tobytes()),
        "good.jpg": good_jpeg,
        "a::b.png": _png(Image.fromarray(base[:100, :90])),  # never re-parsed as a URL chain
        "a": _jpeg(base[::-1].copy()),  # its sibling, not an input (no image suffix)
    }
    buf = io.BytesIO()
    Image.fromarray(base).convert("CMYK").save(buf, format="JPEG")
    files["cmyk.jpg"] = buf.getvalue()
    for name, data in files.items():
        (src / name).write_bytes(data)
    out = str(tmp_path / "out")
    summary = run_clean_job(_job(str(src), out, "input.max_pixels=4000000"))
    quarantined = read_quarantine_table(out).to_pylist()
    bad = {Path(r["source_uri"]).name: r for r in quarantined}
    assert set(bad) == {
        "truncated.jpg",
        "text.jpg",
        "empty.jpg",
        "tiny.png",
        "huge.png",
        "bomb.png",
    }
    assert "zero-byte" in bad["empty.jpg"]["reason"]
    assert "over the cap" in bad["huge.png"]["reason"]
    assert "bomb" in bad["bomb.png"]["reason"]
    assert "smaller than one" in bad["tiny.png"]["reason"]
    assert all(r["stage"] == "decode" and r["error_class"] for r in quarantined)
    committed = read_features_table(out, ["source_uri", "width", "height", "image_id"]).to_pylist()
    names = {Path(r["source_uri"]).name: r for r in committed}
    assert set(names) == {
        "cmyk.jpg",
        "sixteen.png",
        "la.png",
        "p.png",
        "rotated.jpg",
        "good.jpg",
        "a::b.png",
    }
    assert (names["rotated.jpg"]["width"], names["rotated.jpg"]["height"]) == (120, 160)
    assert names["a::b.png"]["image_id"] == hashlib.sha256(files["a::b.png"]).hexdigest()
    assert (names["a::b.png"]["width"], names["a::b.png"]["height"]) == (90, 100)
    assert summary["inputs"] == len(files) - 1 == summary["done"] + summary["quarantined"]


def test_s3_in_and_out(s3_endpoint: str, photos: dict[str, np.ndarray]) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)  # credentials from the environment
    fs.mkdir("inbox")
    fs.mkdir("features")
    for name, photo in photos.items():
        fs.pipe(f"inbox/photos/{name}.jpg", _jpeg(_small(photo)))
    options = f"{{endpoint_url: '{s3_endpoint}'}}"
    cfg = _job(
        "s3://inbox/photos",
        "s3://features/dvt",
        f"input.storage_options={options}",
        f"output.storage_options={options}",
    )
    summary = run_clean_job(cfg)
    assert summary["done"] == 3
    storage = {"endpoint_url": s3_endpoint}
    table = read_features_table("s3://features/dvt", storage_options=storage)
    assert table.num_rows == 3
    assert all(u.startswith("s3://inbox/photos/") for u in table["source_uri"].to_pylist())
    assert len(committed_ids("s3://features/dvt", storage_options=storage)) == 3
    assert run_clean_job(cfg)["skipped_committed"] == 3


@pytest.mark.parametrize("file_mb", [1, 0])  # one file for the run / a file per write task
def test_same_image_under_two_uris_is_committed_once(
    tmp_path: Path, photos: dict[str, np.ndarray], file_mb: int
) -> None:
    src = tmp_path / "in"
    (src / "copy").mkdir(parents=True)
    for name, photo in photos.items():
        (src / f"{name}.jpg").write_bytes(_jpeg(_small(photo)))
    (src / "copy" / "again.jpg").write_bytes((src / "astronaut.jpg").read_bytes())
    (src / "copy" / "zz-again.jpg").write_bytes((src / "astronaut.jpg").read_bytes())
    summary = run_clean_job(
        _job(
            str(src),
            str(tmp_path / "out"),
            f"output.target_file_mb={file_mb}",
            "compute.read_batch_size=1",
            "engine.images_per_fit=1",
        )
    )
    assert summary["done"] == 3 and summary["duplicates_in_run"] == 2
    assert summary["inputs"] == summary["done"] + summary["quarantined"] + 2
    ids = read_features_table(str(tmp_path / "out"), ["image_id"])["image_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 3
    assert read_features(str(tmp_path / "out")).count() == 3


def test_mixed_aspects_keep_their_grids(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    """A folder of landscape, portrait and square images: every row's grid follows its image,
    each file holds one grid, and the readers hand out each grid apart."""
    from pipeline.store import FeatureDataset, feature_grids, read_feature_groups

    src = tmp_path / "in"
    src.mkdir()
    sizes = {"wide": (224, 112), "tall": (112, 224), "square": (128, 128), "wide2": (200, 100)}
    bundled = list(photos.values())
    for i, (name, size) in enumerate(sizes.items()):
        photo = Image.fromarray(bundled[i % len(bundled)])
        (src / f"{name}.jpg").write_bytes(_jpeg(np.asarray(photo.resize(size))))
    out = str(tmp_path / "out")
    assert run_clean_job(_job(str(src), out))["done"] == 4
    rows = read_features_table(out, ["source_uri", "width", "height", "grid_h", "grid_w"])
    for row in rows.to_pylist():
        expected = {
            (224, 112): (7, 14),
            (112, 224): (14, 7),
            (128, 128): (7, 7),
            (200, 100): (7, 14),
        }[(row["width"], row["height"])]
        assert (row["grid_h"], row["grid_w"]) == expected, row
    assert sorted(feature_grids(out).items()) == [((7, 7), 1), ((7, 14), 2), ((14, 7), 1)]
    with pytest.raises(ValueError, match="3 token grids"):
        read_features_table(out, ["clean"])
    wide = read_features_table(out, ["source_uri", "clean"], grid=(7, 14))
    assert column_to_numpy(wide["clean"]).shape == (2, 7, 14, 64)
    groups = read_feature_groups(out, ["image_id", "raw"])
    assert {g: t.num_rows for g, t in groups.items()} == {(7, 14): 2, (14, 7): 1, (7, 7): 1}
    data = FeatureDataset(out)
    assert sorted(tuple(data[i]["raw"].shape[:2]) for i in range(len(data))) == [
        (7, 7),
        (7, 14),
        (7, 14),
        (14, 7),
    ]
    tall = read_features(out, ["raw"], grid=(14, 7)).take_all()
    assert len(tall) == 1 and tall[0]["raw"].shape == (14, 7, 64)
