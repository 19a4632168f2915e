"""The whole study in one call: `run_study` (`edgedp run`) and its run folder."""

from edgedp.study.runner import (
    MODEL_FORMATS,
    ProgressListener,
    StudyError,
    StudyResult,
    default_jobs,
    run_study,
)

__all__ = [
    "MODEL_FORMATS",
    "ProgressListener",
    "StudyError",
    "StudyResult",
    "default_jobs",
    "run_study",
]
