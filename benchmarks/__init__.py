"""On-demand benchmarks of the gateway against real PACS peers; results go to docs/benchmarks.md."""
