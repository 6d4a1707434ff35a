"""data_gen benchmarks: prints tables.

CXAS-scale masks (this file's first part): per image, 159 organ masks at 2048 x 2048 (the CXAS class list,
overlapping as CXAS's are: lungs, zones, lobes, ribs, vertebrae, mediastinum, ...) written as CXAS's JPEG files,
and 10 lesion boxes. Every row runs on the same files, timed the same way (per image: `--warmup` untimed calls,
then `--repeats` timed ones; the median over all images and repeats):

  * reading the masks: the authors' code (`cv2.imread(path, 0)` of every file: uint8 at full size), the Pillow
    reader this project had before, and ours (`load_masks`: OpenCV, JPEGs decoded at half size by libjpeg onto
    the 1024 linking grid as coverage; and the same at full resolution, `masks.grid_max_side=0`);
  * linking: the authors' released code path, re-implemented faithfully: on the masks as their reader returns
    them, for every lesion and every mask, binarize `> 127`, take the rows and columns holding a pixel, their
    first and last, normalize, IoU with the normalized lesion box; the first maximum wins; the same rule
    implemented well (each mask's bounding box computed once per image, the [N, K] IoUs at once; asserted to
    return exactly the organs of the first); ours, `data_gen.link.link_lesions` (containment), on the masks as
    `load_masks` holds them (the grid) and at full resolution;
  * peak memory: each reader + linker in a fresh child process (its peak RSS, VmHWM; `resource.getrusage` where
    /proc is missing), against a child that only imports.

Build throughput (second part): `medclm-data build` on phantom data (DICOM radiographs + DeepLesion-style CT),
images/s with 1 and 2 worker processes, and where one image's time goes (decode = reading + windowing the DICOM /
PNG, masks = reading + resampling organ masks, link, synth, encode = PNG encoding of the stored image; the
"conversion" proper is everything but decode and encode).

Run: `python benchmarks/data_gen.py` (or `python -m benchmarks.data_gen`), options --size 2048 --masks 159
--lesions 10 --images 2 --repeats 2 --warmup 1 --build-images 48 --skip-link / --skip-rss / --skip-build.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

# Run as a script, this file's folder comes first on sys.path and its name would shadow the data_gen package.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
if getattr(sys.modules.get("data_gen"), "__file__", None) == os.path.abspath(__file__):
    del sys.modules["data_gen"]

from data_gen import link  # noqa: E402
from data_gen.segment import load_masks  # noqa: E402
from data_gen.segment import names as organ_names  # noqa: E402
from data_gen.segment.sources import binarize_png  # noqa: E402
from data_gen.types import ImageItem, LoadedImage, OrganMasks  # noqa: E402


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as e:
        raise SystemExit("this benchmark reads masks with OpenCV: pip install opencv-python-headless") from e
    return cv2

# ---- inputs ------------------------------------------------------------------------------------------------------


def _ellipse_into(mask: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> None:
    """Draws a filled ellipse into `mask` touching only its bounding window (fast at 2048 px)."""
    h, w = mask.shape
    r0, r1 = max(0, int(cy - ry)), min(h, int(cy + ry) + 1)
    c0, c1 = max(0, int(cx - rx)), min(w, int(cx + rx) + 1)
    if r1 <= r0 or c1 <= c0:
        return
    y = (np.arange(r0, r1)[:, None] + 0.5 - cy) / ry
    x = (np.arange(c0, c1)[None, :] + 0.5 - cx) / rx
    mask[r0:r1, c0:c1] |= (y * y + x * x) <= 1.0


def _band_into(mask: np.ndarray, row: float, c0: float, c1: float, sag: float, thickness: float) -> None:
    """A rib-like curved band from column c0 to c1 sagging by `sag` rows."""
    h, w = mask.shape
    cols = np.arange(max(0, int(c0)), min(w, int(c1)))
    if len(cols) == 0:
        return
    t = (cols - c0) / max(c1 - c0, 1)
    centre = row + sag * 4 * t * (1 - t)
    for dr in range(int(thickness)):
        rows = np.clip((centre + dr).astype(int), 0, h - 1)
        mask[rows, cols] = True


def make_link_inputs(size: int = 2048, n_masks: int = 159, n_lesions: int = 10, seed: int = 0
                     ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Synthetic CXAS-like masks and lesion boxes.

    Returns:
      (masks bool `[K, size, size]` in CXAS channel order, CXAS raw names `[K]`, boxes float `[N, 4]` pixel xyxy).
    """
    rng = np.random.default_rng(seed)
    names = organ_names.cxas_classes()[:n_masks]
    s = size
    masks = np.zeros((len(names), s, s), bool)
    lungs = {"right": (0.42 * s, 0.30 * s, 0.30 * s, 0.15 * s), "left": (0.42 * s, 0.70 * s, 0.30 * s, 0.15 * s)}
    for k, name in enumerate(names):
        m = masks[k]
        side = "right" if "right" in name else ("left" if "left" in name else None)
        if name in ("lung", "right lung", "left lung") or "lobe" in name or "zone" in name or "base" in name:
            for sd, (cy, cx, ry, rx) in lungs.items():
                if side in (None, sd):
                    _ellipse_into(m, cy, cx, ry, rx)
            rows = np.arange(s)[:, None]
            top, bottom = 0.12 * s, 0.72 * s
            third = (bottom - top) / 3
            if "upper zone" in name or "upper lobe" in name:
                m &= rows < top + third
            elif "mid zone" in name or "middle lobe" in name:
                m &= (rows >= top + third) & (rows < top + 2 * third)
            elif "base" in name or "lower lobe" in name:
                m &= rows >= top + 2 * third
            elif "apical" in name:
                m &= rows < top + 0.5 * third
        elif "rib" in name:
            c = 0.30 * s if side == "right" else 0.70 * s
            _band_into(m, rng.uniform(0.1, 0.75) * s, c - 0.17 * s, c + 0.17 * s, rng.uniform(0.02, 0.08) * s,
                       rng.uniform(0.012, 0.025) * s)
        elif "vertebra" in name or "spine" in name:
            _ellipse_into(m, rng.uniform(0.05, 0.9) * s, 0.5 * s, rng.uniform(0.02, 0.2) * s, 0.04 * s)
        else:  # heart, mediastinum, abdomen, clavicles, breasts...: an ellipse somewhere plausible
            _ellipse_into(m, rng.uniform(0.2, 0.85) * s, rng.uniform(0.25, 0.75) * s, rng.uniform(0.03, 0.2) * s,
                          rng.uniform(0.03, 0.2) * s)
    boxes = []
    for _ in range(n_lesions):
        sd = rng.choice(["right", "left"])
        cy, cx, ry, rx = lungs[sd]
        y, x = cy + rng.uniform(-0.8, 0.8) * ry, cx + rng.uniform(-0.8, 0.8) * rx
        bw, bh = rng.uniform(0.02, 0.2, size=2) * s
        boxes.append([x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2])
    return masks, list(names), np.clip(np.asarray(boxes), 0, s - 1)


# ---- the readers ---------------------------------------------------------------------------------------------------


def write_cxas_jpegs(folder: str, masks: np.ndarray, names: Sequence[str]) -> None:
    """One `<class>.jpg` per mask (0/255 grey, OpenCV's default quality), as CXAS exports them."""
    cv2 = _cv2()
    os.makedirs(folder, exist_ok=True)
    for name, m in zip(names, masks):
        path = os.path.join(folder, f"{name}.jpg")
        if not cv2.imwrite(path, m.view(np.uint8) * np.uint8(255)):
            raise OSError(f"could not write {path}")


def authors_read(folder: str) -> tuple[list[str], list[np.ndarray]]:
    """The authors' mask reading: every file of the anatomy folder with `cv2.imread(path, 0)` (uint8, full size),
    names = file stems."""
    cv2 = _cv2()
    files = sorted(os.listdir(folder))
    return [os.path.splitext(f)[0] for f in files], [cv2.imread(os.path.join(folder, f), 0) for f in files]


def pillow_read(folder: str) -> np.ndarray:
    """This project's reader before OpenCV: Pillow, "L", `binarize_png`, one bool stack at full size."""
    from PIL import Image

    planes = []
    for f in sorted(os.listdir(folder)):
        with Image.open(os.path.join(folder, f)) as im:
            planes.append(binarize_png(np.asarray(im.convert("L") if im.mode != "L" else im)))
    return np.stack(planes)


def _bench_image(size: int) -> LoadedImage:
    return LoadedImage(pixels=np.zeros((size, size), np.uint8), modality="xray", spacing_mm=(0.14, 0.14))


def ours_read(folder: str, size: int, grid_max_side: Optional[int] = None) -> OrganMasks:
    """`load_masks` on the folder: the default linking grid, or `grid_max_side` (0: full resolution)."""
    item = ImageItem(path="bench.png", source="bench", image_key="bench", patient_key="p", mask_ref=folder)
    return load_masks(item, _bench_image(size), {"source": "png_dir", "grid_max_side": grid_max_side})


# ---- the linkers ---------------------------------------------------------------------------------------------------


def _authors_mask_box(mask_u8: np.ndarray) -> list[float]:
    """The mask's bounding box as the authors' released code computes it: binarize `> 127`, rows and columns
    holding a pixel, first and last of each, divided by the mask's width and height (the last pixel's index, not
    one past it); all zeros for an empty mask."""
    binary = (mask_u8 > 127).astype(np.uint8)
    if np.sum(binary) == 0:
        return [0, 0, 0, 0]
    rows, cols = np.any(binary, axis=1), np.any(binary, axis=0)
    y0, y1 = np.where(rows)[0][[0, -1]]
    x0, x1 = np.where(cols)[0][[0, -1]]
    h, w = mask_u8.shape
    return [x0 / w, y0 / h, x1 / w, y1 / h]


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Their IoU of two normalized xyxy boxes: 0 when the overlap is empty or a line."""
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    if x2 < x1 or y2 < y1:
        return 0.0
    inter = (x2 - x1) * (y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def authors_link(boxes: np.ndarray, masks_u8: Sequence[np.ndarray], names: Sequence[str]) -> list[str]:
    """The authors' released code path, re-implemented faithfully: for every lesion, for every organ mask (as
    their reader returns it, uint8 0/255 on the image grid), recompute the mask's bounding box
    (`_authors_mask_box`), IoU with the normalized lesion box; the first strictly highest wins (directory order),
    `unknown` when nothing overlaps."""
    h, w = masks_u8[0].shape
    out = []
    for x1, y1, x2, y2 in boxes.tolist():
        lesion = [x1 / w, y1 / h, x2 / w, y2 / h]
        best, best_iou = "unknown", 0.0
        for name, m in zip(names, masks_u8):
            box = _authors_mask_box(m)
            if sum(box) == 0:
                continue
            iou = _box_iou(lesion, box)
            if iou > best_iou:
                best, best_iou = name, iou
        out.append(best)
    return out


def authors_rule_once(boxes: np.ndarray, masks: np.ndarray, names: Sequence[str]) -> list[str]:
    """The same rule implemented well: every mask's bounding box computed once per image (two reductions over
    the whole stack), then the [N, K] IoUs at once. `masks` are bool (binarized once, when read, as ours are).
    Returns exactly what `authors_link` returns (same float operations, same first-maximum tie rule)."""
    k, h, w = masks.shape
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # [K, H], [K, W]
    nonempty = rows.any(axis=1)
    y0, y1 = rows.argmax(axis=1), h - 1 - rows[:, ::-1].argmax(axis=1)
    x0, x1 = cols.argmax(axis=1), w - 1 - cols[:, ::-1].argmax(axis=1)
    organ = np.stack([x0 / w, y0 / h, x1 / w, y1 / h], axis=1)  # [K, 4]
    usable = nonempty & (organ.sum(axis=1) != 0)
    lesion = np.asarray(boxes, np.float64) / np.array([w, h, w, h], np.float64)  # [N, 4]
    a, b = lesion[:, None, :], organ[None, :, :]
    ix1, iy1 = np.maximum(a[..., 0], b[..., 0]), np.maximum(a[..., 1], b[..., 1])
    ix2, iy2 = np.minimum(a[..., 2], b[..., 2]), np.minimum(a[..., 3], b[..., 3])
    inter = (ix2 - ix1) * (iy2 - iy1)
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) \
        - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where((ix2 < ix1) | (iy2 < iy1) | (union <= 0), 0.0, inter / union)
    iou = np.where(usable[None, :], iou, 0.0)
    best = iou.argmax(axis=1)  # the first maximum, as their strict `>` keeps it
    return [names[j] if iou[i, j] > 0 else "unknown" for i, j in enumerate(best.tolist())]


def ours_link(boxes: np.ndarray, organ_masks: OrganMasks, image: LoadedImage) -> list[str]:
    return [r.organ for r in link.link_lesions(boxes, organ_masks, image, {"min_score": 0.1})]


def _times(fn: Callable[[], Any], warmup: int, repeats: int) -> tuple[list[float], Any]:
    """`warmup` untimed calls, then `repeats` timed ones (ms each) and the last result."""
    result: Any = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(1000.0 * (time.perf_counter() - t0))
    return times, result


def bench_masks(folder: str, size: int = 2048, n_masks: int = 159, n_lesions: int = 10, images: int = 2,
                repeats: int = 2, warmup: int = 1, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Times the readers and the linkers on identical inputs, the same way (see the module docstring). Writes each
    image's masks under `folder/image<i>` (kept for `bench_rss`). Returns (reading rows, linking rows)."""
    readers = ("authors_read", "pillow_read", "ours_full_read", "ours_read")
    linkers = ("authors_code", "authors_rule_once", "ours_full", "ours")
    ms: dict[str, list[float]] = {k: [] for k in readers + linkers}
    held: dict[str, float] = {}
    same_rule = agree = grid_agree = total = 0
    for i in range(images):
        masks, raw_names, boxes = make_link_inputs(size, n_masks, n_lesions, seed + i)
        image_dir = os.path.join(folder, f"image{i}")
        write_cxas_jpegs(image_dir, masks, raw_names)
        np.save(os.path.join(image_dir + ".boxes.npy"), boxes)
        del masks
        reads = {"authors_read": lambda: authors_read(image_dir), "pillow_read": lambda: pillow_read(image_dir),
                 "ours_full_read": lambda: ours_read(image_dir, size, 0),
                 "ours_read": lambda: ours_read(image_dir, size)}
        got: dict[str, Any] = {}
        for name in readers:
            t, got[name] = _times(reads[name], warmup, repeats)
            ms[name] += t
        held = {"authors_read": sum(m.nbytes for m in got["authors_read"][1]) / 2**20,
                "pillow_read": got.pop("pillow_read").nbytes / 2**20,
                "ours_full_read": got["ours_full_read"].masks.nbytes / 2**20,
                "ours_read": got["ours_read"].masks.nbytes / 2**20}
        names, masks_u8 = got["authors_read"]
        binary = np.stack([m > 127 for m in masks_u8])  # binarized once, when read, as ours are
        image = _bench_image(size)
        calls = {"authors_code": lambda: authors_link(boxes, masks_u8, names),
                 "authors_rule_once": lambda: authors_rule_once(boxes, binary, names),
                 "ours_full": lambda: ours_link(boxes, got["ours_full_read"], image),
                 "ours": lambda: ours_link(boxes, got["ours_read"], image)}
        results = {}
        for name in linkers:
            t, results[name] = _times(calls[name], warmup, repeats)
            ms[name] += t
            assert len(results[name]) == n_lesions and all(results[name]), name
        assert results["authors_rule_once"] == results["authors_code"], "the two implementations of one rule differ"
        same_rule += n_lesions
        agree += sum(organ_names.display_name(b) == o for b, o in zip(results["authors_code"], results["ours"]))
        grid_agree += sum(a == b for a, b in zip(results["ours"], results["ours_full"]))
        total += n_lesions
        del got, masks_u8, binary
    med = {k: float(np.median(v)) for k, v in ms.items()}
    read_labels = {"authors_read": "authors' cv2.imread loop", "pillow_read": "Pillow reader (before)",
                   "ours_full_read": "load_masks, full resolution", "ours_read": "load_masks, 1024 grid"}
    read_notes = {"authors_read": "uint8 0/255 at full size", "pillow_read": "bool stack at full size",
                  "ours_full_read": "OpenCV, bool stack at full size",
                  "ours_read": "OpenCV, JPEG at 1/2 scale, coverage per 2x2 cell"}
    reading = [{"name": read_labels[k], "ms_per_image": med[k], "speedup": med["authors_read"] / med[k],
                "mb": held[k], "note": read_notes[k]} for k in readers]
    link_labels = {"authors_code": "authors' code path (bbox IoU)", "authors_rule_once": "same rule, boxes once",
                   "ours_full": "link_lesions, full resolution", "ours": "link_lesions, 1024 grid"}
    link_notes = {"authors_code": "per lesion x mask: binarize > 127, bounding box",
                  "authors_rule_once": f"same organ as authors' code for {same_rule}/{total} lesions",
                  "ours_full": f"containment, bool masks at {size} px",
                  "ours": f"same organ as at full resolution for {grid_agree}/{total}; as authors' rule for "
                          f"{agree}/{total}"}
    linking = [{"name": link_labels[k], "ms_per_image": med[k], "speedup": med["authors_code"] / med[k],
                "vs_rule_once": med["authors_rule_once"] / med[k], "note": link_notes[k]} for k in linkers]
    return reading, linking


# ---- peak memory per worker --------------------------------------------------------------------------------------

RSS_MODES = ("imports", "authors", "ours_full", "ours")


def rss_child(mode: str, image_dir: str, size: int) -> None:
    """In a fresh process: read one image's masks and link its lesions as `mode` does, print the peak RSS (MB)."""
    boxes = np.load(image_dir + ".boxes.npy")
    if mode == "authors":
        names, masks_u8 = authors_read(image_dir)
        authors_link(boxes, masks_u8, names)
    elif mode in ("ours_full", "ours"):
        om = ours_read(image_dir, size, 0 if mode == "ours_full" else None)
        ours_link(boxes, om, _bench_image(size))
    elif mode == "imports":  # what every worker loads anyway: numpy, OpenCV, Pillow, data_gen's readers
        _cv2()
        from PIL import Image  # noqa: F401
    else:
        raise SystemExit(f"unknown --rss-child mode {mode!r}")
    print(_peak_rss_mb())


def _peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM of its own address space. `getrusage`'s ru_maxrss survives
    fork + exec on Linux, so a child started by a big parent would report the parent's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux, bytes on macOS


def bench_rss(folder: str, size: int) -> list[dict]:
    """Peak RSS of one worker per mode (`rss_child` in a fresh interpreter each), on `folder/image0`."""
    rows = []
    for mode in RSS_MODES:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--rss-child", mode, "--rss-dir",
                              os.path.join(folder, "image0"), "--size", str(size)],
                             check=True, capture_output=True, text=True)
        rows.append({"mode": mode, "peak_mb": float(out.stdout.split()[-1])})
    return rows


# ---- table -------------------------------------------------------------------------------------------------------


def print_masks(reading: list[dict], linking: list[dict], rss: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(f"{'mask reader':<32} {'ms/image':>10} {'vs authors':>11} {'MB held':>8}  note")
    for r in reading:
        print(f"{r['name']:<32} {r['ms_per_image']:>10.1f} {r['speedup']:>10.2f}x {r['mb']:>8.0f}  {r['note']}")
    print(f"\n{'linker':<32} {'ms/image':>10} {'vs authors':>11} {'vs once':>8}  note")
    for r in linking:
        print(f"{r['name']:<32} {r['ms_per_image']:>10.1f} {r['speedup']:>10.1f}x {r['vs_rule_once']:>7.2f}x  "
              f"{r['note']}")
    if rss:
        base = rss[0]["peak_mb"]
        labels = {"imports": "imports only", "authors": "authors' read + link", "ours_full":
                  "load_masks + link, full resolution", "ours": "load_masks + link, 1024 grid"}
        print(f"\n{'one worker, one image':<36} {'peak RSS MB':>12} {'above imports':>14}")
        for r in rss:
            print(f"{labels[r['mode']]:<36} {r['peak_mb']:>12.0f} {r['peak_mb'] - base:>14.0f}")


# ---- build throughput ----------------------------------------------------------------------------------------


def bench_build(n_images: int = 48, workers: Sequence[int] = (1, 2), seed: int = 0) -> tuple[list[dict], dict]:
    """Times `run_build` on phantom data per worker count, then profiles one in-process pass by stage."""
    import collections
    import tempfile

    import data_gen.imaging
    import data_gen.link
    import data_gen.pipeline
    import data_gen.segment
    from data_gen import phantom, synth
    from data_gen.build import _load_adapter, class_vocabulary, run_build
    from data_gen.config import load_dataset_config

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw")
        phantom.write_phantom(raw, n_images, seed=seed)
        cfg = load_dataset_config("phantom", f"root={raw}", ["write.records_per_shard=8"])
        for w in workers:
            t0 = time.perf_counter()
            info = run_build(cfg, os.path.join(tmp, f"out{w}"), workers=w, progress=False)
            dt = time.perf_counter() - t0
            rows.append({"workers": w, "images": info["counts"]["total"]["images_in"],
                         "records": info["counts"]["total"]["records"], "seconds": dt,
                         "images_per_s": info["counts"]["total"]["images_in"] / dt})

        # Per-stage profile: wrap the stage functions the pipeline calls, convert every image in this process.
        spent: collections.Counter = collections.Counter()

        def timed(name, fn):
            def wrapper(*a, **k):
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    spent[name] += time.perf_counter() - t
            return wrapper

        originals = (data_gen.imaging.load_image, data_gen.segment.load_masks, data_gen.link.link_lesions,
                     data_gen.pipeline.encode_png)
        data_gen.imaging.load_image = timed("decode", originals[0])
        data_gen.segment.load_masks = timed("masks", originals[1])
        data_gen.link.link_lesions = timed("link", originals[2])
        data_gen.pipeline.encode_png = timed("encode", originals[3])
        try:
            aset = _load_adapter(cfg)
            vocab = class_vocabulary(aset.items)
            synthesizer = synth.get_synthesizer(cfg.synth)
            synthesizer.synthesize = timed("synth", synthesizer.synthesize)
            t0 = time.perf_counter()
            for item in aset.items:
                data_gen.pipeline.convert_image(item, cfg, vocab, synthesizer)
            spent["total"] = time.perf_counter() - t0
        finally:
            (data_gen.imaging.load_image, data_gen.segment.load_masks, data_gen.link.link_lesions,
             data_gen.pipeline.encode_png) = originals
    spent["other (resize, records)"] = spent["total"] - sum(spent[k] for k in ("decode", "masks", "link", "synth",
                                                                                "encode"))
    return rows, {"n": len(aset.items), **spent}


def print_build(rows: list[dict], profile: dict) -> None:
    print("\nBuild throughput on phantom data (DICOM radiographs + DeepLesion-style CT, 512 px)")
    print(f"{'workers':>7} {'images':>7} {'records':>8} {'seconds':>8} {'images/s':>9} {'vs 1 worker':>12}")
    base = rows[0]["images_per_s"]
    for r in rows:
        print(f"{r['workers']:>7} {r['images']:>7} {r['records']:>8} {r['seconds']:>8.2f} {r['images_per_s']:>9.2f}"
              f" {r['images_per_s'] / base:>11.2f}x")
    total, n = profile["total"], profile["n"]
    print(f"\nWhere one image's time goes (1 process, {n} images, {1000 * total / n:.1f} ms/image)")
    print(f"{'stage':<26} {'ms/image':>9} {'share':>7}")
    for k in ("decode", "encode", "masks", "link", "synth", "other (resize, records)"):
        print(f"{k:<26} {1000 * profile[k] / n:>9.2f} {100 * profile[k] / total:>6.1f}%")
    io_share = profile["decode"] + profile["encode"]
    conv = total - io_share
    print(f"{'decode + encode':<26} {1000 * io_share / n:>9.2f} {100 * io_share / total:>6.1f}%")
    print(f"{'conversion (the rest)':<26} {1000 * conv / n:>9.2f} {100 * conv / total:>6.1f}%   "
          f"conversion / (decode+encode) = {conv / io_share:.2f}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--masks", type=int, default=159)
    p.add_argument("--lesions", type=int, default=10)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--build-images", type=int, default=48)
    p.add_argument("--skip-link", action="store_true")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--skip-build", action="store_true")
    p.add_argument("--rss-child", choices=RSS_MODES, help=argparse.SUPPRESS)
    p.add_argument("--rss-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child, args.rss_dir, args.size)
        return
    if not args.skip_link:
        with tempfile.TemporaryDirectory() as tmp:
            reading, linking = bench_masks(tmp, args.size, args.masks, args.lesions, args.images, args.repeats,
                                           args.warmup)
            rss = [] if args.skip_rss else bench_rss(tmp, args.size)
        print_masks(reading, linking, rss, f"CXAS-scale masks: {args.size}x{args.size}, {args.masks} JPEG masks, "
                    f"{args.lesions} lesions per image, {args.images} images x {args.repeats} repeats "
                    f"({args.warmup} warm-up)")
    if not args.skip_build:
        print_build(*bench_build(args.build_images))


if __name__ == "__main__":
    main()
