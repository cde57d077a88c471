"""The OHIF test harness: static server, app-config template and the Playwright driver script."""
