"""The on-disk contract of feature outputs, one module per concern:

- ``layout``: the names of an output's folders and files (runs, control files, artifact models);
- ``format``: the Arrow format (tensor columns, the features schema, ``feature_table``,
  Parquet bytes);
- ``artifacts``: artifact-model files (a pattern and its facts, safetensors);
- ``meta``: ``RunMeta``, what a run records about how its rows were made;
- ``fs``: filesystems, atomic writes and reads, ``DamagedFile``;
- ``runs``: the run protocol (commit records, manifests, seals, the listing of runs);
- ``readers``: every reader of committed features;
- ``gc``: the files no manifest lists, and removing them under the lease;
- ``lease``: the output lease that lets one run write at a time.

The names a user of the outputs needs are exported here (``from pipeline.store import
read_features_table``). Imports no torch, timm or Ray: ``read_features`` builds a Ray Dataset
and imports Ray only when called, ``FeatureDataset`` imports torch only when indexed.
"""

from pipeline.store.format import (
    QUARANTINE_SCHEMA,
    SCHEMA_VERSION,
    TENSOR_COLUMNS,
    column_to_numpy,
    feature_table,
    features_schema,
    raw_minus_artifact,
    tensor_array,
)
from pipeline.store.fs import DamagedFile
from pipeline.store.gc import GcReport, gc_output, orphaned_files
from pipeline.store.layout import artifact_model_uri
from pipeline.store.meta import RunMeta
from pipeline.store.readers import (
    FeatureDataset,
    committed_ids,
    feature_grids,
    read_feature_groups,
    read_features,
    read_features_table,
    read_quarantine_table,
    sample_features_table,
)
from pipeline.store.runs import (
    CommittedRun,
    Manifest,
    committed_runs,
    newest_config_digest,
    select_runs,
)

__all__ = [
    "QUARANTINE_SCHEMA",
    "SCHEMA_VERSION",
    "TENSOR_COLUMNS",
    "CommittedRun",
    "DamagedFile",
    "FeatureDataset",
    "GcReport",
    "Manifest",
    "RunMeta",
    "artifact_model_uri",
    "column_to_numpy",
    "committed_ids",
    "committed_runs",
    "feature_grids",
    "feature_table",
    "features_schema",
    "gc_output",
    "newest_config_digest",
    "orphaned_files",
    "raw_minus_artifact",
    "read_feature_groups",
    "read_features",
    "read_features_table",
    "read_quarantine_table",
    "sample_features_table",
    "select_runs",
    "tensor_array",
]
