"""The naive baseline of `bench.throughput`: what a user would write by hand with
face-alignment, per frame and per face (see Naive). Runs in a bench.throughput worker."""

from __future__ import annotations

import os
from typing import Any

from bench.harness import MEAN_FACE, RETINA, config_of, timed

FPS = 25.0  # analysis rate, frames/s (as bench.throughput)


class Naive:
    """The baseline a user would write with face-alignment, per frame and per face.

    retina5: face-alignment's RetinaFace network called on one frame at a time, boxes and
    5 points decoded with face-alignment's own prior boxes and NMS (its detector discards the
    points, so the user decodes them). fan68: `FaceAlignment(..., face_detector="retinaface")`
    with its detector per frame and `get_landmarks_from_image` (FAN one face at a time).
    Both: detection on the frame downscaled to `max_side` (as the pipeline does), then
    `cv2.estimateAffinePartial2D` (LMEDS, auto_avsr's call) to the mean face and one 96x96 gray
    crop per face; faces are tracked by left-to-right order; the model runs once per window
    (200 frames, hop 100) and overlapping windows are averaged.
    """

    def __init__(self, task: dict[str, Any]) -> None:
        import numpy as np
        import torch

        from pipeline.faces.align import crop_square, template_points
        from pipeline.model.checkpoint import load_model

        cfg = config_of(task)
        self.cfg = cfg
        self.kind = cfg.faces.landmarks.kind
        self.device = task["device"]
        self.max_side = cfg.faces.detector.max_side
        self.threshold = cfg.faces.detector.threshold
        self.min_size = cfg.faces.detector.min_size_px
        det_kwargs = {
            "path_to_detector": str(RETINA),
            "confidence_threshold": self.threshold,
            "nms_threshold": cfg.faces.detector.nms,
        }
        if self.kind == "fan68":
            os.environ["TORCH_HOME"] = task["torch_home"]
            import face_alignment

            self.fa = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D,
                device=self.device,
                face_detector="retinaface",
                face_detector_kwargs=det_kwargs,
                flip_input=False,  # the pipeline runs FAN once per face; so does this
                compile=False,
            )
            self.det = self.fa.face_detector
        else:
            from face_alignment.detection.retinaface import FaceDetector

            self.det = FaceDetector(self.device, **det_kwargs)
        mean = np.load(MEAN_FACE)
        self.template = template_points(mean, self.kind, cfg.faces.align.stable_points)
        x0, y0, side = crop_square(mean, cfg.faces.align.crop_scale)
        k = cfg.faces.align.crop_size / side
        self.to_crop = np.array([[k, 0, -x0 * k], [0, k, -y0 * k], [0, 0, 1.0]])
        self.model, _ = load_model(task["checkpoint"], cfg.model)
        self.torch = torch

    def detect(self, frame: Any) -> tuple[Any, Any]:
        """Boxes [M, 4] and 5 points [M, 5, 2] (source px) of one RGB frame."""
        import cv2
        import numpy as np

        h, w = frame.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = frame
        if scale < 1.0:
            size = (round(w * scale), round(h * scale))
            small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(small[..., ::-1])
        if self.kind == "fan68":
            dets = np.asarray(self.det.detect_from_image(bgr), np.float32).reshape(-1, 5)
            boxes = dets[:, :4] / scale
            return self._keep(boxes, dets[:, 4], np.zeros((len(boxes), 5, 2), np.float32))
        from face_alignment.detection.retinaface.box_utils import decode, py_cpu_nms
        from face_alignment.detection.retinaface.prior_box import PriorBox

        torch = self.torch
        x = torch.from_numpy((bgr.astype(np.float32) - [104.0, 117.0, 123.0]).transpose(2, 0, 1))
        with torch.no_grad():
            loc, conf, landm = self.det.face_detector(x[None].float().to(self.device))
        sh, sw = bgr.shape[:2]
        priors = PriorBox(self.det.cfg, image_size=(sh, sw)).forward().to(self.device)
        var = self.det.cfg["variance"]
        boxes = decode(loc[0], priors, var)
        pts = priors[:, None, :2] + landm[0].view(-1, 5, 2) * var[0] * priors[:, None, 2:]
        scores = conf[0, :, 1]
        m = scores > self.threshold
        boxes = (boxes[m] * torch.tensor([sw, sh, sw, sh], device=boxes.device)).cpu().numpy()
        pts = (pts[m] * torch.tensor([sw, sh], device=pts.device)).cpu().numpy()
        sc = scores[m].cpu().numpy()
        if len(sc) == 0:
            return np.zeros((0, 4)), np.zeros((0, 5, 2))
        keep = py_cpu_nms(np.hstack([boxes, sc[:, None]]).astype(np.float32), 0.4)
        return self._keep(boxes[keep] / scale, sc[keep], pts[keep] / scale)

    def _keep(self, boxes: Any, scores: Any, pts: Any) -> tuple[Any, Any]:
        side = (boxes[:, 2:] - boxes[:, :2]).min(1) if len(boxes) else boxes[:, 0]
        sel = side >= self.min_size
        return boxes[sel][:16], pts[sel][:16]

    def video(self, uri: str, end_s: float | None) -> tuple[int, int]:
        """Process one video; returns (frames, detections)."""
        import cv2
        import numpy as np

        from pipeline.model.network import predict
        from pipeline.video import VideoReader

        size = self.cfg.faces.align.crop_size
        tracks: dict[int, list[Any]] = {}
        frames = faces = 0
        with VideoReader(uri) as r:
            for chunk in r.chunks(FPS, None, end_s, 32):
                for frame in chunk.frames:
                    boxes, pts = self.detect(frame)
                    if self.kind == "fan68" and len(boxes):
                        # plain float lists, as face-alignment's detectors return them
                        dets = [[float(v) for v in b] for b in boxes]
                        lms = self.fa.get_landmarks_from_image(frame, detected_faces=dets)
                        pts = np.stack(lms)[:, list(self.cfg.faces.align.stable_points)]
                    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
                    order = np.argsort(boxes[:, 0]) if len(boxes) else []
                    for slot, j in enumerate(order):
                        m, _ = cv2.estimateAffinePartial2D(
                            pts[j].astype(np.float32),
                            self.template.astype(np.float32),
                            method=cv2.LMEDS,
                        )
                        if m is None:
                            continue
                        c = (self.to_crop @ np.vstack([m, [0, 0, 1]]))[:2]
                        tracks.setdefault(slot, []).append(cv2.warpAffine(gray, c, (size, size)))
                    faces += len(boxes)
                    frames += 1
        w, hop = self.cfg.infer.window_frames, self.cfg.infer.hop_frames
        for crops in tracks.values():
            seq = np.stack(crops)
            n = len(seq)
            acc = np.zeros((2, n))
            cnt = np.zeros(n)
            starts = list(range(0, max(n - w, 0) + 1, hop))
            if starts[-1] + w < n:
                starts.append(n - w)
            for s in starts:
                part = seq[s : s + w]
                res = predict(self.model, part[None], [len(part)], self.cfg.model.dtype)
                acc[0, s : s + len(part)] += res["arousal"][0]
                acc[1, s : s + len(part)] += res["valence"][0]
                cnt[s : s + len(part)] += 1
            _ = acc / np.maximum(cnt, 1)  # the timeline the user would keep
        return frames, faces


def work_naive(task: dict[str, Any]) -> dict[str, Any]:
    """The hand-written baseline (see Naive), model loading included."""

    def go() -> dict[str, Any]:
        naive = Naive(task)
        frames = faces = 0
        for u in task["inputs"]:
            f, d = naive.video(u, task.get("end_s"))
            frames += f
            faces += d
        return {"frames": frames, "faces": faces}

    return timed(go)
