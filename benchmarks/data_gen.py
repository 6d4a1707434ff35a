"""data_gen benchmarks: prints a table.

Linking (this file's first part): one chest radiograph at 2048 x 2048 with 159 organ masks (the CXAS class list,
overlapping as CXAS's are: lungs, zones, lobes, ribs, vertebrae, mediastinum, ...) and 10 lesions, on identical
inputs for both linkers:

  * baseline, written the way the authors' code links (for every lesion: threshold each mask `> 127`, recompute
    its bounding box, IoU between the lesion box and that bounding box, argmax; the masks as the PNGs hold them,
    uint8 0/255);
  * ours, `data_gen.link.link_lesions` on the same masks as `OrganMasks` holds them (bool, binarized once when
    the masks were read).

Build throughput (second part): `medclm-data build` on phantom data (DICOM radiographs + DeepLesion-style CT),
images/s with 1 and 2 worker processes, and where one image's time goes (decode = reading + windowing the DICOM /
PNG, masks = reading + resampling organ masks, link, synth, encode = PNG encoding of the stored image; the
"conversion" proper is everything but decode and encode).

Run: `python benchmarks/data_gen.py` (or `python -m benchmarks.data_gen`), options --size 2048 --masks 159
--lesions 10 --images 3 --baseline-images 1 --build-images 48 --skip-link / --skip-build.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

# Run as a script, this file's folder comes first on sys.path and its name would shadow the data_gen package.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
if getattr(sys.modules.get("data_gen"), "__file__", None) == os.path.abspath(__file__):
    del sys.modules["data_gen"]

from data_gen import link  # noqa: E402
from data_gen.segment import names as organ_names  # noqa: E402
from data_gen.types import LoadedImage, OrganMasks  # noqa: E402

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


# ---- the two linkers ---------------------------------------------------------------------------------------------


def baseline_link(boxes: np.ndarray, masks_u8: np.ndarray, names: Sequence[str]) -> list[str]:
    """The authors' rule: per lesion, per organ: threshold, bounding box of the mask, box IoU; argmax."""
    out = []
    for x1, y1, x2, y2 in boxes.tolist():
        best, best_iou = "unknown", 0.0
        for name, m in zip(names, masks_u8):
            binary = m > 127
            ys, xs = np.where(binary)
            if len(xs) == 0:
                continue
            bx1, by1, bx2, by2 = xs.min(), ys.min(), xs.max(), ys.max()
            iw = max(0.0, min(x2, bx2) - max(x1, bx1))
            ih = max(0.0, min(y2, by2) - max(y1, by1))
            inter = iw * ih
            union = (x2 - x1) * (y2 - y1) + (bx2 - bx1) * (by2 - by1) - inter
            iou = inter / union if union > 0 else 0.0
            if iou > best_iou:
                best, best_iou = name, iou
        out.append(best)
    return out


def ours_link(boxes: np.ndarray, organ_masks: OrganMasks, image: LoadedImage) -> list[str]:
    return [r.organ for r in link.link_lesions(boxes, organ_masks, image, {"min_score": 0.1})]


def _time(fn: Callable[[], list[str]], repeats: int) -> tuple[float, list[str]]:
    best, result = float("inf"), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000.0, result


def bench_link(size: int = 2048, n_masks: int = 159, n_lesions: int = 10, images: int = 3,
               baseline_images: int = 1, seed: int = 0) -> list[dict]:
    """Times both linkers on identical inputs; returns one row per linker (ms per image, ratio, checks)."""
    rows: dict[str, dict] = {}
    base_ms, ours_ms, agree, total = [], [], 0, 0
    for i in range(images):
        masks, raw_names, boxes = make_link_inputs(size, n_masks, n_lesions, seed + i)
        masks_u8 = masks.view(np.uint8) * np.uint8(255)  # what the PNGs hold
        display = [organ_names.display_name(n) for n in raw_names]
        keep = masks.reshape(len(masks), -1).any(axis=1)  # load_masks drops empty masks
        om = OrganMasks(names=[d for d, k in zip(display, keep) if k], masks=masks if keep.all() else masks[keep],
                        source="bench")
        image = LoadedImage(pixels=np.zeros((size, size), np.uint8), modality="xray", spacing_mm=(0.14, 0.14))
        ms, ours = _time(lambda: ours_link(boxes, om, image), repeats=3)
        ours_ms.append(ms)
        assert len(ours) == n_lesions and all(ours), "ours must give a result for every lesion"
        if i < baseline_images:
            ms, base = _time(lambda: baseline_link(boxes, masks_u8, raw_names), repeats=1)
            base_ms.append(ms)
            assert len(base) == n_lesions and all(base), "the baseline must give a result for every lesion"
            agree += sum(organ_names.display_name(b) == o for b, o in zip(base, ours))
            total += n_lesions
        del masks_u8
    b, o = float(np.median(base_ms)), float(np.median(ours_ms))
    rows["baseline"] = {"linker": "authors' rule (bbox IoU)", "ms_per_image": b, "speedup": 1.0,
                        "images": len(base_ms)}
    rows["ours"] = {"linker": "link_lesions (containment)", "ms_per_image": o, "speedup": b / o,
                    "images": len(ours_ms)}
    rows["ours"]["note"] = f"same organ as baseline for {agree}/{total} lesions"
    return list(rows.values())


# ---- table -------------------------------------------------------------------------------------------------------


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'linker':<30} {'ms/image':>12} {'speedup':>9} {'images':>7}  note")
    for r in rows:
        print(f"{r['linker']:<30} {r['ms_per_image']:>12.1f} {r['speedup']:>8.1f}x {r['images']:>7}  "
              f"{r.get('note', '')}")


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
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--baseline-images", type=int, default=1)
    p.add_argument("--build-images", type=int, default=48)
    p.add_argument("--skip-link", action="store_true")
    p.add_argument("--skip-build", action="store_true")
    args = p.parse_args(argv)
    if not args.skip_link:
        rows = bench_link(args.size, args.masks, args.lesions, args.images, args.baseline_images)
        print_table(f"Linking: {args.size}x{args.size}, {args.masks} organ masks, {args.lesions} lesions per image",
                    rows)
    if not args.skip_build:
        print_build(*bench_build(args.build_images))


if __name__ == "__main__":
    main()
