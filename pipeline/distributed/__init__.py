"""The Ray layer, kept thin: Ray-free stage classes (``read_stage``, ``stages``), the committing
datasink (``sink``), the feature-job graph (``features``), and one module a job (``clean``,
``denoise``, ``train``, ``evaluate``); ``submission`` derives ``ray job submit`` ids."""
