"""medclm_jax.records.schema: the keys both halves use, checked on records as written and as read back."""

import numpy as np
import pytest

from medclm_jax.records import RecordError, decode_example, encode_example, schema
from record_factory import make_record


def _record(**changes):
    return make_record(**changes)


def test_a_complete_record_passes_as_written_and_as_read_back():
    rec = _record()
    schema.check_record(rec)
    schema.check_record(decode_example(encode_example(rec)))


def test_negative_record_has_an_empty_box():
    schema.check_record(_record(**{"lesion/box": np.zeros(0, np.float32), "lesion/class": schema.NO_FINDING}))


def test_missing_and_unknown_keys_are_named():
    rec = _record()
    del rec["medium/cot"]
    rec["medium/cott"] = "typo"
    with pytest.raises(RecordError, match=r"missing \['medium/cot'\], unknown \['medium/cott'\]") as e:
        schema.check_record(rec, where="train-00000-of-00001.tfrecord record 3")
    assert "record 3" in str(e.value) and e.value.reason == "schema_mismatch"


@pytest.mark.parametrize("box", [[0.5, 0.2, 0.1, 0.6], [0.1, 0.2, 1.5, 0.6], [0.1, 0.2, 0.3], [np.nan, 0, 1, 1]])
def test_bad_boxes_are_refused(box):
    with pytest.raises(RecordError) as e:
        schema.check_record(_record(**{"lesion/box": np.asarray(box, np.float32)}))
    assert e.value.field == "lesion/box"


def test_a_list_where_one_value_belongs_is_refused():
    with pytest.raises(RecordError, match="expected one value, got 2") as e:
        schema.check_record(_record(**{"image/height": [64, 65]}))
    assert e.value.field == "image/height"


def test_domain_of_slugs_the_class():
    assert schema.domain_of("Pleural effusion", "xray") == "pleural_effusion_xray"
    assert schema.domain_of("ILD / fibrosis", "ct") == "ild_fibrosis_ct"
    assert schema.domain_of("???", "ct") == "unknown_ct"


def test_pools_map_to_stages():
    assert schema.pool_stages("easy_medium") == ("easy", "medium")
    assert schema.pool_stages("hard") == ("hard",)
    with pytest.raises(RecordError, match="is not one of"):
        schema.pool_stages("medium")


def test_stage_keys():
    assert [schema.question_key(s) for s in schema.STAGES] == ["easy/question", "medium/question", "hard/question"]
    with pytest.raises(KeyError):
        schema.cot_key("hard")


def test_describe_lists_every_key_once():
    d = schema.describe()
    listed = d["keys"] + list(d["extra_keys"])
    assert sorted(listed) == sorted(schema.KEYS) and len(listed) == len(set(listed)) == 29
    assert d["version"] == schema.SCHEMA_VERSION


def test_text_reads_decoded_bytes():
    rec = decode_example(encode_example(_record()))
    assert schema.text(rec, schema.DOMAIN) == "nodule_xray"


def test_record_errors_keep_their_location_across_processes():
    import pickle

    e = RecordError("data CRC mismatch", path="train-00000-of-00002.tfrecord", offset=1234, field="lesion/box",
                    reason="tfrecord_crc")
    back = pickle.loads(pickle.dumps(e))
    assert (str(back), back.path, back.offset, back.field, back.reason) == (
        str(e), "train-00000-of-00002.tfrecord", 1234, "lesion/box", "tfrecord_crc")
