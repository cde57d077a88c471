"""Integration tests against real PACS processes (Orthanc, DCMTK dcmqrscp) and a real Redis."""
