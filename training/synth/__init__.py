"""The synthetic affect generator: rendered talking faces with known arousal/valence.

Why: the real affect corpora (SEWA, RECOLA, ...) are licence-gated, so tests, the demo and CI
need media whose ground truth is known exactly. A face is drawn with OpenCV (anti-aliased
polygons, Lambert-shaded skin, eyes with whites/iris/pupil, lips, hair, neck and shoulders) so
the real RetinaFace detector finds it; its *expression* follows smooth arousal/valence
trajectories and is carried only by face geometry:

=================  =====================================================================
arousal  (+)       eyes wider, brows raised, jaw dropped (mouth open)
arousal  (-)       heavy upper lids, brows relaxed, mouth closed
valence  (+)       mouth corners up and mouth wider, lower lids raised (smile squint)
valence  (-)       mouth corners down and narrower; brows: inner ends raised when calm (sad),
                   lowered and knitted when aroused (angry)
=================  =====================================================================

Brightness, colours, lighting and background never depend on arousal/valence (a test checks
that the mean gray level at extreme expressions barely moves), so a model must read the face.
Nuisance factors vary instead: identity (face shape, skin tone, eye spacing/size, nose, lips,
hair style/colour, clothing), head pose (slow yaw/pitch/roll/translation jitter), lighting
direction, background, blinks, sensor noise, and optionally speech-like mouth motion with a
matching voiced audio track (mouth opening drives the loudness and the first formant; lip
rounding drives the second), so pretext tasks that predict audio from video have signal.

Everything is deterministic from integer seeds (numpy ``SeedSequence``).

Coordinates: a face is drawn in face-local units (x right, y down, origin the face centre,
1 unit = half the face height from chin to hairline), projected through a small 3-D rotation
(points lie on an ellipsoid) and placed in pixels. Frames are uint8 RGB [H, W, 3].

Modules: motion (trajectories), identity (who and how they move), drawing (primitives and
face parts), frames (frames and videos), speech (mouth motion and voice), corpus (labels,
files, corpora).
"""

from training.synth.corpus import (
    LABEL_COLUMNS,
    MANIFEST_COLUMNS,
    label_rows,
    make_corpus,
    split_identities,
    write_labels_csv,
    write_synthetic_video,
)
from training.synth.drawing import render_cell
from training.synth.frames import landmarks5, render_frame, render_video
from training.synth.identity import (
    Expression,
    Identity,
    Pose,
    blink_amount,
    expression_geometry,
    head_pose,
    sample_identity,
)
from training.synth.motion import AUDIO_RATE, sample_trajectory
from training.synth.speech import (
    Speech,
    render_clip,
    sample_speech,
    speech_at_frames,
    synthesize_voice,
)

__all__ = [
    "AUDIO_RATE",
    "Expression",
    "Identity",
    "LABEL_COLUMNS",
    "MANIFEST_COLUMNS",
    "Pose",
    "Speech",
    "blink_amount",
    "expression_geometry",
    "head_pose",
    "label_rows",
    "landmarks5",
    "make_corpus",
    "render_cell",
    "render_clip",
    "render_frame",
    "render_video",
    "sample_identity",
    "sample_speech",
    "sample_trajectory",
    "speech_at_frames",
    "split_identities",
    "synthesize_voice",
    "write_labels_csv",
    "write_synthetic_video",
]
