"""Record the SHA-256 of every BIG-bench task.json from a source you trust, for the loader to check.

    python tools/bigbench_hashes.py PATH [--commit SHA]

PATH is the bigbench-1.0.0 sdist, a tarball of the repository or a checkout of it; --commit pins the
repository archive the loader may fetch (`ulpt data bigbench`). Writes
platform/ulpt/data/bigbench_tasks.sha256; commit it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ulpt.data.bigbench_sources import HASH_LIST, record_hashes

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("source", type=Path)
parser.add_argument("--commit", help="the repository commit PATH was taken at")
args = parser.parse_args()
count = record_hashes(args.source, args.commit)
print(f"{count} task files recorded in {HASH_LIST}")
