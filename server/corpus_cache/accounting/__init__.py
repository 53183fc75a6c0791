"""The ledger (SQLite), and what is read from it: stats and the HTML report."""
