"""`python -m ulpt_jobs run JOB_ID`: a detached job driver (what `ulpt train` without --wait starts).

Catalog, store and home come from ULPT_CATALOG_URL, ULPT_STORE_URL and ULPT_HOME, so no secret
appears on a command line.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ulpt.catalog.db import Catalog
from ulpt.catalog.lifecycle import JobState
from ulpt.catalog.names import check_tenant
from ulpt.errors import UlptError
from ulpt.registry import Locations
from ulpt_jobs.driver import JobTarget
from ulpt_jobs.handle import JobsAPI


@dataclass
class FromEnvironment:
    """A tenant's jobs where the environment puts the catalog and the store (`ulpt.registry.Locations`)."""

    tenant: str
    locations: Locations = field(default_factory=Locations.resolve)

    @cached_property
    def catalog(self) -> Catalog:
        return self.locations.open_catalog()

    def job_target(self) -> JobTarget:
        return JobTarget(
            catalog=self.catalog,
            catalog_url=self.locations.catalog_url,
            store_url=self.locations.store_url,
            home=Path(self.locations.home).absolute(),
        )

    def close(self) -> None:
        if "catalog" in self.__dict__:
            self.catalog.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ulpt_jobs")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run (or resume) a recorded job until it ends")
    run.add_argument("job_id")
    run.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    run.add_argument("--tenant", default="default")
    run.add_argument("--force", action="store_true", help="run even if another driver seems alive")
    run.add_argument(
        "--new", action="store_true", help="a new submission's driver: start the job only if still pending"
    )
    args = parser.parse_args(argv)

    owner = None
    try:
        owner = FromEnvironment(check_tenant(args.tenant))
        jobs = JobsAPI(owner, ray_address=args.address)
        handle = jobs.start(args.job_id) if args.new else jobs.resume(args.job_id, force=args.force)
        status = handle.wait()
    except UlptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if owner is not None:
            owner.close()
    print(f"job {status.id} {status.status}: {status.counts}")
    return 0 if status.status == JobState.DONE else 1


if __name__ == "__main__":
    sys.exit(main())
