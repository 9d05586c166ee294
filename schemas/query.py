"""Settings of `vaerr query` / `vaerr plot` / `vaerr render`: the episode detectors' thresholds.

One place for every default and its reason; `pipeline/outputs/events.py` takes these sections and
the CLI builds its flags from the fields (the descriptions are the `--help` text). Values are in the
timeline's units: arousal and valence in [-1, 1], times in seconds.

Not part of `VaerrConfig`: the batch job does not need them, and a query is re-run with other
thresholds far more often than a job is configured.
"""

from __future__ import annotations

from pydantic import Field

from schemas.base import Section


class HappyConfig(Section):
    """Sustained positive episodes: smoothed valence and arousal both above their thresholds
    for at least `min_seconds`, on at least `min_faces` faces of the same video at once."""

    min_valence: float = Field(
        0.3,
        ge=-1,
        le=1,
        description="Smoothed valence must be >= this. 0.3 is clearly positive: twice the "
        "Neutral radius (0.15) of the emotion words, so a resting face does not qualify.",
    )
    min_arousal: float = Field(
        0.2,
        ge=-1,
        le=1,
        description="Smoothed arousal must be >= this. 0.2 keeps the activated side of "
        "positive (Happy 30 deg, Excited 50 deg) and leaves out calm contentment "
        "(Content, Relaxed), which is not an occasion.",
    )
    min_seconds: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="Shortest episode, s (from the first to the last qualifying step). 2 s: "
        "a polite or posed smile is over in about a second, enjoyment lasts seconds, and "
        "continuous annotations (AVEC) lag the face by about 2 s anyway. Bounded: at most 3600: "
        "an hour.",
    )
    smooth_seconds: float = Field(
        1.0,
        ge=0,
        le=60,
        description="Width of the centred moving average applied to each track before "
        "thresholding, s (0: none). 1 s (10 steps at 10 Hz) removes step-to-step jitter so "
        "a one-step dip does not split an episode; thresholds half-way up a step still "
        "land on the step's edge, since the window is symmetric. Bounded: at most 60.",
    )
    min_faces: int = Field(
        1,
        ge=1,
        le=1000,
        description="Faces that must qualify at the same time. 1: one episode per face "
        "track. >= 2: episodes of a video where at least this many tracks qualify at once "
        "(a party, a goal, a surprise); `track_ids` lists the faces that took part. Bounded: at "
        "most 1000.",
    )


class SpikeConfig(Section):
    """Abrupt distress onsets: arousal rises steeply within `window_seconds` while valence
    drops, ending high-arousal and negative. Onsets of several faces of a video within
    `together_seconds` are one event. It finds reactions on faces, not what caused them."""

    smooth_seconds: float = Field(
        0.3,
        ge=0,
        le=60,
        description="Centred moving average before measuring rises, s (0: none). 0.3 s (3 steps "
        "at 10 Hz) removes one-step jitter, which a rise over a window would pick up, and keeps a "
        "half-second onset sharp. Bounded: at most 60.",
    )
    window_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="The rise must happen within this time, s. 1 s: startle and alarm "
        "expressions reach their apex within about half a second to a second, changes of "
        "mood take several. Bounded: at most 60: a rise over longer is a change of mood, not a "
        "spike, and the rolling window stays small.",
    )
    min_rise: float = Field(
        0.4,
        gt=0,
        le=2,
        description="Smoothed arousal must rise by at least this within the window. 0.4 is "
        "a fifth of the whole scale in a second, far above the step-to-step noise of a "
        "steady face.",
    )
    min_drop: float = Field(
        0.1,
        ge=0,
        le=2,
        description="Smoothed valence must fall by at least this within the same window "
        "(a surprise that pleases raises valence and is not a spike).",
    )
    min_arousal: float = Field(
        0.2,
        ge=-1,
        le=1,
        description="Arousal reached must be >= this (the high-arousal half: Surprised, "
        "Alarmed, Fear, Angry), so a tired face waking up is not a spike.",
    )
    max_valence: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="Valence reached must be <= this (negative side of the circumplex).",
    )
    together_seconds: float = Field(
        1.0,
        ge=0,
        le=60,
        description="Onsets on different faces of a video starting within this many seconds "
        "of the first one are one event (people react to the same thing within about a "
        "second). Bounded: at most 60.",
    )
    min_faces: int = Field(
        1,
        ge=1,
        le=1000,
        description="Keep events where at least this many faces react together. Bounded: at most "
        "1000.",
    )
