"""Measures and reports: PEV, crop-pair matching and the other metrics (``metrics``), the
stereo and mask probes (``probes``), the report (``report``), PCA pictures (``visualize``), the
bundled sample photos (``samples``) and the evaluation job's steps (``job``). Imports no Ray;
``pipeline.distributed.evaluate`` runs the job on the Ray layer."""
