"""The public entry point for running jobs: ``run_job(name, conf, spark)``, the job registry.

What ``textmill run``, the files under ``jobs/`` and the notebooks call; the code lives in
``textmill.pipelines.runner``.
"""

from textmill.pipelines.runner import JOBS, Job, JobOutcome, JobReport, get_job, run_job, run_job_report

__all__ = ["JOBS", "Job", "JobOutcome", "JobReport", "get_job", "run_job", "run_job_report"]
