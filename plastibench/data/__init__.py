"""Dataset locating, downloading and parsing."""
