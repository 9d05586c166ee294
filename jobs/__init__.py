"""Thin entry points: parse -> build -> run. No logic beyond that lives here."""
