"""The Ray layer, kept thin: the committing datasink (``sink``), the feature-job graph that
maps ``pipeline.stages`` over actor pools (``features``), and one module a job (``clean``,
``denoise``, ``train``, ``evaluate``, ``build``); ``submission`` derives ``ray job submit``
ids."""

import os

RAY_ENV_DEFAULTS = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep a local Ray on loopback
    "RAY_USAGE_STATS_ENABLED": "0",
}
"""Set here, where a user has not set them, before any module of this layer imports Ray: every
job and script reaches Ray through this package, so none repeats them before its imports."""

for _name, _value in RAY_ENV_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
