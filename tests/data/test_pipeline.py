"""The input streams (medclm_jax/data/pipeline.py, plan.py, assemble.py) on a real phantom build.

References are independent of the pipeline: the records read back one by one (`RecordSource.read`) for domains and
pools, `dataset_info.json`'s counts (written by data_gen), an uninterrupted run for restored runs, the in-process
path for the worker path, and `sharding.batch_sharding` for the global arrays.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from phantom_dataset import build_dataset, record_texts

from medclm_jax.data import batch as batch_lib
from medclm_jax.data import pipeline, plan, prompts, views
from medclm_jax.data.assemble import Preprocess, TrainBatches
from medclm_jax.data.source import RecordSource, load_dataset_info
from medclm_jax.model import presets, sharding
from medclm_jax.model import tokenizer as T
from medclm_jax.records import RecordError, schema
from medclm_jax.train import curriculum

MAX_LEN = 160
FAST = dict(min_easy_steps=0, max_easy_steps=2, medium_ramp_steps=2, max_medium_steps=3, plateau_window=2,
            hard_start=0.4, hard_max=0.5, medium_floor=0.2, easy_floor=0.1)  # adaptive reaches Hard by step ~5


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return build_dataset(tmp_path_factory, "pipeline", 24)


@pytest.fixture(scope="module")
def records(build):
    return [RecordSource(build, "train").read(i) for i in range(len(RecordSource(build, "train")))]


@pytest.fixture(scope="module")
def pre(build, records, tmp_path_factory):
    texts = record_texts(records)
    tok = T.train_tokenizer(iter(texts), vocab_size=2048, out_dir=tmp_path_factory.mktemp("pipeline_tok"))
    cfg = presets.get_model_config("tiny")
    settings = prompts.settings_for_model(cfg, tok, max_len=MAX_LEN, pretrained=False)
    info = load_dataset_info(build)
    return Preprocess(tok, views.ViewSettings(cfg.vision.image_size), settings, views.domain_vocabulary(info))


def domains(pre):
    return list(pre.domain_ids)


def curriculum_config(policy="uniform", update_every=3, **kw):
    extra = {"adaptive": curriculum.AdaptiveConfig(**FAST)} if policy == "adaptive" else {}
    return curriculum.CurriculumConfig(policy=policy, update_every=update_every, **extra, **kw)


def stream(build, pre, *, cfg=None, batch_size=8, source=None, catalog=None, state=None, mesh=None,
           process_index=0, process_count=1, **options):
    """A TrainStream over the build's train split; `options` go to InputOptions."""
    source = source or RecordSource(build, "train")
    catalog = catalog or plan.Catalog.scan(source, domains(pre))
    cfg = cfg or curriculum_config()
    state = state or curriculum.init(cfg, catalog.records(), domains=domains(pre))
    s = pipeline.TrainStream(source, catalog, pre, cfg, state, pipeline.InputOptions(batch_size=batch_size, **options),
                             mesh=mesh, process_index=process_index, process_count=process_count)
    return s, cfg, state


def run(s, cfg, state, steps, *, rng_seed=0):
    """Batches of `steps` steps, feeding the scheduler made-up losses after each (the trainer's loop)."""
    out, rng = [], np.random.default_rng(rng_seed + s.step)
    for _ in range(steps):
        b = s.next_local()
        out.append(b)
        loss = rng.uniform(0.5, 2.0, len(b.arrays["weight"]))
        mean, count = curriculum.observe(b.arrays["domain"], b.arrays["stage"], loss, b.arrays["weight"],
                                         len(state.domains))
        state = curriculum.update(cfg, state, b.step, mean, count)
        s.set_curriculum(state)
    return out, state


def same(a, b):
    assert a.step == b.step
    for k in batch_lib.SPEC:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=f"step {a.step} key {k}")


# ---------------------------------------------------------------------------------------------------------------
# The catalog and the per-process slices.


def test_catalog_has_each_records_domain_and_pool_and_the_builds_counts(build, pre, records):
    source = RecordSource(build, "train")
    cat = plan.Catalog.scan(source, domains(pre))
    assert [cat.domains[d] for d in cat.domain] == [schema.text(r, schema.DOMAIN) for r in records]
    assert [schema.POOLS[p] for p in cat.pool] == [schema.text(r, schema.CURRICULUM_POOL) for r in records]
    info = load_dataset_info(build)
    assert cat.records() == curriculum.records_from_dataset_info(info, "train")
    halves = [plan.Catalog.scan(source, domains(pre), indices=range(p, len(source), 2)) for p in (0, 1)]
    merged = plan.Catalog.merge(halves)
    np.testing.assert_array_equal(merged.domain, cat.domain)
    np.testing.assert_array_equal(merged.pool, cat.pool)


def test_catalog_cache_is_used_only_for_the_same_split(build, pre, tmp_path, monkeypatch):
    source = RecordSource(build, "train")
    path = str(tmp_path / "catalog.npz")
    first = pipeline.catalog_for(source, domains(pre), cache=path)
    monkeypatch.setattr(plan.Catalog, "scan", classmethod(lambda *a, **k: pytest.fail("scanned again")))
    again = pipeline.catalog_for(source, domains(pre), cache=path)
    np.testing.assert_array_equal(again.domain, first.domain)
    monkeypatch.undo()
    other = pipeline.catalog_for(RecordSource(build, "val"), domains(pre), cache=path)
    assert len(other.domain) == len(RecordSource(build, "val"))


def test_two_processes_slices_of_each_pool_are_disjoint_and_cover_it(build, pre, records):
    """Per (domain, pool): the records process p draws in the pool's first epoch are its positions p, p + 2, ...;
    together they are the pool, each once."""
    drawn = {}
    for p in (0, 1):
        s, cfg, state = stream(build, pre, process_index=p, process_count=2, batch_size=16)
        batches, _ = run(s, cfg, state, 12)
        s.close()
        seq = collections.defaultdict(list)
        for b in batches:
            for i, st, d in zip(b.arrays["example_id"], b.arrays["stage"], b.arrays["domain"]):
                rec = records[i]
                assert pre.domain_ids[schema.text(rec, schema.DOMAIN)] == d
                assert schema.STAGES[st] in schema.pool_stages(schema.text(rec, schema.CURRICULUM_POOL))
                seq[(int(d), int(plan.STAGE_POOL[st]))].append(int(i))
        drawn[p] = seq
    pools = collections.defaultdict(set)
    for i, r in enumerate(records):
        pools[(pre.domain_ids[schema.text(r, schema.DOMAIN)], plan.POOL_IDS[schema.text(r, schema.CURRICULUM_POOL)])
              ].add(i)
    checked = 0
    for key, members in pools.items():
        n = len(members)
        first = {p: drawn[p][key][:len(range(p, n, 2))] for p in (0, 1)}
        if any(len(first[p]) < len(range(p, n, 2)) for p in (0, 1)):
            continue  # not drawn often enough in 12 steps
        assert not set(first[0]) & set(first[1]), key
        assert sorted(first[0] + first[1]) == sorted(members), key
        checked += 1
    assert checked >= 8, f"only {checked} pools were drawn through an epoch"


def test_validation_gives_every_example_in_three_stages_once_across_processes(build, pre):
    source = RecordSource(build, "train")  # the largest split of the build: 33 records, 99 examples
    seen, lengths = [], []
    for p in (0, 1):
        val = pipeline.ValStream(source, pre, pipeline.InputOptions(batch_size=8), process_index=p, process_count=2)
        batches = list(val)
        lengths.append(len(batches))
        assert len(batches) == len(val)
        for b in batches:
            batch_lib.validate_batch(b.arrays)
            real = b.arrays["weight"] == 1
            seen += list(zip(b.arrays["example_id"][real].tolist(), b.arrays["stage"][real].tolist()))
        assert val.stats()["kept"] == int(sum((b.arrays["weight"] == 1).sum() for b in batches))
    assert lengths[0] == lengths[1] == -(-3 * len(source) // 8)
    assert sorted(seen) == [(i, s) for i in range(len(source)) for s in range(3)]
    cat = plan.Catalog.scan(source, domains(pre))
    val = pipeline.ValStream(source, pre, pipeline.InputOptions(batch_size=8), stages="pool", catalog=cat,
                             process_index=0, process_count=1)
    pairs = [(i, s) for b in val for i, s, w in zip(b.arrays["example_id"], b.arrays["stage"], b.arrays["weight"])
             if w]
    assert pairs == [(i, s) for i in range(len(source))
                     for s in ((2,) if cat.pool[i] == plan.POOL_IDS["hard"] else (0, 1))]


# ---------------------------------------------------------------------------------------------------------------
# Determinism, the scheduler, checkpoints.


@pytest.mark.parametrize("k", [5, 6])  # inside a window, at a window's first step (update_every=3)
def test_restored_stream_continues_with_the_identical_batches(build, pre, k):
    s, cfg, state = stream(build, pre, cfg=curriculum_config("adaptive"))
    full, _ = run(s, cfg, state, 14)
    s.close()
    stages = [set(b.arrays["stage"].tolist()) for b in full]
    assert 2 not in stages[0] and any(2 in x for x in stages[9:]), "the scheduler's mix must change in the run"

    s, cfg, state = stream(build, pre, cfg=curriculum_config("adaptive"))
    first, state = run(s, cfg, state, k)
    saved, saved_sched = json.loads(json.dumps(s.get_state())), state.to_json()
    s.close()
    restored_state = curriculum.CurriculumState.from_json(saved_sched)
    s2, _, _ = stream(build, pre, cfg=curriculum_config("adaptive"), state=restored_state)
    s2.set_state(saved)
    rest, _ = run(s2, cfg, restored_state, 14 - k)
    s2.close()
    for a, b in zip(full, first + rest):
        same(a, b)


def test_the_mix_is_read_once_per_window_plan_ahead_windows_early(build, pre):
    """A scheduler update at step 4 (update_every 2) reaches step 6 with plan_ahead=1, step 4 with plan_ahead=0."""
    hard_from = {}
    for ahead in (0, 1):
        s, cfg, state = stream(build, pre, cfg=curriculum_config("adaptive", 2), plan_ahead=ahead)
        hard = dict(state.policy_state, medium_step=np.zeros(len(state.domains), np.int64),
                    hard_step=np.zeros(len(state.domains), np.int64), hard_budget=np.full(len(state.domains), 0.5))
        hard_state = curriculum.CurriculumState(state.policy, state.domains, state.records, 0, state.loss_sum,
                                                state.loss_weight, hard)
        got = []
        for step in range(10):
            if step == 4:
                s.set_curriculum(hard_state)
            got.append(bool((s.next_local().arrays["stage"] == 2).any()))
        s.close()
        hard_from[ahead] = got.index(True)
        assert all(got[hard_from[ahead]:])
    assert hard_from == {0: 4, 1: 6}


def test_fixed_policy_boundaries_hold_at_their_exact_step(build, pre):
    """Probabilities are evaluated at each step of the window with its snapshot: a boundary inside a window holds."""
    cfg = curriculum_config("fixed", 4, fixed=curriculum.FixedConfig(boundaries=(5,),
                                                                     mixes=((1.0, 0.0, 0.0), (0.0, 0.0, 1.0))))
    s, _, _ = stream(build, pre, cfg=cfg)
    got = [set(s.next_local().arrays["stage"].tolist()) for _ in range(8)]
    s.close()
    assert got == [{0}] * 5 + [{2}] * 3


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_as_this_process(build, pre):
    s, cfg, state = stream(build, pre, cfg=curriculum_config("adaptive"))
    expected, _ = run(s, cfg, state, 7)
    s.close()
    board = plan.PlanBoard(shared=True)
    fn = pickle.loads(pickle.dumps(TrainBatches(s.source, pre, board, window_steps=3, on_error="raise")))
    assert fn.board.directory == board.directory and not fn.board._plans  # the plans travel as files
    board.close()
    assert not os.path.exists(board.directory)
    s, cfg, state = stream(build, pre, cfg=curriculum_config("adaptive"), workers=2, threads=1)
    got, _ = run(s, cfg, state, 7)
    s.close()
    for a, b in zip(expected, got):
        same(a, b)


# ---------------------------------------------------------------------------------------------------------------
# Bad records and dropped examples.


def _corrupt_record(build, tmp_path, index):
    """A copy of the build with one byte of record `index`'s payload flipped; returns (dir, shard path, offset)."""
    out = str(tmp_path / "corrupt")
    shutil.copytree(build, out)
    src = RecordSource(out, "train")
    path, offset, length = src.locate(index)
    with open(path, "r+b") as f:
        f.seek(offset + length // 2)
        byte = f.read(1)
        f.seek(offset + length // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    return out, path, offset


def test_corrupt_record_raises_naming_the_shard_and_offset_or_is_never_planned(build, pre, tmp_path):
    out, path, offset = _corrupt_record(build, tmp_path, 7)
    source = RecordSource(out, "train")
    with pytest.raises(RecordError) as e:
        plan.Catalog.scan(source, domains(pre))
    assert e.value.path == path and e.value.offset == offset and e.value.reason == "tfrecord_crc"
    assert os.path.basename(path) in str(e.value) and f"byte offset {offset}" in str(e.value)
    cat = plan.Catalog.scan(source, domains(pre), on_error="skip")
    assert cat.unusable == {"tfrecord_crc": 1} and cat.domain[7] == -1
    s, cfg, state = stream(build, pre, source=source, catalog=cat, on_error="skip")
    batches, _ = run(s, cfg, state, 10)
    assert all(7 not in b.arrays["example_id"] for b in batches)
    assert s.stats()["unusable:tfrecord_crc"] == 1 and "dropped" not in s.stats()
    s.close()


def test_record_corrupted_after_planning_becomes_weight0_rows_or_raises(build, pre, tmp_path):
    clean_source = RecordSource(build, "train")
    cat = plan.Catalog.scan(clean_source, domains(pre))
    s, cfg, state = stream(build, pre, source=clean_source, catalog=cat)
    clean, _ = run(s, cfg, state, 8)
    s.close()
    victim = int(clean[2].arrays["example_id"][0])
    out, path, offset = _corrupt_record(build, tmp_path, victim)

    s, cfg, state = stream(build, pre, source=RecordSource(out, "train"), catalog=cat)
    with pytest.raises(RecordError) as e:
        run(s, cfg, state, 8)
    assert e.value.path == path and e.value.offset == offset and "on_error='skip'" in str(e.value)
    s.close()

    s, cfg, state = stream(build, pre, source=RecordSource(out, "train"), catalog=cat, on_error="skip")
    skipped, _ = run(s, cfg, state, 8)
    hits = 0
    for a, b in zip(clean, skipped):
        batch_lib.validate_batch(b.arrays)
        bad = a.arrays["example_id"] == victim
        hits += int(bad.sum())
        assert (b.arrays["weight"] == np.where(bad, 0, 1)).all() and (b.arrays["example_id"][bad] == -1).all()
        for k in batch_lib.SPEC:  # every other row is the clean run's
            np.testing.assert_array_equal(a.arrays[k][~bad], b.arrays[k][~bad])
    assert s.stats()["dropped:tfrecord_crc"] == hits >= 1 and s.stats()["padding"] == hits
    assert s.stats()["kept"] + hits == s.stats()["examples"] == 8 * 8
    s.close()


def test_examples_that_do_not_fit_max_len_are_counted_padding_rows(build, pre):
    short = Preprocess(pre.tokenizer, pre.view, prompts.PromptSettings("trained", 20), pre.domain_ids)
    s, cfg, state = stream(build, short, on_error="raise")  # too long is not corruption: never raised
    batches, _ = run(s, cfg, state, 6)
    s.close()
    stats = s.stats()
    dropped = sum(v for k, v in stats.items() if k.startswith("dropped:"))
    assert dropped == stats["dropped"] > 0 and set(k for k in stats if k.startswith("dropped:")) <= {
        "dropped:answer_truncated", "dropped:no_room_for_reasoning", "dropped:prompt_too_long"}
    assert sum(int((b.arrays["weight"] == 0).sum()) for b in batches) == dropped
    assert stats["kept"] + dropped == stats["examples"] == 6 * 8 and stats["reasoning_truncated"] > 0
    for b in batches:
        batch_lib.validate_batch(b.arrays)
        assert b.arrays["weight"].shape == (8,)


# ---------------------------------------------------------------------------------------------------------------
# Global arrays.


def test_pixels_cross_processes_as_uint8_and_scale_exactly_as_the_view_does():
    from medclm_jax.data import assemble, images

    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    model = images.to_model_range(pixels)
    np.testing.assert_array_equal(assemble.to_pixels(model), pixels)
    np.testing.assert_array_equal(assemble.from_pixels(pixels), model)  # bit for bit


@pytest.mark.parametrize("shape", [{"data": 8}, {"data": 2, "fsdp": 4}])
def test_global_batch_has_the_mesh_batch_sharding(build, pre, shape):
    assert jax.device_count() == 8
    mesh = sharding.make_mesh(shape)
    s, cfg, state = stream(build, pre, mesh=mesh)
    ref, _, _ = stream(build, pre)
    b, local = next(s), ref.next_local()
    s.close()
    ref.close()
    want = sharding.batch_sharding(mesh)
    assert set(b.arrays) == set(batch_lib.SPEC) - set(pipeline.HOST_KEYS)
    for k, v in b.arrays.items():
        assert isinstance(v, jax.Array) and v.sharding.is_equivalent_to(want, v.ndim), k
        assert v.shape == local.arrays[k].shape and v.dtype == local.arrays[k].dtype, k
        np.testing.assert_array_equal(np.asarray(v), local.arrays[k])  # the image scaled on the devices too
    assert len(b.arrays["image"].addressable_shards) == 8
    assert b.arrays["image"].addressable_shards[0].data.shape[0] == 1
    np.testing.assert_array_equal(b.host["example_id"], local.arrays["example_id"])


# ---------------------------------------------------------------------------------------------------------------
# What the workers import, the inspection command, the benchmark script.


def test_worker_side_modules_import_no_jax():
    """Grain workers unpickle `assemble` and `plan` (spawned processes): they must not pay for importing jax."""
    code = ("import sys; import medclm_jax.data.assemble, medclm_jax.data.plan; "
            "sys.exit(int(any(m == 'jax' or m.startswith(('jax.', 'flax')) for m in sys.modules)))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_inspect_batch_writes_the_three_views_with_their_decoded_texts(build, tmp_path, capsys):
    from PIL import Image

    from medclm_jax.commands import inspect_batch

    out = tmp_path / "views.png"
    assert inspect_batch.main(["--data", build, "--model", "tiny", "--records", "2", "--tile", "96",
                               "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("easy |") == printed.count("medium |") == printed.count("hard |") == 2
    assert "target: Reasoning:" in printed and "target: Answer:" in printed and "<eos>" in printed
    with Image.open(out) as im:
        assert im.width == 3 * 96 + 2 * 4 and im.height > 2 * 96
    assert inspect_batch.main(["--data", build, "--model", "tiny", "--stream", "--records", "3", "--tile", "64",
                               "--loc-tokens", "--out", str(tmp_path / "batch.png")]) == 0
    assert (tmp_path / "batch.png").is_file()


def test_input_benchmark_runs(build, capsys):
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("bench_input", os.path.join(root, "benchmarks", "input.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--data", build, "--sizes", "64", "--workers", "0", "--steps", "1", "--batch", "4",
                       "--preset", ""]) == 0
    assert "| 64 px (small) | 0 |" in capsys.readouterr().out
