"""Bulk training from the SDK: `client.train(spec)` and `client.jobs`.

    job = client.train(ulpt.JobSpec.from_yaml("job.yaml"))     # validated, recorded, running on Ray
    status = job.wait(progress=True)                           # fits done / total, fits/s, ETA, failures
    client.jobs.get(job.id).fits()                             # from any process: state is in the catalog

The jobs layer (`ulpt_jobs.handle`) implements them; `JobsAPI(client)` takes any `ulpt.Client`.
"""

from ulpt_jobs.handle import JobHandle, JobsAPI
from ulpt_jobs.state import FitStatus, JobStatus

__all__ = ["FitStatus", "JobHandle", "JobStatus", "JobsAPI"]
