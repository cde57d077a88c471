"""Two archives over the sample studies for the federation tests, overlapping and disjoint:

- ``east`` holds studies 0-5 of ``generate_sample_studies()`` (study 0 with both its CT series);
- ``west`` holds studies 0 (its first series only), 3, 4 (plus one extra OT series that east
  does not have), 6 and 7.

So studies 0, 3 and 4 are on both (0 and 4 differ in what each holds), 1, 2 and 5 on east only,
6 and 7 on west only.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from app.demo.samples import generate_sample_studies

EAST_STUDIES = (0, 1, 2, 3, 4, 5)
WEST_STUDIES = (0, 3, 4, 6, 7)


@dataclass
class FederatedStudies:
    """The studies of both archives, and what the tests expect of them."""

    study_uids: list[str]  # the eight sample studies, in sample order
    east: list[Dataset]
    west: list[Dataset]

    def on_east(self, index: int) -> set[str]:
        """SOP Instance UIDs east holds of a study."""
        return _sops(self.east, self.study_uids[index])

    def on_west(self, index: int) -> set[str]:
        """SOP Instance UIDs west holds of a study."""
        return _sops(self.west, self.study_uids[index])


def _sops(datasets: list[Dataset], study_uid: str) -> set[str]:
    return {str(ds.SOPInstanceUID) for ds in datasets if str(ds.StudyInstanceUID) == study_uid}


def federated_studies() -> FederatedStudies:
    """Build the two archives (deterministic apart from the extra series' UIDs)."""
    samples = generate_sample_studies()
    by_study: dict[str, list[Dataset]] = defaultdict(list)
    for ds in samples:
        by_study[str(ds.StudyInstanceUID)].append(ds)
    uids = list(by_study)
    east = [ds for i in EAST_STUDIES for ds in by_study[uids[i]]]
    west: list[Dataset] = []
    for i in WEST_STUDIES:
        instances = by_study[uids[i]]
        if i == 0:
            first_series = str(instances[0].SeriesInstanceUID)
            instances = [ds for ds in instances if str(ds.SeriesInstanceUID) == first_series]
        west.extend(instances)
    extra = copy.deepcopy(by_study[uids[6]][0])  # an OT instance, re-filed into study 4
    study4 = by_study[uids[4]][0]
    for keyword in ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyDescription"):
        if keyword in study4:
            setattr(extra, keyword, getattr(study4, keyword))
    extra.SeriesInstanceUID = generate_uid(prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=[
        "federation extra series"])
    extra.SOPInstanceUID = generate_uid(prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=[
        "federation extra instance"])
    extra.SeriesNumber = 99
    if getattr(extra, "file_meta", None) is not None:
        extra.file_meta.MediaStorageSOPInstanceUID = extra.SOPInstanceUID
    west.append(extra)
    return FederatedStudies(uids, east, west)
