"""The Apache Beam pipeline (`pip install medclm-jax[beam]`): the same per-image function, at any scale.

    (shard key, image) --Reshuffle--> convert_image per image --GroupByKey(shard)--> finish_shard (records in plan
    order, index, summary)

DirectRunner in tests; Dataflow / Flink / Spark through the usual `--runner` pipeline options. The driver then
assembles dataset_info.json from the shard summaries exactly as the local runner does, so both give the same
output bytes.

Stopping: Ctrl-C or SIGTERM (which the command turns into `KeyboardInterrupt`) interrupts the DirectRunner's
in-process bundle where it is; Beam re-raises what a transform raised wrapped in a `RuntimeError` naming the step,
so `run_shards` re-raises the interrupt itself (and keeps Beam from logging it as a step's error with a
traceback), and the command stops with the local runner's message and status.
A shard is written under hidden temporary names and renamed only when complete (`medclm_jax.records.shards`),
so an interrupted Write leaves no shard that looks finished. A remote runner's job (Dataflow, ...) is the
service's: stopping this driver does not cancel it.
"""

from __future__ import annotations

import json
import logging
from typing import Optional, Sequence

from data_gen.runners.shards import ShardSpec


def run_shards(out_dir: str, specs: list[ShardSpec], cfg, class_vocab: dict[str, list[str]],
               pipeline_args: Sequence[str] = ()) -> None:
    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("the Beam runner needs Apache Beam: pip install 'medclm-jax[beam]'") from e

    from data_gen.pipeline import convert_image
    from data_gen.runners.shards import finish_shard, source_roots

    by_name = {s.filename: s for s in specs}
    roots = source_roots(cfg)
    cfg_json = cfg.to_json()

    class ConvertFn(beam.DoFn):
        """Builds the synthesizer once per worker and converts one image per element."""

        def setup(self):
            import ml_collections

            from data_gen import synth

            self.cfg = ml_collections.ConfigDict(json.loads(cfg_json))
            self.synthesizer = synth.get_synthesizer(self.cfg.synth)

        def process(self, element):
            shard, position, item = element
            yield shard, (position, convert_image(item, self.cfg, class_vocab, self.synthesizer))

    def write(kv):
        shard, results = kv
        ordered = [r for _, r in sorted(results, key=lambda pr: pr[0])]
        finish_shard(out_dir, by_name[shard], ordered, roots)
        return shard

    elements = [(s.filename, i, item) for s in specs for i, item in enumerate(s.items)]
    options = PipelineOptions(list(pipeline_args) or ["--runner=DirectRunner"])
    step_log = logging.getLogger("apache_beam.runners.common")  # where Beam logs what a transform raised
    step_log.addFilter(_not_an_interrupt)
    try:
        with beam.Pipeline(options=options) as p:
            _ = (
                p
                | "Images" >> beam.Create(elements)
                | "Spread" >> beam.Reshuffle()
                | "Convert" >> beam.ParDo(ConvertFn())
                | "ByShard" >> beam.GroupByKey()
                | "Write" >> beam.Map(write)
            )
    except Exception as e:
        interrupt = _interrupt_in(e)
        if interrupt is None:
            raise
        raise interrupt from None
    finally:
        step_log.removeFilter(_not_an_interrupt)


def _not_an_interrupt(record: logging.LogRecord) -> bool:
    """A logging filter: drops a record of a KeyboardInterrupt (a stop, not a step's failure)."""
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def _interrupt_in(e: BaseException) -> Optional[KeyboardInterrupt]:
    """The KeyboardInterrupt (Ctrl-C, or the command's SIGTERM) that Beam wrapped into `e`, if any."""
    seen: set[int] = set()
    cause: Optional[BaseException] = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None
