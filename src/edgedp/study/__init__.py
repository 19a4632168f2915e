"""The whole study in one call: `run_study` (`edgedp run`) and its run folder."""

from edgedp.study.runner import (
    MODEL_FORMATS,
    ProgressListener,
    RunFolderLockedError,
    StudyError,
    StudyResult,
    check_training_modules,
    default_jobs,
    lock_run_folder,
    run_folder_holder,
    run_study,
)

__all__ = [
    "MODEL_FORMATS",
    "ProgressListener",
    "RunFolderLockedError",
    "StudyError",
    "StudyResult",
    "check_training_modules",
    "default_jobs",
    "lock_run_folder",
    "run_folder_holder",
    "run_study",
]
