"""The Apache Beam pipeline (`pip install medclm-jax[beam]`): the same per-image function, at any scale.

    (shard key, image) --Reshuffle--> convert_image per image --GroupByKey(shard)--> finish_shard (records in plan
    order, index, summary)

DirectRunner in tests; Dataflow / Flink / Spark through the usual `--runner` pipeline options. The driver then
assembles dataset_info.json from the shard summaries exactly as the local runner does, so both give the same
output bytes.
"""

from __future__ import annotations

import json
from typing import Sequence

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
    with beam.Pipeline(options=options) as p:
        _ = (
            p
            | "Images" >> beam.Create(elements)
            | "Spread" >> beam.Reshuffle()
            | "Convert" >> beam.ParDo(ConvertFn())
            | "ByShard" >> beam.GroupByKey()
            | "Write" >> beam.Map(write)
        )
