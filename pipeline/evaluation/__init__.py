"""Measures and reports: PEV, crop-pair matching and the other metrics (``metrics``), the
stereo and mask probes (``probes``), the report (``report``), PCA pictures (``visualize``) and
the bundled sample photos (``samples``). Imports no Ray; the job is
``pipeline.distributed.evaluate``."""
