"""Browser end-to-end tests: a real DICOMweb viewer (OHIF v3) in headless Chromium, pointed at
the gateway in front of a real PACS."""
