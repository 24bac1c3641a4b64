"""Corpus sources. Each module turns its source config into Candidates and Rejects."""
