"""Prompt formats, token by token: hand-checked sequences per family, transformers' processors as references, loss
spans from separately tokenized parts, and what happens when an example does not fit max_len."""

import numpy as np
import pytest

from medclm_jax.data import prompts, targets
from medclm_jax.model import tokenizer as T
from medclm_jax.records import boxes

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>", "<start_of_image>", "<end_of_image>"]  # ids 0..6
LOCS = [T.loc_token(i) for i in range(1024)]  # ids 7..1030, as train_tokenizer lays them out
CHAT = ["<start_of_turn>", "<end_of_turn>", "<image_soft_token>"]  # ids 1031..1033
WORDS = ["\n", "▁", "answer", "▁en", "Is", "▁Is", "▁there", "▁a", "▁nodule?", "user", "model", "Reasoning:", "▁The",
         "▁box", "▁is", "▁round.", "Answer:", "▁Answer:", "▁yes", "Be", "▁brief."]  # ids 1034..
VOCAB = {w: i for i, w in enumerate(SPECIAL + LOCS + CHAT + WORDS)}

QUESTION = "Is there a nodule?"
COT = boxes.canonical_to_loc_tokens("The box [0.10, 0.20, 0.50, 0.60] is round.")
EASY = targets.make_target("easy", COT, "yes")
HARD = targets.make_target("hard", None, "yes")
IMG4 = (5, 4, 4, 4, 4, 6)  # tiny_gemma3 with the trained vocabulary: <start_of_image> 4 x <image> <end_of_image>
SOFT4 = (5, 1033, 1033, 1033, 1033, 6)  # the same with a Gemma 3 style soft token


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """A word-level tokenizer whose every piece is known: spaces start a piece, each newline is its own piece."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors

    tok = tokenizers.Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL + CHAT])
    tok.add_tokens([AddedToken(t, normalized=False) for t in LOCS])
    tok.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
    out = tmp_path_factory.mktemp("golden_tok")
    tok.save(str(out / "tokenizer.json"))
    return T.load_tokenizer(out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    corpus = [f"Reasoning: {COT} Answer: yes", "Is there a nodule in the right upper zone?",
              "Reasoning: The box [0.25, 0.33, 0.58, 0.67] lies in the left lung. Answer: pleural effusion"] * 30
    return T.train_tokenizer(iter(corpus), vocab_size=2048, out_dir=tmp_path_factory.mktemp("trained_tok"))


def ids(*pieces):
    return [VOCAB[p] for p in pieces]


def real(tokens, key):
    return getattr(tokens, key)[:tokens.length].tolist()


# ---- golden sequences -----------------------------------------------------------------------------------------
def test_paligemma_golden(golden):
    s = prompts.PromptSettings("paligemma", max_len=24)
    tk = prompts.encode(golden, s, QUESTION, EASY)
    prompt = ids("<bos>", "answer", "▁en", "▁Is", "▁there", "▁a", "▁nodule?", "\n")
    reasoning = ids("Reasoning:", "▁The", "▁box", "▁", "<loc0204>", "<loc0102>", "<loc0614>", "<loc0512>", "▁is",
                    "▁round.")
    answer = ids("▁Answer:", "▁yes", "<eos>")
    assert prompt[:2] == [2, 1036] and reasoning[4:8] == [7 + 204, 7 + 102, 7 + 614, 7 + 512] and answer[-1] == 1
    assert tk.text.tolist() == prompt + reasoning + answer + [0] * 3
    assert tk.mask_ar.tolist() == [0] * 8 + [1] * 16
    assert tk.mask_input.tolist() == [1] * 21 + [0] * 3
    assert tk.mask_loss.tolist() == [0] * 8 + [1] * 13 + [0] * 3
    assert tk.span.tolist() == [0] * 8 + [1] * 10 + [2] * 3 + [0] * 3
    assert (tk.prompt_len, tk.length, tk.reasoning_cut) == (8, 21, 0)


def test_gemma3_golden(golden):
    s = prompts.PromptSettings("gemma3", max_len=27, image_placeholder=SOFT4)
    tk = prompts.encode(golden, s, QUESTION, HARD)
    expected = ids("<bos>", "<start_of_turn>", "user", "\n", "\n", "\n", "<start_of_image>",
                   "<image_soft_token>", "<image_soft_token>", "<image_soft_token>", "<image_soft_token>",
                   "<end_of_image>", "\n", "\n", "Is", "▁there", "▁a", "▁nodule?", "<end_of_turn>", "\n",
                   "<start_of_turn>", "model", "\n") + ids("Answer:", "▁yes", "<end_of_turn>")
    assert expected[:2] == [2, 1031] and expected[-1] == 1032
    assert tk.text.tolist() == expected + [0]
    assert tk.mask_ar.tolist() == [1] * 27  # causal, as Gemma 3 was trained; the model makes images bidirectional
    assert tk.mask_loss.tolist() == [0] * 23 + [1] * 3 + [0]
    assert tk.span.tolist() == [0] * 23 + [2] * 3 + [0]


def test_gemma3_system_instruction_opens_the_user_turn(golden):
    s = prompts.PromptSettings("gemma3", max_len=40, image_placeholder=SOFT4, system="Be brief.")
    tk = prompts.encode(golden, s, QUESTION, HARD)
    assert real(tk, "text")[:10] == ids("<bos>", "<start_of_turn>", "user", "\n", "Be", "▁brief.", "\n", "\n", "\n",
                                        "\n")
    assert real(tk, "text")[10] == 5


def test_trained_golden_with_image_placeholders(golden):
    s = prompts.PromptSettings("trained", max_len=26, image_placeholder=IMG4)
    tk = prompts.encode(golden, s, QUESTION, EASY)
    prompt = [2, 5, 4, 4, 4, 4, 6] + ids("Is", "▁there", "▁a", "▁nodule?", "\n")
    target = ids("Reasoning:", "▁The", "▁box", "▁", "<loc0204>", "<loc0102>", "<loc0614>", "<loc0512>", "▁is",
                 "▁round.", "▁Answer:", "▁yes") + [1]
    assert tk.text.tolist() == prompt + target + [0]
    assert tk.mask_ar.tolist() == [0] * 12 + [1] * 14
    assert tk.mask_loss.tolist() == [0] * 12 + [1] * 13 + [0]  # never on the placeholders or the prompt
    assert tk.span.tolist() == [0] * 12 + [1] * 10 + [2] * 3 + [0]
    # Without placeholders (the tiny/small paligemma-family presets) it is PaliGemma's layout minus the task prefix.
    tk = prompts.encode(golden, prompts.PromptSettings("trained", max_len=26), QUESTION, EASY)
    assert real(tk, "text") == [2] + ids("Is", "▁there", "▁a", "▁nodule?", "\n") + target


# ---- transformers' processors as references -------------------------------------------------------------------
def test_paligemma_equals_the_transformers_processor(golden, tmp_path):
    transformers = pytest.importorskip("transformers")
    from PIL import Image
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=golden.path, bos_token="<bos>", eos_token="<eos>",
                                                  pad_token="<pad>", unk_token="<unk>")
    image_processor = SiglipImageProcessorPil(size={"height": 28, "width": 28})
    image_processor.image_seq_length = 4
    proc = transformers.PaliGemmaProcessor(image_processor=image_processor, tokenizer=hf_tok)
    for target in (EASY, HARD):
        ref = proc(images=Image.new("RGB", (9, 7)), text="<image>answer en " + QUESTION,
                   suffix=target.text, return_tensors="np")
        tk = prompts.encode(golden, prompts.PromptSettings("paligemma", max_len=30), QUESTION, target)
        assert real(tk, "text") == ref["input_ids"][0, 4:].tolist()
        assert real(tk, "mask_ar") == ref["token_type_ids"][0, 4:].tolist()
        assert real(tk, "mask_loss") == (ref["labels"][0, 4:] != -100).astype(int).tolist()


def test_gemma3_equals_the_transformers_processor_on_the_chat_text(golden):
    transformers = pytest.importorskip("transformers")
    from PIL import Image
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=golden.path, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"})
    proc = transformers.Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 28, "width": 28}),
                                       tokenizer=hf_tok, image_seq_length=4)
    # Gemma 3's chat turns written out by hand; the processor widens <start_of_image> to the image sequence.
    chat = (f"<bos><start_of_turn>user\n<start_of_image>{QUESTION}<end_of_turn>\n<start_of_turn>model\n"
            f"{EASY.text}<end_of_turn>")
    ref = proc(images=Image.new("RGB", (9, 7)), text=chat, return_tensors="np")
    tk = prompts.encode(golden, prompts.PromptSettings("gemma3", max_len=40, image_placeholder=SOFT4), QUESTION,
                        EASY)
    assert real(tk, "text") == ref["input_ids"][0].tolist()
    assert (tk.text == 1033).tolist()[:tk.length] == (ref["token_type_ids"][0] == 1).tolist()


# ---- spans from separately tokenized parts --------------------------------------------------------------------
@pytest.mark.parametrize("fmt, placeholder", [("paligemma", ()), ("trained", IMG4)])
def test_parts_tokenized_separately_equal_the_whole_target(trained, fmt, placeholder):
    s = prompts.PromptSettings(fmt, max_len=160, image_placeholder=placeholder)
    cases = [EASY, HARD, targets.make_target("medium", "The box [0.25, 0.33, 0.58, 0.67] lies in the left lung.",
                                             "pleural effusion"),
             targets.make_target("easy", "No focal lesion is seen, so there is no region to localize.", "no")]
    for target in cases:
        tk = prompts.encode(trained, s, QUESTION, target)
        body = tk.text[tk.prompt_len:tk.length - 1].tolist()
        assert body == trained.encode(target.text)  # the cut before " Answer:" changes no token
        reasoning, answer = prompts.target_parts(target)
        assert reasoning + answer == target.text
        assert trained.decode(tk.text[tk.span == 1]) == reasoning
        assert trained.decode(tk.text[tk.span == 2], skip_special=False) == answer + "<eos>"
        assert tk.text[tk.length - 1] == trained.eos_id and tk.span[tk.length - 1] == 2


# ---- length ---------------------------------------------------------------------------------------------------
def test_reasoning_is_cut_from_its_end_and_counted(golden):
    # paligemma Easy: prompt 8, reasoning 10, answer 3 tokens.
    full = prompts.encode(golden, prompts.PromptSettings("paligemma", max_len=21), QUESTION, EASY)
    assert full.reasoning_cut == 0 and full.mask_input.all()
    cut = prompts.encode(golden, prompts.PromptSettings("paligemma", max_len=19), QUESTION, EASY)
    assert cut.reasoning_cut == 2 and cut.length == 19
    assert cut.text.tolist() == full.text[:16].tolist() + full.text[18:].tolist()  # "▁is ▁round." cut, answer kept
    assert cut.span.tolist() == [0] * 8 + [1] * 8 + [2] * 3
    one = prompts.encode(golden, prompts.PromptSettings("paligemma", max_len=12), QUESTION, EASY)
    assert one.reasoning_cut == 9 and real(one, "span") == [0] * 8 + [1] + [2] * 3
    assert prompts.outcome(cut) == {"kept": 1, "reasoning_truncated": 1}
    assert prompts.outcome(full) == {"kept": 1, "reasoning_truncated": 0}


@pytest.mark.parametrize("max_len, target, reason", [
    (11, EASY, "no_room_for_reasoning"),  # the answer fits, no reasoning token does
    (10, EASY, "answer_truncated"),
    (10, HARD, "answer_truncated"),
    (8, HARD, "prompt_too_long"),
])
def test_examples_that_do_not_fit_are_dropped_with_a_reason(golden, max_len, target, reason):
    with pytest.raises(prompts.TooLong, match="max_len") as e:
        prompts.encode(golden, prompts.PromptSettings("paligemma", max_len=max_len), QUESTION, target,
                       where="train-00001 record 9")
    assert e.value.reason == reason and "train-00001 record 9" in str(e.value)
    assert prompts.outcome(error=e.value) == {"dropped": 1, f"dropped:{reason}": 1}
    assert prompts.encode(golden, prompts.PromptSettings("paligemma", max_len=11), QUESTION, HARD).length == 11


def test_prompt_alone_for_generation(golden):
    s = prompts.PromptSettings("gemma3", max_len=26, image_placeholder=SOFT4)
    p, full = prompts.encode_prompt(golden, s, QUESTION), prompts.encode(golden, s, QUESTION, HARD)
    assert p.length == p.prompt_len == full.prompt_len == 23
    assert p.text.tolist() == full.text[:23].tolist() + [0] * 3 and not p.mask_loss.any()
    assert p.mask_input.tolist() == [1] * 23 + [0] * 3
    assert prompts.end_ids(golden, s) == (1032,) == tuple(full.text[full.length - 1:full.length])
    assert prompts.end_ids(golden, prompts.PromptSettings("paligemma", 26)) == (1,)


# ---- settings -------------------------------------------------------------------------------------------------
def test_settings_are_checked(golden, trained):
    with pytest.raises(ValueError, match="no image placeholders"):
        prompts.PromptSettings("paligemma", 32, image_placeholder=IMG4)
    with pytest.raises(ValueError, match="image_placeholder"):
        prompts.PromptSettings("gemma3", 32)
    with pytest.raises(ValueError, match="expected one of"):
        prompts.PromptSettings("llava", 32)
    with pytest.raises(ValueError, match="<start_of_turn>"):
        prompts.encode(trained, prompts.PromptSettings("gemma3", 64, image_placeholder=IMG4), QUESTION, HARD)


def test_settings_for_model_match_the_presets(trained, tmp_path):
    from medclm_jax.model import presets

    tiny = prompts.settings_for_model(presets.get_model_config("tiny"), trained, max_len=64, pretrained=False)
    assert (tiny.format, tiny.image_placeholder) == ("trained", ())
    g3 = prompts.settings_for_model(presets.get_model_config("tiny_gemma3"), trained, max_len=64, pretrained=False)
    assert (g3.format, g3.image_placeholder) == ("trained", IMG4)
    assert prompts.default_format("paligemma", True) == "paligemma"
    assert prompts.default_format("gemma3", True) == "gemma3"
    big = T.train_tokenizer(iter(["a b c d"] * 10), vocab_size=4096, out_dir=tmp_path)
    with pytest.raises(ValueError, match="embedding 2048 rows"):
        prompts.settings_for_model(presets.get_model_config("tiny"), big, max_len=64, pretrained=False)
