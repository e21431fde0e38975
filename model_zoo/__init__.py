"""Reference models trained from real data that packages ship (no downloads)."""
