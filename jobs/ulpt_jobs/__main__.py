"""`python -m ulpt_jobs run JOB_ID`: a detached job driver (what `ulpt train` without --wait starts).

Catalog, store and home come from ULPT_CATALOG_URL, ULPT_STORE_URL and ULPT_HOME, so no secret
appears on a command line.
"""

from __future__ import annotations

import argparse
import sys

from ulpt.errors import UlptError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ulpt_jobs")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run (or resume) a recorded job until it ends")
    run.add_argument("job_id")
    run.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    run.add_argument("--tenant", default="default")
    run.add_argument("--force", action="store_true", help="run even if another driver seems alive")
    args = parser.parse_args(argv)

    from ulpt.jobs_api import JobsAPI
    from ulpt.sdk import Client

    try:
        with Client(tenant=args.tenant) as client:
            handle = JobsAPI(client, ray_address=args.address).resume(args.job_id, force=args.force)
            status = handle.wait()
    except UlptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"job {status.id} {status.status}: {status.counts}")
    return 0 if status.status == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
