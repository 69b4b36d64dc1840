"""The Ray layer, kept thin: Ray-free stage classes (``stages``), the feature-job graph and its
committing sink (``features``), and one module a job (``clean``, ``denoise``, ``train``,
``evaluate``); ``submission`` derives ``ray job submit`` ids."""
