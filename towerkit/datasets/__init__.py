"""Datasets: interactions plus a candidate set, split as the seed tutorial does."""
