"""Readers of a finished job's outputs: `vaerr verify` (verify.py), `query` (query.py, events.py),
`plot`, `render` and `report` (report.py, report_html.py), and what they share: which rows are a
video's (identity.py), what the model's caveats are (caveats.py).

They read the tables the runtime wrote (schemas/tables.py) and may use the runtime (storage,
decoding); the runtime never imports them (tests/test_layout.py checks).
"""
