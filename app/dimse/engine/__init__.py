"""The asyncio DIMSE engine: our own transport and PS3.8 state machine, with pynetdicom kept for
the PDU items and DIMSE command sets it already encodes and decodes."""
