"""CoT-QA synthesis: the template backend, reply parsing/validation, and the LLM backend over loopback HTTP.

The answerability checks use hand-written ground truth (which lesion lies where), not the backend's own helpers.
The LLM tests run a small OpenAI-compatible server (http.server in a thread, ephemeral port) that returns
scripted replies and records every request.
"""

import base64
import concurrent.futures
import contextlib
import dataclasses
import http.server
import io
import json
import pickle
import re
import threading
import time

import ml_collections
import numpy as np
import pytest
from local_http import JSONHandler, serve
from PIL import Image

from data_gen import synth
from data_gen.errors import ConfigError
from data_gen.rationale import negative_rationale, seed_rationale
from data_gen.synth import phrasebook, reply
from data_gen.synth.scene import Scene
from data_gen.synth.templates import TemplateSynthesizer, bank
from data_gen.types import NO_FINDING, CurriculumQA, LinkResult, SynthInput
from medclm_jax.records.boxes import CANONICAL_BOX_RE, format_box

VOCAB = ["nodule", "mass", "pleural effusion", "consolidation", "pneumothorax", NO_FINDING]
KEYS = [f"img{i:03d}:0" for i in range(80)]


def _seed(cls, organ, location, box, modality="xray", size_mm=None):
    link = LinkResult(organ=organ, score=0.9, method="containment", location=location, size_mm=size_mm)
    return seed_rationale(cls, link, modality, box)


NODULE = _seed("nodule", "right lung", "right upper zone", (0.21, 0.18, 0.33, 0.29), size_mm=(12.0, 10.0))
EFFUSION = _seed("pleural effusion", "left lung", "left lower zone", (0.55, 0.62, 0.9, 0.88))
NODULE_LEFT = _seed("nodule", "left lung", "left upper zone", (0.6, 0.2, 0.68, 0.27))
# hand-written ground truth: the places (as a reader would name them) of each lesion of the multi-lesion image
PLACES = {
    id(NODULE): ("right upper zone of the right lung", "right lung"),
    id(EFFUSION): ("left lower zone of the left lung", "left lung"),
    id(NODULE_LEFT): ("left upper zone of the left lung", "left lung"),
}
MULTI = [NODULE, EFFUSION, NODULE_LEFT]


def _single(key="img:0", seed=NODULE, vocab=VOCAB):
    return SynthInput(seed=seed, image_lesions=[seed], class_vocab=list(vocab), key=key)


def _template(seed=0):
    return synth.get_synthesizer({"backend": "template", "seed": seed})


# ---- templates: determinism and variety ------------------------------------------------------------------------
def test_same_key_same_qa_across_instances_and_pickling():
    a, b = _template(), pickle.loads(pickle.dumps(_template()))
    for key in KEYS[:10]:
        qa = a.synthesize(_single(key))
        assert qa == b.synthesize(_single(key))
        assert qa.backend == "template"
    assert a.stats["template"] == 10


def test_different_keys_and_seeds_give_different_paraphrases():
    syn = _template()
    for stage in ("easy", "medium", "hard"):
        questions = {getattr(syn.synthesize(_single(k)), stage).question for k in KEYS}
        assert len(questions) >= 8, (stage, questions)
    cots = {syn.synthesize(_single(k)).easy.cot for k in KEYS}
    assert len(cots) >= 20
    other_seed = _template(seed=1)
    differing = sum(syn.synthesize(_single(k)) != other_seed.synthesize(_single(k)) for k in KEYS[:20])
    assert differing >= 15


@pytest.mark.parametrize("modality", ["xray", "ct", "mri", "generic"])
def test_paraphrase_banks_hold_at_least_eight_questions_per_stage(modality):
    for stage in ("easy", "medium", "hard"):
        kinds = {k for (s, k) in phrasebook.QUESTIONS if s == stage}
        wordings = {q for k in kinds for q in bank(stage, k, modality)}
        assert len(wordings) >= 8 * 2, (stage, modality, len(wordings))
        assert len(bank(stage, "class", modality)) >= 8
        assert len(bank(stage, "closed", modality)) >= 6
    assert all(len(v["all"]) >= 3 for v in (phrasebook.COT_MODALITY, phrasebook.COT_ANATOMY))


# ---- templates: the box, the CoT walk, answer types ------------------------------------------------------------
def test_easy_medium_cot_cites_the_canonical_box_and_hard_has_none():
    syn = _template()
    box_text = format_box(NODULE.box_norm)
    assert box_text == "[0.21, 0.18, 0.33, 0.29]"
    for key in KEYS:
        qa = syn.synthesize(_single(key))
        for view in (qa.easy, qa.medium):
            boxes = CANONICAL_BOX_RE.findall(view.cot)
            assert boxes == [("0.21", "0.18", "0.33", "0.29")], view.cot
            # modality -> anatomy -> location (box) -> finding -> answer
            cot = view.cot.lower()
            i_mod = min(cot.find(w) for w in ("radiograph", "x-ray", "film") if w in cot)
            i_organ = cot.find("right lung")
            i_box = cot.find(box_text)
            i_finding = cot.find("nodule", i_box)
            assert 0 <= i_mod < i_organ < i_box < i_finding, view.cot
            assert "12 x 10 mm" in view.cot
        assert qa.hard.cot == ""
        for view in (qa.medium, qa.hard):  # no view but Easy refers to a box
            assert not re.search(r"\bbox|highlight|outlined|marked", view.question, re.I), view.question
            assert not CANONICAL_BOX_RE.search(view.question)
        for view in (qa.easy, qa.medium, qa.hard):
            assert view.answer_type == ("closed" if view.answer in ("yes", "no") else "open")
            assert len(view.answer.split()) <= 8  # "right upper zone of the right lung" at most


def test_unknown_organ_still_cites_the_box_without_naming_a_place():
    seed = _seed("mass", "unknown", "", (0.4, 0.4, 0.5, 0.5), modality="ct")
    syn = _template()
    for key in KEYS[:30]:
        qa = syn.synthesize(_single(key, seed=seed))
        assert format_box(seed.box_norm) in qa.easy.cot and format_box(seed.box_norm) in qa.medium.cot
        text = " ".join([qa.easy.question, qa.easy.cot, qa.medium.question, qa.medium.cot, qa.hard.question])
        assert "unknown" not in text and "the ." not in text and "in the ?" not in text
        assert "CT" in qa.easy.cot


def _asked_class(question):
    found = [c for c in ("pleural effusion", "nodule", "mass", "consolidation", "pneumothorax")
             if re.search(rf"\b{c}\b", question.lower())]
    return found[0] if found else None


def _asked_place(question):
    places = sorted({p for ps in PLACES.values() for p in ps}, key=len, reverse=True)
    return next((p for p in places if p in question.lower()), None)


def _check_answerable(view, lesions):
    """Independent check: the view's answer is right for the image, given what its question names."""
    cls, place = _asked_class(view.question), _asked_place(view.question)
    in_place = [s for s in lesions if place is None or place in PLACES[id(s)]]
    if view.answer_type == "closed":  # "is there a nodule (in <place>)?" or "is there any abnormality?"
        expected = "yes" if any(cls is None or s.lesion_class == cls for s in in_place) else "no"
        assert view.answer == expected, (view.question, view.answer)
    elif cls is not None:  # "where is the nodule?" -> every nodule's place
        for s in lesions:
            if s.lesion_class == cls:
                assert any(p in view.answer for p in PLACES[id(s)]), (view.question, view.answer)
    else:  # "what is in <place>?" / "what does this image show?" -> every class there, nothing else
        expected = {s.lesion_class for s in in_place}
        named = {c for c in ("pleural effusion", "nodule") if c in view.answer}
        assert named == expected, (view.question, view.answer)


def test_every_medium_and_hard_question_is_answerable_on_a_multi_lesion_image():
    syn = _template()
    kinds = set()
    for key in KEYS:
        for i, target in enumerate(MULTI):
            qa = syn.synthesize(SynthInput(seed=target, image_lesions=MULTI, class_vocab=VOCAB, key=f"{key}:{i}"))
            for view in (qa.medium, qa.hard):
                _check_answerable(view, MULTI)
                kinds.add((view.answer_type, _asked_class(view.question) is not None,
                           _asked_place(view.question) is not None))
            assert qa.easy.answer in (target.lesion_class, "yes", "no", PLACES[id(target)][0])
    # the set exercised open whole-image, open by class, open by place and closed questions
    assert {("open", False, False), ("open", True, False), ("open", False, True), ("closed", True, True)} <= kinds
    whole = [syn.synthesize(SynthInput(NODULE, MULTI, VOCAB, k)).hard for k in KEYS]
    assert any(v.answer == "nodule and pleural effusion" for v in whole)


def test_a_nearest_fallback_lesion_is_never_asked_about_as_inside_that_organ():
    near = seed_rationale("nodule", LinkResult("right lung", 0.0, "nearest", location="near right lung"), "xray",
                          (0.05, 0.3, 0.1, 0.35))
    inside = _seed("pleural effusion", "right lung", "", (0.1, 0.6, 0.4, 0.8))
    syn = _template()
    seen = 0
    for key in KEYS:
        for target in (near, inside):
            qa = syn.synthesize(SynthInput(target, [near, inside], VOCAB, key))
            for view in (qa.medium, qa.hard):
                if "right lung" in view.question and view.answer_type == "open" and not _asked_class(view.question):
                    assert view.answer == "pleural effusion", (view.question, view.answer)
                    seen += 1
            if target is near:
                assert "outside" in qa.easy.cot or "not inside" in qa.easy.cot or "does not contain" in qa.easy.cot
    assert seen > 0


def test_absent_class_questions_never_name_a_present_or_overlapping_class():
    liver_mass = _seed("liver mass", "liver", "", (0.3, 0.3, 0.5, 0.5), modality="ct")
    vocab = ["mass", "liver mass", "kidney cyst", "nodule/mass", "lung nodule", NO_FINDING]
    syn = _template()
    asked_no, asked_yes = set(), set()
    for key in KEYS:
        qa = syn.synthesize(_single(key, seed=liver_mass, vocab=vocab))
        for view in (qa.easy, qa.medium, qa.hard):
            q = view.question.lower()
            if view.answer == "no":
                named = [c for c in ("kidney cyst", "lung nodule", "liver mass", "nodule/mass") if c in q]
                assert named and not ("liver mass" in q or re.search(r"\ban? mass\b", q)), q
                asked_no.update(named)
            elif view.answer == "yes":
                asked_yes.add(q)
    assert asked_no == {"kidney cyst", "lung nodule"}  # "mass" and "nodule/mass" overlap "liver mass"
    assert all("liver mass" in q or "lesion" in q or "abnormal" in q for q in asked_yes)


def test_negative_images_get_no_answers_and_a_cot_without_box():
    neg = negative_rationale("xray", ["right lung", "left lung", "heart", "rib 3 left"])
    syn = _template()
    classes_asked = set()
    for key in KEYS:
        qa = syn.synthesize(SynthInput(seed=neg, image_lesions=[neg], class_vocab=VOCAB, key=key))
        for view in (qa.easy, qa.medium, qa.hard):
            assert view.answer == "no" and view.answer_type == "closed"
            assert not CANONICAL_BOX_RE.search(view.cot) and "[" not in view.cot
            assert not re.search(r"\bbox|highlighted region", view.question, re.I)
            classes_asked.add(_asked_class(view.question))
        for view in (qa.easy, qa.medium):
            assert "no focal lesion" in view.cot.lower()
            assert "chest" in view.cot.lower()
        assert qa.hard.cot == ""
        assert NO_FINDING not in qa.medium.question.lower()
    assert {"nodule", "mass", "pleural effusion", "consolidation", "pneumothorax", None} == classes_asked


# ---- registry and settings -------------------------------------------------------------------------------------
def test_registry_and_config_errors():
    assert isinstance(synth.get_synthesizer(None), TemplateSynthesizer)
    cfg = ml_collections.ConfigDict({"backend": "llm", "seed": 3, "llm": {
        "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "", "max_concurrency": 2,
        "timeout_s": 5.0, "retries": 1, "cache_dir": ""}})
    llm = synth.get_synthesizer(cfg)
    assert isinstance(llm, synth.QASynthesizer) and llm.name == "llm" and llm.settings.seed == 3
    assert llm.llm.max_concurrency == 2 and llm.llm.base_url == "http://127.0.0.1:9/v1"
    clone = pickle.loads(pickle.dumps(llm))  # process pools / Beam ship the backend; locks are rebuilt
    assert clone.settings == llm.settings and clone._slots is not llm._slots
    with pytest.raises(ConfigError, match="synth.backend"):
        synth.get_synthesizer({"backend": "gpt"})
    with pytest.raises(ConfigError, match="max_concurrency"):
        synth.get_synthesizer({"backend": "llm", "llm": {"max_concurrency": 0}})


# ---- reply parsing and validation ------------------------------------------------------------------------------
def test_parse_reply_is_robust_to_layout():
    box = format_box(NODULE.box_norm)
    one_line = f"Question: What is seen? | Reasoning: The right lung at {box} shows a nodule. | Answer: Nodule."
    p = reply.parse_reply(one_line)
    assert (p.question, p.reasoning, p.answer) == ("What is seen?", f"The right lung at {box} shows a nodule.",
                                                   "Nodule")
    markdown = ("Sure!\n\n**Question:**  What is seen?\n\n**Reasoning:** The right lung\nat [0.2100, 0.1800, 0.3300, "
                "0.2900] shows a nodule; the answer: nodule\n**Answer:** nodule\n")
    p = reply.parse_reply(markdown)
    assert p.question == "What is seen?" and p.answer == "nodule"
    assert p.reasoning == "The right lung at [0.2100, 0.1800, 0.3300, 0.2900] shows a nodule; the answer: nodule"
    assert reply.canonicalize_box(p.reasoning, NODULE.box_norm).count(box) == 1
    spaced = reply.parse_reply("question :What?|reasoning:  r |answer :  yes")
    assert (spaced.question, spaced.reasoning, spaced.answer) == ("What?", "r", "yes")
    hard = reply.parse_reply("Question: Is there a nodule? Answer: yes")
    assert hard.reasoning == "" and hard.answer == "yes"
    for bad in ("It is a nodule.", "Question: what?", "Answer: nodule", ""):
        with pytest.raises(reply.ReplyError) as e:
            reply.parse_reply(bad)
        assert e.value.reason == "unparseable"


def test_box_citation_normalized_or_rejected():
    b = NODULE.box_norm
    assert reply.canonicalize_box("at (0.21,0.18 , 0.33,0.29) here", b) == "at [0.21, 0.18, 0.33, 0.29] here"
    assert reply.canonicalize_box("at [0.2143, 0.1750, 0.3333, 0.2857]", b) == "at [0.21, 0.18, 0.33, 0.29]"
    for text, reason in [("no box here", "no_box"), ("at [0.50, 0.50, 0.90, 0.90]", "box_mismatch"),
                         ("at [120, 80, 200, 160]", "box_mismatch"),
                         ("[0.21, 0.18, 0.33, 0.29] and [0.6, 0.2, 0.7, 0.3]", "box_mismatch")]:
        with pytest.raises(reply.ReplyError) as e:
            reply.canonicalize_box(text, b)
        assert e.value.reason == reason


def _validate(stage, text, inp):
    return reply.validate_reply(stage, reply.parse_reply(text), Scene.from_input(inp), inp.seed.box_norm)


def test_validation_checks_organ_answer_and_answerability():
    box = format_box(NODULE.box_norm)
    single = _single()
    good_cot = f"This chest radiograph shows the right lung; at {box} there is a rounded opacity."
    v = _validate("easy", f"Question: What is in the highlighted region? | Reasoning: {good_cot} | Answer: nodule",
                  single)
    assert v.answer == "nodule" and v.answer_type == "open" and box in v.cot
    v = _validate("medium", f"Question: Is there a nodule in the right lung? | Reasoning: {good_cot} | Answer: Yes.",
                  single)
    assert v.answer == "yes" and v.answer_type == "closed"
    v = _validate("hard", "Question: Is there a pneumothorax? | Answer: No", single)
    assert v.answer == "no" and v.cot == ""
    v = _validate("medium", f"Question: Where is the nodule? | Reasoning: {good_cot} | Answer: right upper zone",
                  single)
    assert v.answer == "right upper zone"
    cases = [
        ("easy", f"Question: What is seen? | Reasoning: There is an opacity at {box}. | Answer: nodule", "no_organ"),
        ("easy", f"Question: What is seen? | Reasoning: {good_cot} | Answer: pneumothorax", "answer_mismatch"),
        ("easy", f"Question: Is there a mass? | Reasoning: {good_cot} | Answer: yes", "answer_mismatch"),
        ("medium", f"Question: What is in the highlighted box? | Reasoning: {good_cot} | Answer: nodule",
         "medium_mentions_box"),
        ("hard", f"Question: What is at {box}? | Answer: nodule", "hard_mentions_box"),
        ("easy", f"Question: What? | Reasoning: {good_cot} | Answer: " + "a nodule " * 8, "long_answer"),
    ]
    for stage, text, reason in cases:
        with pytest.raises(reply.ReplyError) as e:
            _validate(stage, text, single)
        assert e.value.reason == reason, (text, e.value)
    multi = SynthInput(seed=NODULE, image_lesions=MULTI, class_vocab=VOCAB, key="m")
    with pytest.raises(reply.ReplyError) as e:
        _validate("hard", "Question: What abnormality does this image show? | Answer: nodule", multi)
    assert e.value.reason == "unanswerable"
    assert _validate("hard", "Question: What does this image show? | Answer: nodules and pleural effusion",
                     multi).answer == "nodules and pleural effusion"
    assert _validate("hard", "Question: Is there a nodule? | Answer: yes", multi).answer == "yes"
    neg = negative_rationale("xray", ["right lung"])
    neg_inp = SynthInput(seed=neg, image_lesions=[neg], class_vocab=VOCAB, key="n")
    ok = reply.validate_reply("easy", reply.parse_reply(
        "Question: Any abnormality? | Reasoning: The right lung is clear; no focal lesion. | Answer: No"),
        Scene.from_input(neg_inp), None)
    assert ok.answer == "no"
    with pytest.raises(reply.ReplyError):
        reply.validate_reply("hard", reply.parse_reply("Question: Any abnormality? | Answer: nodule"),
                             Scene.from_input(neg_inp), None)


# ---- the LLM backend over loopback HTTP ------------------------------------------------------------------------
class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):  # a client that timed out closed its socket: expected
        pass


@contextlib.contextmanager
def scripted_server(responder):
    """Runs an OpenAI-compatible server; `responder(body, n) -> (status, content, delay_s)`; yields its log."""
    log = {"bodies": [], "headers": [], "active": 0, "max_active": 0}
    lock = threading.Lock()

    class Handler(JSONHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                log["bodies"].append(body)
                log["headers"].append(dict(self.headers))
                n = len(log["bodies"])
                log["active"] += 1
                log["max_active"] = max(log["max_active"], log["active"])
            try:
                assert self.path == "/v1/chat/completions", self.path
                status, content, delay = responder(body, n)
                time.sleep(delay)
                payload = ({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
                           if status == 200 else {"error": "scripted failure"})
            finally:
                # Uncounted before the reply goes out: a client that has its reply (and frees its slot for the
                # next request) must never be seen in flight together with that next request.
                with lock:
                    log["active"] -= 1
            self.send_json(status, payload)

    with serve(Handler, _Server) as base_url:
        log["base_url"] = base_url
        yield log


def _good_reply(body):
    """A valid reply built from the prompt the backend sent (the box it must cite is in the prompt)."""
    prompt = next(p["text"] for p in body["messages"][1]["content"] if p["type"] == "text")
    box = CANONICAL_BOX_RE.search(prompt).group(0)
    return (f"**Question:** What abnormality is seen in the right lung?\n**Reasoning:** This is a chest radiograph."
            f" The right lung is visible. There is a rounded opacity at {box.replace(', ', ',')} in the upper zone; "
            f"it is a nodule.\n**Answer:** Nodule")


def _held_until(event, guard_s=30.0):
    """A responder whose valid reply waits for `event` (the guard only stops a broken build from hanging)."""
    def responder(body, n):
        event.wait(guard_s)
        return 200, _good_reply(body), 0.0
    return responder


def _llm(base_url, tmp_path=None, **llm):
    cfg = {"backend": "llm", "seed": 0, "llm": {"base_url": base_url, "model": "medgemma-test", "retries": 2,
                                                 "timeout_s": 5.0, "max_concurrency": 2, "backoff_s": 0.0,
                                                 "cache_dir": str(tmp_path / "cache") if tmp_path else "", **llm}}
    return synth.get_synthesizer(cfg)


def _pixels(seed=0):
    return np.random.default_rng(seed).integers(0, 200, (48, 64), dtype=np.uint8)


def _decode(url):
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_llm_good_reply_sends_image_prompt_and_key(monkeypatch):
    monkeypatch.setenv("MEDCLM_TEST_KEY", "secret-123")
    inp = dataclasses.replace(_single("g:0"), pixels=_pixels())
    with scripted_server(lambda body, n: (200, _good_reply(body), 0.0)) as log:
        syn = _llm(log["base_url"], api_key_env="MEDCLM_TEST_KEY")
        qa = syn.synthesize(inp)
    assert qa.backend == "llm" and len(log["bodies"]) == 3
    box = format_box(NODULE.box_norm)
    assert box in qa.easy.cot and box in qa.medium.cot and qa.hard.cot == ""  # near-miss box normalized
    assert qa.easy.answer == "nodule" and qa.easy.answer_type == "open"  # "Nodule" lowercased like templates
    assert qa.hard.question == "What abnormality is seen in the right lung?"
    assert all(h["Authorization"] == "Bearer secret-123" for h in log["headers"])
    easy, medium = log["bodies"][0], log["bodies"][1]
    assert easy["model"] == "medgemma-test" and easy["messages"][0]["role"] == "system"
    parts = {p["type"]: p for p in easy["messages"][1]["content"]}
    assert "highlighted region" in parts["text"]["text"] and NODULE.text in parts["text"]["text"]
    assert box in parts["text"]["text"]
    easy_img = _decode(parts["image_url"]["image_url"]["url"])
    med_img = _decode(next(p for p in medium["messages"][1]["content"] if p["type"] == "image_url")
                      ["image_url"]["url"])
    np.testing.assert_array_equal(med_img, inp.pixels)  # Medium: the image as is
    assert easy_img.shape == (48, 64, 3)  # Easy: the box drawn in red on an RGB copy
    red = (easy_img[..., 0] == 255) & (easy_img[..., 1] == 0) & (easy_img[..., 2] == 0)
    ys, xs = np.nonzero(red)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (13, 8, 22, 14)  # floor/ceil of box * (64, 48)
    assert syn.stats["llm"] == 1 and syn.stats["requests"] == 3


def test_llm_retries_a_malformed_reply():
    def responder(body, n):
        return (200, "I think this is a nodule.", 0.0) if n == 1 else (200, _good_reply(body), 0.0)

    with scripted_server(responder) as log:
        syn = _llm(log["base_url"])
        qa = syn.synthesize(_single("r:0"))
    assert qa.backend == "llm" and len(log["bodies"]) == 4
    assert syn.stats["invalid:unparseable"] == 1 and syn.stats["fallback"] == 0


def test_llm_reply_without_box_falls_back_to_templates_with_reason():
    bad = ("Question: What is seen in the right lung? | Reasoning: The right lung shows a nodule. | "
           "Answer: nodule")
    inp = _single("nb:0")
    with scripted_server(lambda body, n: (200, bad, 0.0)) as log:
        syn = _llm(log["base_url"], retries=1)
        qa = syn.synthesize(inp)
    assert qa.backend == "template_fallback:no_box"
    assert dataclasses.replace(qa, backend="template") == _template().synthesize(inp)
    assert len(log["bodies"]) == 2  # Easy asked twice (1 + retries), then the record fell back
    assert syn.stats["invalid:no_box"] == 2 and syn.stats["fallback:no_box"] == 1 and syn.stats["fallback"] == 1


def test_llm_http_500_and_timeout_fall_back():
    with scripted_server(lambda body, n: (500, None, 0.0)) as log:
        syn = _llm(log["base_url"], retries=2)
        qa = syn.synthesize(_single("e:0"))
        assert qa.backend == "template_fallback:http_error" and len(log["bodies"]) == 3
        assert syn.stats["error:http_error"] == 3 and syn.stats["fallback:http_error"] == 1
    # The reply is held until the client has returned, so only a client that gave up at its timeout can return
    # (one that waited would get the valid reply once the 30 s guard ran out, and fail the backend check).
    released = threading.Event()
    with scripted_server(_held_until(released)) as log:
        syn = _llm(log["base_url"], retries=0, timeout_s=0.1)
        qa = syn.synthesize(_single("t:0"))
        released.set()
        assert qa.backend == "template_fallback:timeout" and syn.stats["fallback:timeout"] == 1
        assert syn.stats["requests"] == 1 and len(log["bodies"]) == 1


class _SlotWatch:
    """Stands in for the backend's slot semaphore and counts the callers queued for a slot."""

    def __init__(self, slots):
        self.slots, self.queued, self.lock = slots, 0, threading.Lock()

    def __enter__(self):
        with self.lock:
            self.queued += 1
        self.slots.acquire()
        with self.lock:
            self.queued -= 1

    def __exit__(self, *exc):
        self.slots.release()


def _wait_for(condition, guard_s=30.0):
    """Polls until `condition()`; the guard only stops a broken build from hanging the suite."""
    deadline = time.monotonic() + guard_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_llm_concurrency_is_bounded_by_the_semaphore():
    """Replies are held until five callers (two slots) have settled: then exactly two requests are at the
    server and three callers queue for a slot. Counters, not timing: a missing or larger bound shows as a
    third request in flight, whatever the load on the machine."""
    inputs = [dataclasses.replace(_single(f"c:{i}"), pixels=_pixels(i)) for i in range(6)]
    gate = threading.Event()
    with scripted_server(_held_until(gate)) as log:
        syn = _llm(log["base_url"], max_concurrency=2)
        watch = syn._slots = _SlotWatch(syn._slots)
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(syn.synthesize, inp) for inp in inputs]
            _wait_for(lambda: log["active"] > 2 or log["active"] + watch.queued == 5)
            assert (log["active"], watch.queued) == (2, 3)
            gate.set()
            out = [f.result() for f in futures]
        assert log["max_active"] == 2, log["max_active"]
        many = syn.synthesize_many(inputs[:3])
    assert all(qa.backend == "llm" for qa in out + many)
    assert [qa.easy.question for qa in many] == [qa.easy.question for qa in out[:3]]
    assert len(log["bodies"]) == 6 * 3 + 3 * 3


def test_llm_cache_means_a_rerun_never_asks(tmp_path):
    inputs = [dataclasses.replace(_single(f"k:{i}"), pixels=_pixels(i)) for i in range(2)]
    with scripted_server(lambda body, n: (200, _good_reply(body), 0.0)) as log:
        first = _llm(log["base_url"], tmp_path).synthesize_many(inputs)
        assert len(log["bodies"]) == 6
        rerun = _llm(log["base_url"], tmp_path)
        second = rerun.synthesize_many(inputs)
        assert len(log["bodies"]) == 6  # zero new requests
    assert first == second and all(qa.backend == "llm" for qa in second)
    assert rerun.stats["cache_hit"] == 6 and rerun.stats["requests"] == 0
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert len(files) == 6 and not any(f.startswith(".tmp") for f in files)
    # a different image is a different key: it is asked
    with scripted_server(lambda body, n: (200, _good_reply(body), 0.0)) as log:
        _llm(log["base_url"], tmp_path).synthesize(dataclasses.replace(inputs[0], pixels=_pixels(99)))
        assert len(log["bodies"]) == 3


def test_llm_negative_image_prompt_and_validation():
    neg = negative_rationale("xray", ["right lung", "left lung", "heart"])
    inp = SynthInput(seed=neg, image_lesions=[neg], class_vocab=VOCAB, key="neg:0", pixels=_pixels())
    good = ("Question: Is there any abnormality in the heart? | Reasoning: This is a chest radiograph; the heart "
            "and lungs are clear, no focal lesion. | Answer: No.")
    with scripted_server(lambda body, n: (200, good, 0.0)) as log:
        qa = _llm(log["base_url"]).synthesize(inp)
        easy_parts = log["bodies"][0]["messages"][1]["content"]
    assert qa.backend == "llm" and (qa.easy.answer, qa.medium.answer, qa.hard.answer) == ("no", "no", "no")
    img = _decode(next(p for p in easy_parts if p["type"] == "image_url")["image_url"]["url"])
    np.testing.assert_array_equal(img, inp.pixels)  # nothing drawn on a negative image
    assert isinstance(qa, CurriculumQA)
