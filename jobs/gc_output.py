"""List (or remove) the files of an output that no committed run lists.

    python jobs/gc_output.py --output URI [--delete] [--storage-options '{endpoint_url: ...}']

Takes the output's lease (exit 75 while a run holds it), seals runs that died, and prints
every orphaned file: parts of tasks killed before their commit record, files a run wrote after
it lost its lease, temp files of interrupted writes. ``--delete`` removes them; committed data
is never touched.
"""

from pipeline.cli import run_job

if __name__ == "__main__":
    run_job("gc")
