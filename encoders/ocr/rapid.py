"""The rapidocr engine: PP-OCRv4 ONNX models (inside its wheel) on onnxruntime."""

from __future__ import annotations

import numpy as np

from encoders.ocr.base import OcrEngine


def _quad_box(points) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


class RapidOcrEngine(OcrEngine):
    """PP-OCRv4 (det, cls, rec) on onnxruntime. Runs rapidocr 1.4.4's own steps one by one so
    that the recogniser's CTC columns reach `_respace`."""

    name = "rapidocr"
    languages = frozenset({"en", "zh"})

    def _load_model(self):
        from rapidocr_onnxruntime import RapidOCR

        # Global thread settings are copied to det, cls and rec (per-module ones are overwritten).
        return RapidOCR(intra_op_num_threads=self.options.threads, inter_op_num_threads=1)

    def _read(self, pixels):
        m = self._model
        bgr = np.ascontiguousarray(pixels[:, :, ::-1])
        img, ratio_h, ratio_w = m.preprocess(bgr)  # its own size limits, then padding of thin strips
        img, record = m.maybe_add_letterbox(img, {"preprocess": {"ratio_h": ratio_h, "ratio_w": ratio_w}})
        boxes, _ = m.text_det(img)
        if boxes is None or len(boxes) == 0:
            return []
        boxes = m.sorted_boxes(boxes)
        crops, _, _ = m.text_cls(m.get_crop_img_list(img, boxes))
        recognised, _ = m.text_rec(crops, self.options.restore_spaces)
        gray = img.astype(np.float32) @ np.array([0.114, 0.587, 0.299], np.float32)
        out = []
        for box, original, (text, score, *ctc) in zip(
            boxes, m._get_origin_points(boxes, record, *bgr.shape[:2]), recognised
        ):
            if ctc and text:
                text = _respace(text, ctc[0], gray, _quad_box(box))
            out.append((text, score, _quad_box(original)))
        return out


# A space is inserted between two recognised characters when the blank run between them is
# at least this share of the line's mean character pitch and their CTC columns are at least
# SPACE_MIN_COLUMNS apart. Fitted on the fixtures: 45 of the 59 spaces PP-OCRv4 dropped were
# found at 0.45 with no false space among 2,903 letter pairs; 0.5 leaves a margin (43 found).
SPACE_GAP = 0.5
SPACE_MIN_COLUMNS = 4


def _respace(text: str, info, gray: np.ndarray, box) -> str:
    """`text` with spaces put back where the ink has a word-sized gap (see SPACE_GAP).
    `info` is rapidocr's per-line CTC decoding: [columns, words, columns of each char, ...]."""
    col_num, cols = info[0], [c for word in info[2] for c in word]
    x0, y0, x1, y1 = (max(0, round(float(v))) for v in box)
    crop = gray[y0:y1, x0:x1]
    if len(cols) != len(text) or col_num <= 0 or crop.size == 0 or len(text) < 2:
        return text
    border = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
    blank = ~(np.abs(crop - np.median(border)) > 40).any(axis=0)  # columns without ink
    pitch = crop.shape[1] / len(text)
    xs = [int((c + 0.5) * crop.shape[1] / col_num) for c in cols]
    out = [text[0]]
    for i in range(1, len(text)):
        if (
            " " not in (text[i], text[i - 1])
            and cols[i] - cols[i - 1] >= SPACE_MIN_COLUMNS
            and _longest_run(blank[xs[i - 1] : xs[i]]) >= SPACE_GAP * pitch
        ):
            out.append(" ")
        out.append(text[i])
    return "".join(out)


def _longest_run(flags: np.ndarray) -> int:
    edges = np.flatnonzero(np.diff(np.concatenate(([0], flags.astype(np.int8), [0]))))
    return int((edges[1::2] - edges[::2]).max(initial=0))
