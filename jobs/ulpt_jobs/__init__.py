"""Bulk training on Ray Train: thousands of ULPT fits, one frozen base model per worker, packed batches.

    driver.create_job   validate a JobSpec against its data and model, record the job and its fits
    driver.run_job      run (or resume) it as one Ray Train job; workers claim fits from the catalog
    worker.train_loop   load the base once, keep a pack of fits stepping, register each as it ends
    state               the job's durable state: reconcile after failures, progress, per-fit status
    handle.JobsAPI      submit, resume, list, get and cancel a tenant's jobs; JobHandle waits on one

The SDK entry points are `ulpt.Client.train` / `client.jobs` (built on `handle`); the CLI's are
`ulpt train` and `ulpt jobs`.
"""
