"""Image files on disk (ImageNet's folders, COCO's images): what counts as unreadable, and the
one way a skipped file is recorded under ``dataset.bad_images=skip``."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

# What PIL raises for a file that is not a readable image (truncated, garbage, unsupported, too
# large to decode safely); OSError also covers a file that cannot be opened at all.
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def record_skipped(skipped: set[str], path: str, err: Exception, skipped_file: Path | None) -> None:
    """Count ``path`` as skipped in this process, once: one log line, and one line appended to
    ``skipped_file`` (where the run's report counts the skipped files of every process)."""
    if path in skipped:
        return
    skipped.add(path)
    log.warning("skipped unreadable image %s: %s (%d skipped in this process)", path, err,
                len(skipped))  # fmt: skip
    if skipped_file is not None:  # appends of one line do not interleave
        with open(skipped_file, "a") as record:
            record.write(path + "\n")
