"""List (or remove) the files of an output that no committed run lists.

    python jobs/gc_output.py --output URI [--delete] [--storage-options '{endpoint_url: ...}']

Takes the output's lease (exit 75 while a run holds it), seals runs that died, and prints
every orphaned file: parts of tasks killed before their commit record, files a run wrote after
it lost its lease, temp files of interrupted writes. ``--delete`` removes them; committed data
is never touched.
"""

from __future__ import annotations

import argparse
import json
import logging

from pipeline.cli import user_errors
from pipeline.config import parse_value
from pipeline.store.gc import gc_output


@user_errors()
def main() -> None:
    parser = argparse.ArgumentParser(description="Orphaned files of a feature output.")
    parser.add_argument("--output", required=True, help="output folder/prefix (path or URI)")
    parser.add_argument("--delete", action="store_true", help="remove them (default: list)")
    parser.add_argument("--storage-options", default="{}", help="fsspec options, YAML")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    report = gc_output(args.output, parse_value(args.storage_options) or {}, delete=args.delete)
    for path in report.orphans:
        print(path)
    print(json.dumps({"sealed": report.sealed, "orphans": len(report.orphans),
                      "removed": report.removed}))


if __name__ == "__main__":
    main()
