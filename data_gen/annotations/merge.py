"""Merging boxes that several radiologists drew around the same finding (VinDr-CXR: three readers per image).

Clustering: within one image and one class, two boxes are linked when their IoU is >= `threshold`; a cluster is
a connected component of that graph (single linkage), and it becomes one box whose corners are the mean of its
members' corners. Connected components do not depend on the order of the rows, so the result is the same however
the CSV is sorted. Single linkage can chain A~B~C with IoU(A, C) below the threshold; at the usual thresholds
(>= 0.4) that happens only for boxes that overlap heavily anyway. Boxes of different classes never merge.
"""

from __future__ import annotations

import numpy as np

from data_gen.types import LesionAnnotation


def iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU of pixel xyxy boxes.

    Args:
      boxes: float `[N, 4]` as (x1, y1, x2, y2), x2 > x1 and y2 > y1.

    Returns:
      float64 `[N, N]`, symmetric, ones on the diagonal.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = area[:, None] + area[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def cluster_boxes(boxes: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected components of the graph 'IoU >= threshold'.

    Returns:
      clusters as sorted index lists, ordered by their smallest index (so the output follows the input order).
    """
    n = len(boxes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n > 1:
        for i, j in np.argwhere(np.triu(iou_matrix(boxes) >= threshold, k=1)).tolist():
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)  # the root is the cluster's smallest index
    clusters: dict[int, list[int]] = {}
    for i in range(n):
        clusters.setdefault(find(i), []).append(i)
    return [clusters[r] for r in sorted(clusters)]


def merge_reader_boxes(lesions: list[LesionAnnotation], threshold: float) -> tuple[list[LesionAnnotation], int]:
    """Merges same-class boxes of one image by IoU clustering (see the module docstring).

    Args:
      lesions: one image's lesions, any readers, any classes.
      threshold: IoU at or above which two boxes are the same finding, in (0, 1].

    Returns:
      (merged lesions, number of input boxes absorbed). A merged lesion's `reader` lists its readers
      ("R8+R9", sorted, deduplicated), `row` joins its rows with ';', `raw_label` is its first member's.
      Output order: by the first row of each cluster.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"merge_iou must be in (0, 1], got {threshold}")
    by_class: dict[str, list[int]] = {}
    for i, les in enumerate(lesions):
        by_class.setdefault(les.label, []).append(i)
    merged: list[tuple[int, LesionAnnotation]] = []
    for members in by_class.values():
        if len(members) == 1:
            merged.append((members[0], lesions[members[0]]))
            continue
        boxes = np.array([lesions[i].box for i in members], np.float64)
        for cluster in cluster_boxes(boxes, threshold):
            idx = [members[c] for c in cluster]
            first = lesions[idx[0]]
            if len(idx) == 1:
                merged.append((idx[0], first))
                continue
            box = tuple(float(v) for v in boxes[cluster].mean(axis=0))
            readers = sorted({lesions[i].reader for i in idx if lesions[i].reader})
            merged.append((idx[0], LesionAnnotation(
                box=box, label=first.label, raw_label=first.raw_label,
                reader="+".join(readers) if readers else None, row=";".join(lesions[i].row for i in idx))))
    merged.sort(key=lambda t: t[0])
    out = [les for _, les in merged]
    return out, len(lesions) - len(out)
