"""The `corpus-cache` command: serve, ask, plan, stats, report, demo, install."""
