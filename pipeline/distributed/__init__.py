"""The Ray layer, kept thin: the committing datasink (``sink``), the feature-job graph that
maps ``pipeline.stages`` over actor pools (``features``), and one module a job (``clean``,
``denoise``, ``train``, ``evaluate``, ``build``); ``submission`` derives ``ray job submit``
ids."""
