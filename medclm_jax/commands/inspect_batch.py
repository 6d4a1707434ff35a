"""`medclm inspect-batch`: a PNG grid of what the model will see, each view with its prompt and target.

    medclm inspect-batch --data DATA --model small --out views.png             # Easy | Medium | Hard per record
    medclm inspect-batch --data DATA --model small --stream --out batch.png    # the training stream's first batch
    medclm inspect-batch --data DATA --model paligemma_3b_224 --tokenizer CKPT --loc-tokens --out views.png

Default: one row per record of the `easy_medium` pool (the first `--records` of the split from `--start`): its Easy
view (the box drawn), its Medium view (clean image, same question family, the CoT still cites the box), and the
Hard view of a record from the same domain's `hard` pool (Hard trains on images kept apart; `--same-image` asks
the Hard question of the same record, as the validation stream does). `--stream`: the rows of the training
stream's first batch (`data/pipeline.py`, uniform stage mix, `--seed`), in batch order.

Every tile is made by the pipeline's own code (`views.make_view`, `prompts.encode`, the batch contract) and its
text is *decoded from the token ids*, split by `span` into the prompt and the target, so it shows exactly what
the model reads and learns: location tokens, a reasoning cut to fit `--max-len`, the end token. Pixels are the
model's `image_size`, enlarged (nearest neighbour) to `--tile` pixels. The texts are also printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
from typing import Any, Optional, Sequence

import numpy as np

from medclm_jax.model.presets import TRAINED_FROM_SCRATCH


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medclm inspect-batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a `medclm-data build` output folder")
    p.add_argument("--split", default="train")
    p.add_argument("--model", default="small", help="model preset: image size, resize family, prompt layout")
    p.add_argument("--tokenizer", default=None, help="folder with tokenizer.json / tokenizer.model (default for "
                   f"{', '.join(TRAINED_FROM_SCRATCH)}: one trained on the split's text, in a temporary folder)")
    p.add_argument("--max-len", type=int, default=256, help="text length T")
    p.add_argument("--loc-tokens", action="store_true", help="boxes in the CoT as <locYYYY> tokens")
    p.add_argument("--records", type=int, default=4, help="rows (default mode) or batch size (--stream)")
    p.add_argument("--start", type=int, default=0, help="first record of the split considered")
    p.add_argument("--same-image", action="store_true", help="Hard view of the same record, not a hard-pool one")
    p.add_argument("--stream", action="store_true", help="the training stream's first batch instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile", type=int, default=256, help="tile side in pixels")
    p.add_argument("--out", default="batch.png")
    return p


def _tokenizer(args: argparse.Namespace, cfg: Any, source: Any, scratch: str) -> Any:
    from medclm_jax.model import tokenizer as T

    if args.tokenizer:
        return T.load_tokenizer(args.tokenizer)
    if args.model not in TRAINED_FROM_SCRATCH:
        raise SystemExit(f"medclm inspect-batch: --model {args.model} is pretrained: pass its checkpoint's "
                         "tokenizer with --tokenizer DIR")
    texts = (value[0].decode() for record in source.iter_records() for key, value in record.items()
             if key.endswith(("/question", "/cot", "/answer")))
    return T.train_tokenizer(texts, vocab_size=cfg.text.vocab_size, out_dir=scratch)


def _readable(tok: Any, ids: Sequence[int], image_id: int) -> str:
    """Decoded ids, special tokens shown, a run of image placeholders written once with its count."""
    out, run = [], []
    for i in list(ids) + [None]:
        if i is not None and i == image_id:
            run.append(i)
            continue
        if run:
            out.append(f"[{len(run)} x <image>]")
            run = []
        if i is not None:
            out.append(tok.decode([i], skip_special=False))
    return "".join(out)


def row_texts(tok: Any, row: dict[str, np.ndarray], image_id: int) -> tuple[str, str]:
    """(prompt, target) of one batch row, decoded from `text` by `span` (0 prompt, > 0 target) and `mask_input`."""
    real = row["mask_input"] == 1
    prompt = row["text"][real & (row["span"] == 0)].tolist()
    target = row["text"][real & (row["span"] > 0)].tolist()
    return _readable(tok, prompt, image_id), _readable(tok, target, image_id)


def tile(row: dict[str, np.ndarray], title: str, prompt: str, target: str, size: int) -> Any:
    """One tile: the model's image enlarged to `size` px, the title, the prompt and the target wrapped below."""
    from PIL import Image, ImageDraw, ImageFont

    pixels = np.clip((np.asarray(row["image"]) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    image = Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST)
    font = ImageFont.load_default(size=11)
    width = max(20, size // 6)
    lines = [title] + textwrap.wrap(f"prompt: {prompt}", width) + textwrap.wrap(f"target: {target}", width)
    height = size + 14 * len(lines) + 8
    canvas = Image.new("RGB", (size, height), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((3, size + 4 + 14 * k), line, fill=(160, 0, 0) if k == 0 else (0, 0, 0), font=font)
    return canvas


def grid(tiles: Sequence[Any], columns: int) -> Any:
    from PIL import Image

    w = max(t.width for t in tiles)
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    heights = [max(t.height for t in r) for r in rows]
    out = Image.new("RGB", (w * columns + 4 * (columns - 1), sum(heights) + 4 * (len(rows) - 1)), (200, 200, 200))
    y = 0
    for r, h in zip(rows, heights):
        for c, t in enumerate(r):
            out.paste(t, (c * (w + 4), y))
        y += h + 4
    return out


def _view_rows(args, source, catalog, pre) -> list[tuple[dict, str]]:
    """(row, title) for the default mode: Easy, Medium, Hard per record."""
    from medclm_jax.data import plan
    from medclm_jax.records import schema

    members = catalog.members()
    chosen = [i for i in range(args.start, len(source)) if catalog.pool[i] == plan.POOL_IDS["easy_medium"]]
    out = []
    for i in chosen[:args.records]:
        record = source.read(i)
        hard_index = i
        if not args.same_image:
            partners = members.get((int(catalog.domain[i]), plan.POOL_IDS["hard"]))
            hard_index = int(partners[0]) if partners is not None else -1
        for stage, index in (("easy", i), ("medium", i), ("hard", hard_index)):
            if index < 0:
                out.append((pre.padding_row(), f"hard | {catalog.domains[catalog.domain[i]]} | no hard-pool record"))
                continue
            rec = record if index == i else source.read(index)
            row, tokens = pre.row(rec, stage, index, check_pool=not args.same_image)
            cut = f" | reasoning cut {tokens.reasoning_cut} tok" if tokens.reasoning_cut else ""
            out.append((row, f"{stage} | {schema.text(rec, schema.DOMAIN)} | record {index}{cut}"))
    return out


def _stream_rows(args, source, catalog, pre) -> list[tuple[dict, str]]:
    from medclm_jax.data import pipeline
    from medclm_jax.records import schema
    from medclm_jax.train import curriculum

    cfg = curriculum.CurriculumConfig(policy="uniform", update_every=1)
    state = curriculum.init(cfg, catalog.records(), domains=list(catalog.domains))
    options = pipeline.InputOptions(batch_size=args.records, seed=args.seed, on_error="skip")
    with pipeline.TrainStream(source, catalog, pre, cfg, state, options, process_index=0, process_count=1) as s:
        batch = s.next_local()
    out = []
    for j in range(args.records):
        row = {k: v[j] for k, v in batch.arrays.items()}
        stage = schema.STAGES[int(row["stage"])]
        title = f"{stage} | {catalog.domains[int(row['domain'])]} | record {int(row['example_id'])}"
        out.append((row, title + (" | padding (weight 0)" if row["weight"] == 0 else "")))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from medclm_jax.data import pipeline, prompts, views
    from medclm_jax.data.assemble import Preprocess
    from medclm_jax.data.source import RecordSource, load_dataset_info
    from medclm_jax.model import presets

    cfg = presets.get_model_config(args.model)
    info = load_dataset_info(args.data)
    domains = views.domain_vocabulary(info)
    source = RecordSource(args.data, args.split, on_error="skip")
    with tempfile.TemporaryDirectory(prefix="medclm-tok-") as scratch:
        tok = _tokenizer(args, cfg, source, scratch)
    settings = prompts.settings_for_model(cfg, tok, max_len=args.max_len,
                                          pretrained=args.model not in TRAINED_FROM_SCRATCH)
    pre = Preprocess(tok, views.ViewSettings(cfg.vision.image_size, cfg.family, args.loc_tokens), settings, domains)
    catalog = pipeline.catalog_for(source, list(domains), on_error="skip")
    rows = (_stream_rows if args.stream else _view_rows)(args, source, catalog, pre)
    if not rows:
        print(f"medclm inspect-batch: no easy_medium record in split {args.split!r} from record {args.start}",
              file=sys.stderr)
        return 2
    tiles = []
    for row, title in rows:
        prompt, target = row_texts(tok, row, cfg.image_token_id)
        print(f"{title}\n  prompt: {prompt}\n  target: {target}")
        tiles.append(tile(row, title, prompt, target, args.tile))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    grid(tiles, 3).save(args.out)
    print(f"wrote {args.out} ({len(tiles)} views, {cfg.vision.image_size} px model input shown at {args.tile} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
