"""Show and measure that features are artifact-free: a report folder with pictures and numbers.

    python jobs/evaluate.py --features FEATURES_URI [--denoiser EXPORT] [--out outputs/report]
                            [--job evaluate] [key=value ...]

Writes report.md (figures inline, every measure defined), metrics.json and figures/*.png:
per-image PCA pictures (photo, raw, clean, denoised, G, norms), a grid of G from several
photos, position-explained variance over random crops, G agreement, shift consistency, fit
diagnostics, and the stereo and mask probes; raw / clean / denoised side by side. The crops and
probe images are fitted with the features' own saved job config (``stage1=[...]`` overrides it).
"""

from pipeline.cli import run_job

if __name__ == "__main__":
    run_job("evaluate")
