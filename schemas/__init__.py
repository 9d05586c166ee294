"""Contracts only: typed configs and the pyarrow schemas of every table vaerr writes."""
