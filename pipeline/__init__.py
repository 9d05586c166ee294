"""The runtime: decode, faces, model, windows, timelines."""
