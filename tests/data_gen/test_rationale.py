"""Seed rationales: the sentence and the fields behind it, checked against hand-written expected sentences."""

import pickle

import pytest

from data_gen import rationale
from data_gen.errors import InputError
from data_gen.types import NO_FINDING, LinkResult, SeedRationale


def _link(organ="right lung", location="right upper zone", laterality="right", zone="upper", size_mm=None,
          score=0.9, method="containment"):
    return LinkResult(organ=organ, score=score, method=method, laterality=laterality, zone=zone,
                      location=location, size_mm=size_mm)


def test_sentence_names_zone_and_organ_as_the_brief_example():
    seed = rationale.seed_rationale("nodule", _link(), "xray", (0.2, 0.1, 0.4, 0.3))
    assert seed.text == "There is a nodule in the right upper zone of the right lung."
    assert isinstance(seed, SeedRationale)
    assert (seed.lesion_class, seed.organ, seed.location, seed.modality) == (
        "nodule", "right lung", "right upper zone", "xray")
    assert (seed.laterality, seed.zone, seed.size_mm) == ("right", "upper", None)
    assert seed.box_norm == (0.2, 0.1, 0.4, 0.3)


def test_size_in_whole_millimetres_when_known():
    seed = rationale.seed_rationale("nodule", _link(size_mm=(12.3, 9.6)), "xray", (0.2, 0.1, 0.4, 0.3))
    assert seed.text == "There is a nodule in the right upper zone of the right lung, measuring about 12 x 10 mm."
    assert seed.size_mm == (12.3, 9.6)
    # sub-millimetre sizes round up to 1 mm rather than printing "0 x 0 mm"
    tiny = rationale.seed_rationale("nodule", _link(size_mm=(0.3, 0.2)), "xray", (0.2, 0.1, 0.4, 0.3))
    assert tiny.text.endswith("measuring about 1 x 1 mm.")


def test_zone_organ_names_are_not_repeated():
    # CXAS zone masks carry the zone in the organ name already
    seed = rationale.seed_rationale("mass", _link(organ="right upper zone of lung"), "xray", (0.2, 0.1, 0.4, 0.3))
    assert seed.text == "There is a mass in the right upper zone of the right lung."
    # an unpaired organ does not get a side repeated ("left lobe of the left liver" would be wrong)
    ct = rationale.seed_rationale("liver cyst", _link(organ="liver", location="left lobe of liver",
                                                      laterality="left", zone=None), "ct", (0.5, 0.4, 0.6, 0.5))
    assert ct.text == "There is a liver cyst in the left lobe of the liver."


def test_location_composed_from_laterality_and_zone_when_the_linker_gave_none():
    seed = rationale.seed_rationale("liver mass", _link(organ="liver", location="", laterality="right",
                                                        zone="lower"), "ct", (0.3, 0.5, 0.4, 0.6))
    assert seed.location == "right lower part"
    assert seed.text == "There is a liver mass in the right lower part of the liver."


def test_unknown_organ_is_handled_without_a_false_place():
    link = LinkResult(organ="unknown", score=0.0, method="none")
    seed = rationale.seed_rationale("nodule", link, "xray", (0.2, 0.1, 0.4, 0.3))
    assert seed.text == "There is a nodule; its host organ could not be determined."
    assert seed.organ == "unknown" and seed.location == ""
    with_size = rationale.seed_rationale("nodule", LinkResult("unknown", 0.0, "none", size_mm=(5.0, 5.0)), "xray",
                                         (0.2, 0.1, 0.4, 0.3))
    assert with_size.text == "There is a nodule, measuring about 5 x 5 mm; its host organ could not be determined."


@pytest.mark.parametrize("cls, expected", [
    ("aortic enlargement", "There is an aortic enlargement in the right lung."),
    ("ILD", "There is an ILD in the right lung."),
    ("Pleural effusion", "There is a pleural effusion in the right lung."),
    ("nodule/mass", "There is a nodule/mass in the right lung."),
])
def test_articles_and_case(cls, expected):
    seed = rationale.seed_rationale(cls, _link(location="", zone=None), "xray", (0.2, 0.1, 0.4, 0.3))
    assert seed.text == expected
    assert seed.lesion_class == cls  # the label itself is kept as given


def test_box_is_clipped_and_degenerate_boxes_are_errors():
    seed = rationale.seed_rationale("nodule", _link(), "xray", (-0.1, 0.2, 0.5, 1.2))
    assert seed.box_norm == (0.0, 0.2, 0.5, 1.0)
    for bad in [(0.5, 0.2, 0.5, 0.4), (0.6, 0.2, 0.5, 0.4), (1.2, 0.2, 1.5, 0.4), (0.1, 0.2, float("nan"), 0.4),
                (0.1, 0.2, 0.3)]:
        with pytest.raises(InputError) as e:
            rationale.seed_rationale("nodule", _link(), "xray", bad)
        assert e.value.reason == "bad_box" and "lesion/box" in str(e.value)
    with pytest.raises(InputError, match="negative_rationale"):
        rationale.seed_rationale(NO_FINDING, _link(), "xray", (0.1, 0.1, 0.2, 0.2))


def test_negative_rationale_names_a_few_key_structures():
    cxas_like = ["right upper zone of lung", "rib 1 left", "right lung", "heart", "left lung", "clavicle left",
                 "left lower zone of lung", "right lung"]
    seed = rationale.negative_rationale("xray", cxas_like)
    assert seed.text == "No focal lesion is seen in the right lung, left lung or heart."
    assert seed.lesion_class == NO_FINDING and seed.box_norm is None
    assert seed.organ == "none" and seed.location == ""
    assert seed.organs_examined == ("right lung", "left lung", "heart")
    assert isinstance(seed, SeedRationale)
    assert pickle.loads(pickle.dumps(seed)) == seed

    ct = rationale.negative_rationale("ct", ["spleen", "liver", "kidney_left_part of x", "aorta", "stomach",
                                             "right kidney"])
    assert ct.organs_examined == ("liver", "spleen", "stomach", "right kidney")  # reading order, at most 4

    # no key organ: whole-organ names (not lobes/zones) in the given order
    other = rationale.negative_rationale("mri", ["upper pole of femur", "femur", "pelvis"])
    assert other.text == "No focal lesion is seen in the femur or pelvis."

    empty = rationale.negative_rationale("xray", [])
    assert empty.text == "No focal lesion is seen in this image." and empty.organs_examined == ()


def test_region_phrase_merges_location_and_organ():
    assert rationale.region_phrase("right lung", "right upper zone") == "right upper zone of the right lung"
    assert rationale.region_phrase("left kidney", "") == "left kidney"
    assert rationale.region_phrase("left lower lobe of lung", "left lower lobe") == "left lower lobe of the left lung"
    assert rationale.region_phrase("unknown", "right upper zone") == "right upper zone"
    assert rationale.region_phrase("unknown", "") == ""
    assert rationale.join_words(["a", "b", "c"]) == "a, b and c"


@pytest.mark.parametrize("link, expected", [
    # the linker's location formats (data_gen/link.py): nearest fallback, unknown with a side, bilateral organs
    (LinkResult("right lung", 0.0, "nearest", location="near right upper zone"),
     "There is a nodule near the right upper zone of the right lung."),
    (LinkResult("unknown", 0.0, "none", laterality="right", location="right side", size_mm=(4.0, 5.0)),
     "There is a nodule on the right side, measuring about 4 x 5 mm; its host organ could not be determined."),
    (LinkResult("unknown", 0.0, "none", laterality="midline", location="midline"),
     "There is a nodule in the midline; its host organ could not be determined."),
    (LinkResult("ribs", 0.6, "containment", location="ribs (right side)"),
     "There is a nodule in the right side of the ribs."),
    (LinkResult("right kidney", 0.9, "containment", location="upper pole of right kidney"),
     "There is a nodule in the upper pole of the right kidney."),
    (LinkResult("right lung base", 0.9, "containment", location="right lung base"),
     "There is a nodule in the right lung base."),
])
def test_linker_location_formats_read_naturally(link, expected):
    seed = rationale.seed_rationale("nodule", link, "xray", (0.1, 0.1, 0.2, 0.2))
    assert seed.text == expected
    assert seed.location == link.location  # the record's lesion/location keeps the linker's text
