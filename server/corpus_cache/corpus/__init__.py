"""The folder of documents: scanning, ignore rules, snapshots."""
