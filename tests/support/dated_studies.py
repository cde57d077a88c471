"""Studies spread over dates and times for the capped-archive tests (issue #12 item 2): some
without a StudyDate, one day holding more studies than a small cap, and dates outside the span
the gateway bisects (before 1900, far in the future)."""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset

from app.demo.samples import generate_many_studies

HEAVY_DAY = "20210304"
"""The day with eight studies (more than a cap of five on its own)."""


def dated_studies() -> list[Dataset]:
    """28 one-instance studies: 3 without a StudyDate, 8 on HEAVY_DAY at different times, 15
    spread over 2015-2020, one on 1899-12-31 and one on 2099-12-31."""
    studies = [copy.deepcopy(ds) for ds in generate_many_studies(28, seed=12)]
    dates: list[tuple[str | None, str]] = [(None, "100000")] * 3
    dates += [(HEAVY_DAY, f"{8 + hour:02d}{hour * 7:02d}15") for hour in range(8)]
    dates += [(f"{2015 + i % 6}{1 + i % 12:02d}{1 + i:02d}", "120000") for i in range(15)]
    dates += [("18991231", "000000"), ("20991231", "235959")]
    for ds, (date, time) in zip(studies, dates, strict=True):
        if date is None:
            del ds.StudyDate
        else:
            ds.StudyDate = date
        ds.StudyTime = time
    return studies
