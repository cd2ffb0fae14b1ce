"""Moved: the `protect` operation is dispersiond/ops/protect.py (staging in ops/encode.py,
uploads in ops/upload.py). Kept so that callers not yet moved import as before."""
from __future__ import annotations

from .ops.encode import (EARLY_UPLOAD_MIN, EarlyUploads, EarlyUploadRun, Feeds, Staged,  # noqa: F401
                         abandon_planned, plan_rows, stage, staged_sizes)
from .ops.protect import (SourceGone, admit, all_uploaded, commit, commit_many,  # noqa: F401
                          encode, protect_file, resume, transfer_bytes, upload)
from .ops.upload import Cancelled, Throttle, UploadReader, upload_one  # noqa: F401
