"""Shared pytest configuration: real-peer fixtures (Orthanc, dcmqrscp) available to every suite."""

pytest_plugins = ["tests.peers.fixtures", "tests.peers.compressed_fixtures"]
