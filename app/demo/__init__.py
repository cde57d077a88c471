"""The embedded demo PACS and its deterministic sample data (`dicomweb-gateway demo`, tests)."""

from app.demo.pacs import DemoPacs
from app.demo.samples import (
    generate_ct_series,
    generate_many_studies,
    generate_sample_studies,
    write_part10,
)

__all__ = [
    "DemoPacs",
    "generate_ct_series",
    "generate_many_studies",
    "generate_sample_studies",
    "write_part10",
]
