"""KV-cache decoding: against transformers ``generate``, against an uncached loop, across batching and padding,
and the samplers on hand-made distributions, alone and over many decode steps.

Tiny random models with a small embedding spread, so greedy continuations vary (with HF's or a large
spread the residual stream repeats the last token forever, which would make the comparisons weak).
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from medclm_jax.model import convert_gemma, decode, gemma  # noqa: E402

@pytest.fixture(autouse=True)
def _retrace_under_mutmut():
    """Under mutmut only: it maps each test to the functions it reaches by recording their calls in one process,
    and a jitted program called again with the same shapes is not traced again, so without this only the first
    test of each (decoder, sampling, shapes) would be mapped to ``decode``'s functions."""
    if os.environ.get('MUTANT_UNDER_TEST') == 'stats':  # the mapping run; a mutant's own run keeps one mutant
        jax.clear_caches()
    yield


TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=4, head_dim=16)
WINDOW = 4


def _hf_model(variant: str):
    torch.manual_seed(0)
    if variant == 'gemma1':
        model = transformers.GemmaForCausalLM(transformers.GemmaConfig(
            num_hidden_layers=2, num_key_value_heads=1, **TINY))
    elif variant == 'gemma2':
        model = transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
            num_hidden_layers=4, num_key_value_heads=2, sliding_window=WINDOW, attn_logit_softcapping=4.0,
            final_logit_softcapping=8.0, query_pre_attn_scalar=24, **TINY))
    else:
        model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
            num_hidden_layers=6, num_key_value_heads=2, sliding_window=WINDOW, query_pre_attn_scalar=24, **TINY))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.02 if 'embed' in name else 0.1 if 'norm' in name else 0.3)
    model.generation_config.eos_token_id = None
    return model.eval()


@functools.lru_cache(maxsize=None)
def _ours(variant: str, scan_layers: bool = True):
    model = _hf_model(variant)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    cfg = convert_gemma.gemma_config_from_hf(model.config.to_dict(), scan_layers=scan_layers)
    return model, gemma.GemmaDecoder(cfg), {'params': convert_gemma.hf_to_gemma_params(state.__getitem__, cfg)}


def _prompts(lengths, seed=0):
    rs = np.random.RandomState(seed)
    return [rs.randint(3, 256, n) for n in lengths]


def _pad(prompts, left=False):
    t = max(len(p) for p in prompts)
    tokens = np.zeros((len(prompts), t), np.int32)
    for i, p in enumerate(prompts):
        if left:
            tokens[i, t - len(p):] = p
        else:
            tokens[i, :len(p)] = p
    return tokens


def _prefix_mask(total, prefix_len):
    """bool[total, total]: causal, except the first ``prefix_len`` tokens attend to each other fully."""
    idx = np.arange(total)
    return (idx[None, :] <= idx[:, None]) | ((idx[:, None] < prefix_len) & (idx[None, :] < prefix_len))


def _uncached_greedy(dec, params, prompts, n, prefix_len=0):
    """Greedy decoding by re-running the whole sequence each step (no cache): the independent reference.

    ``prompts: int[B, T]`` unpadded; the first ``prefix_len`` tokens form a prefix-LM block.
    """
    b, t = prompts.shape
    total = t + n
    mask = jnp.broadcast_to(jnp.asarray(_prefix_mask(total, prefix_len)), (b, total, total))
    positions = jnp.broadcast_to(jnp.arange(total), (b, total))
    seq = np.zeros((b, total), np.int32)
    seq[:, :t] = prompts
    for i in range(t, total):
        seq[:, i] = np.argmax(np.asarray(_forward(dec, params, seq, positions, mask))[:, i - 1], axis=-1)
    return seq[:, t:]


@functools.partial(jax.jit, static_argnums=0)
def _forward(dec, params, tokens, positions, mask):
    return dec.apply(params, dec.apply(params, tokens, method=dec.embed), positions, mask)[0]


N_NEW = 8


def _key(seed):
    # The 'rbg' generator compiles several times faster than threefry on CPU; the samplers don't care.
    return jax.random.key(seed, impl='rbg')


def _hf_greedy(model, prompt, n=N_NEW):
    with torch.no_grad():
        out = model.generate(torch.tensor(prompt)[None], do_sample=False, max_new_tokens=n, pad_token_id=0)
    return out.numpy()[0, len(prompt):]


def test_gemma1_greedy_matches_transformers_generate_and_uncached_prefix_lm():
    model, dec, params = _ours('gemma1', scan_layers=False)
    prompts = np.stack(_prompts([9, 9], seed=1))
    out = decode.generate(dec, params, prompts, max_new_tokens=N_NEW)
    with torch.no_grad():
        ref = model.generate(torch.tensor(prompts), do_sample=False, max_new_tokens=N_NEW,
                             pad_token_id=0).numpy()[:, 9:]
    assert len(set(ref.ravel().tolist())) > 4  # a varied continuation, not one repeated token
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    np.testing.assert_array_equal(np.asarray(out.lengths), [N_NEW, N_NEW])

    # Cached == uncached, with a prefix-LM prompt mask (as the VLM prefills image + prompt), same program.
    want = _uncached_greedy(dec, params, prompts, N_NEW, prefix_len=6)
    assert not np.array_equal(want, ref)  # the prefix mask matters
    x = dec.apply(params, jnp.asarray(prompts), method=dec.embed)
    prefix = np.broadcast_to(_prefix_mask(9, 6), (2, 9, 9))
    out = decode.decode(dec, params, x, np.ones((2, 9), bool), prefix, max_new_tokens=N_NEW)
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    np.testing.assert_array_equal(_uncached_greedy(dec, params, prompts, N_NEW), ref)


def test_gemma3_batched_left_and_right_padded_equal_transformers_one_by_one():
    """Prompts of 3, 9 and 6 tokens (9 > the sliding window 4) in one batch, each row against HF ``generate``
    on that prompt alone (no padding), for right and left padding (one compiled program for both)."""
    model, dec, params = _ours('gemma3')
    prompts = _prompts([3, 9, 6], seed=3)
    want = np.stack([_hf_greedy(model, p) for p in prompts])
    assert len(set(want[1].tolist())) > 3
    for left in (False, True):
        out = decode.generate(dec, params, _pad(prompts, left=left), max_new_tokens=N_NEW)
        np.testing.assert_array_equal(np.asarray(out.tokens), want, err_msg=f'left={left}')


def test_top_k_1_equals_greedy_and_eos_stops_a_row():
    model, dec, params = _ours('gemma3')
    prompts = _prompts([3, 9, 6], seed=3)  # the prompts of the batched test: same compiled greedy program
    greedy = np.asarray(decode.generate(dec, params, _pad(prompts), max_new_tokens=N_NEW).tokens)
    eos = int(greedy[0, 2])  # row 0 emits it at step 2 (or earlier)
    out = decode.generate(dec, params, _pad(prompts), max_new_tokens=N_NEW, rng=_key(7),
                          sampling=decode.Sampling(temperature=1.5, top_k=1), eos_id=(eos, 255), pad_id=0)
    got, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for row in range(3):
        hits = np.flatnonzero(np.isin(greedy[row], [eos, 255]))
        end = hits[0] + 1 if len(hits) else N_NEW
        np.testing.assert_array_equal(got[row, :end], greedy[row, :end], err_msg=str(row))
        assert (got[row, end:] == 0).all() and lengths[row] == end, row
    assert lengths[0] <= 3 and lengths.max() > lengths[0]  # one row stopped, the others went on


def test_sampler_filters_on_known_distribution():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.log(jnp.asarray(np.tile(probs, (4000, 1)), jnp.float32))
    rng = _key(0)

    def draw(**kw):
        sample = jax.jit(functools.partial(decode.sample_logits, sampling=decode.Sampling(**kw)))
        return np.asarray(sample(logits, rng))

    assert (draw(temperature=0.0) == 0).all()
    freq = np.bincount(draw(temperature=1.0), minlength=4) / 4000
    np.testing.assert_allclose(freq, probs, atol=0.03)
    assert set(draw(temperature=1.0, top_k=2)) == {0, 1}
    # top-p keeps the smallest head whose mass reaches p: {0, 1} for p=0.7, {0, 1, 2} for p=0.81.
    assert set(draw(temperature=1.0, top_p=0.7)) == {0, 1}
    assert set(draw(temperature=1.0, top_p=0.81)) == {0, 1, 2}
    freq = np.bincount(draw(temperature=1.0, top_p=0.7), minlength=4) / 4000
    np.testing.assert_allclose(freq, [0.5 / 0.8, 0.3 / 0.8, 0, 0], atol=0.03)
    # Temperature sharpens: at T=0.5 the probabilities go as p^2.
    sharp = probs ** 2 / (probs ** 2).sum()
    np.testing.assert_allclose(np.bincount(draw(temperature=0.5), minlength=4) / 4000, sharp, atol=0.03)
    with pytest.raises(ValueError):
        decode.Sampling(top_p=0.0)


STEADY_PROBS = np.array([0.34, 0.22, 0.16, 0.11, 0.08, 0.05, 0.03, 0.01])


def _steady_decoder():
    """A decoder whose next-token distribution is ``STEADY_PROBS`` at every step, whatever the history.

    Every weight is zero except the embeddings, ``E[v] = c_v e_0`` with ``c_v > 0``: the layers add nothing,
    the final RMSNorm maps any ``c e_0`` to ``sqrt(D) e_0``, so the tied output projection gives logits
    ``sqrt(D) c_v = log p_v + const``. Sampling from it over many steps is a draw of known distribution.
    """
    cfg = gemma.GemmaConfig(vocab_size=len(STEADY_PROBS), width=16, depth=1, mlp_dim=16, num_heads=2,
                            num_kv_heads=1, head_dim=8)
    dec = gemma.GemmaDecoder(cfg)
    shapes = jax.eval_shape(dec.init, jax.random.key(0), jnp.zeros((1, 1, cfg.width)),
                            jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1, 1), bool))
    params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), nn.meta.unbox(shapes)['params'])
    embedding = np.zeros((cfg.vocab_size, cfg.width), np.float32)
    embedding[:, 0] = (np.log(STEADY_PROBS) + 10.0) / np.sqrt(cfg.width)
    params['embedder']['embedding'] = embedding
    return dec, {'params': params}


def _filtered(probs, temperature, top_k=0, top_p=1.0):
    """The distribution a sampler should draw from (HF order: temperature, top-k, top-p), by hand."""
    q = probs ** (1.0 / temperature)
    q /= q.sum()
    order = np.argsort(-q)
    keep = np.zeros(len(q), bool)
    keep[order[:top_k or len(q)]] = True
    q = np.where(keep, q, 0.0) / q[keep].sum()
    mass_before = np.cumsum(q[order]) - q[order]
    keep[order[mass_before >= top_p]] = False
    return np.where(keep, q, 0.0) / q[keep].sum()


@pytest.mark.parametrize('temperature,top_k,top_p,kept', [(1.0, 0, 1.0, 8), (0.7, 4, 1.0, 4), (2.0, 0, 0.75, 5)])
def test_sampling_over_many_steps_draws_fresh_from_the_distribution(temperature, top_k, top_p, kept):
    """16 rows x 48 steps from a constant next-token distribution: token frequencies match the filtered
    distribution, and consecutive tokens of a row are independent (equal with probability sum q^2). A decoder
    that reuses one key every step repeats each row's first token (consecutive-equal rate 1)."""
    dec, params = _steady_decoder()
    b, n = 16, 48
    sampling = decode.Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    out = decode.generate(dec, params, np.full((b, 3), 2, np.int32), max_new_tokens=n, rng=_key(11),
                          sampling=sampling)
    tokens = np.asarray(out.tokens)
    want = _filtered(STEADY_PROBS, temperature, top_k, top_p)
    assert (want > 0).sum() == kept  # top-p after temperature: it would keep 4 tokens at T = 1, 5 at T = 2
    freq = np.bincount(tokens.ravel(), minlength=len(want)) / tokens.size
    sigma = np.sqrt(want * (1 - want) / tokens.size)
    np.testing.assert_array_equal(freq[want == 0], 0)
    assert (np.abs(freq - want) <= 4.5 * sigma).all(), (freq, want)
    same = (tokens[:, 1:] == tokens[:, :-1]).mean()
    p_same = (want ** 2).sum()
    assert abs(same - p_same) <= 4.5 * np.sqrt(p_same * (1 - p_same) / tokens[:, 1:].size), (same, p_same)
    assert len({tuple(row) for row in tokens}) == b  # rows draw independently too
    # Every step has its own key, the first included: no two consecutive steps agree on all 16 rows (that has
    # probability sum(q^2)^16 < 1e-8 with fresh keys, and is certain when two steps share one).
    assert all((tokens[:, i] != tokens[:, i + 1]).any() for i in range(n - 1))
    again = decode.generate(dec, params, np.full((b, 3), 2, np.int32), max_new_tokens=n, rng=_key(11),
                            sampling=sampling)
    np.testing.assert_array_equal(np.asarray(again.tokens), tokens)  # a key fixes the draw


@pytest.mark.parametrize('variant', ['gemma3', 'gemma2'])
def test_ring_buffer_caches_match_transformers(variant):
    """Unrolled layers keep ring buffers of ``WINDOW`` slots on local layers; prompts longer than the window,
    12 new tokens (3x the window), right and left padding: every row equals HF ``generate`` on its prompt."""
    model, dec, params = _ours(variant, scan_layers=False)
    cache = gemma.init_cache(dec.config, 3, 21)
    assert [k.shape[1] for k in cache['k']] == [WINDOW if dec.config.is_local(i) else 21
                                                for i in range(dec.config.depth)]
    assert any(dec.config.local_layers) and not all(dec.config.local_layers)
    prompts = _prompts([3, 9, 6], seed=3)
    want = np.stack([_hf_greedy(model, p, 12) for p in prompts])
    for left in (False, True):
        out = decode.generate(dec, params, _pad(prompts, left=left), max_new_tokens=12)
        np.testing.assert_array_equal(np.asarray(out.tokens), want, err_msg=f'{variant} left={left}')


def test_ring_buffer_with_holes_in_the_prompt_equals_the_full_cache():
    """Masked-out tokens inside a prompt (holes): the ring keeps the latest WINDOW *real* keys, so it still
    equals the stacked full-length cache of the scanned layout."""
    _, dec_ring, params_ring = _ours('gemma3', scan_layers=False)
    _, dec_full, params_full = _ours('gemma3', scan_layers=True)
    tokens = np.stack(_prompts([10, 10], seed=5))
    input_mask = np.ones((2, 10), bool)
    input_mask[0, 2:5] = False  # a hole of 3 inside row 0's prompt
    input_mask[1, 7] = False
    outs = []
    for dec, params in ((dec_ring, params_ring), (dec_full, params_full)):
        x = dec.apply(params, jnp.asarray(tokens), method=dec.embed)
        outs.append(np.asarray(decode.decode(dec, params, x, input_mask, max_new_tokens=10).tokens))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_ring_cache_needs_unrolled_layers():
    _, dec, _ = _ours('gemma3', scan_layers=True)
    with pytest.raises(ValueError, match='unrolled'):
        gemma.init_cache(dec.config, 1, 32, ring=True)


# mutation-testing gaps (benchmarks/results/mutation.md, decode.py)

def test_bad_sampling_settings_and_decode_arguments_are_refused_with_their_rule():
    rule = 'need temperature >= 0, top_k >= 0, 0 < top_p <= 1'
    for bad in (dict(temperature=-0.01), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.01)):
        with pytest.raises(ValueError, match=rule):
            decode.Sampling(**bad)
    decode.Sampling(temperature=0.0, top_k=0, top_p=1.0)  # the boundaries themselves are allowed
    decode.Sampling(temperature=0.01, top_k=1, top_p=0.01)
    dec, params = _steady_decoder()
    prompt = np.full((1, 3), 2, np.int32)
    with pytest.raises(ValueError, match='max_new_tokens must be >= 1, got 0'):
        decode.generate(dec, params, prompt, max_new_tokens=0)
    with pytest.raises(ValueError, match='temperature > 0 needs an rng key'):
        decode.generate(dec, params, prompt, max_new_tokens=2, sampling=decode.Sampling(temperature=1.0))


def test_a_single_new_token_and_a_single_int_eos_id():
    """The steady decoder's greedy token is 0 at every step: one new token is allowed, and an int ``eos_id``
    (not a tuple) ends the row at once, ``pad_id`` after it."""
    dec, params = _steady_decoder()
    prompt = np.full((2, 3), 2, np.int32)
    one = decode.generate(dec, params, prompt, max_new_tokens=1)
    np.testing.assert_array_equal(np.asarray(one.tokens), [[0], [0]])
    np.testing.assert_array_equal(np.asarray(one.lengths), [1, 1])
    out = decode.generate(dec, params, prompt, max_new_tokens=4, eos_id=0, pad_id=7)
    np.testing.assert_array_equal(np.asarray(out.tokens), [[0, 7, 7, 7]] * 2)
    np.testing.assert_array_equal(np.asarray(out.lengths), [1, 1])
    numpy_id = decode.generate(dec, params, prompt, max_new_tokens=4, eos_id=np.int64(0), pad_id=7)  # a config's id
    np.testing.assert_array_equal(np.asarray(numpy_id.tokens), np.asarray(out.tokens))
    never = decode.generate(dec, params, prompt, max_new_tokens=4, eos_id=5, pad_id=7)
    np.testing.assert_array_equal(np.asarray(never.tokens), np.zeros((2, 4)))
    np.testing.assert_array_equal(np.asarray(never.lengths), [4, 4])


def test_prefill_alone_defaults_to_causal_and_reads_each_rows_last_real_token():
    """``prefill`` called without a prompt mask (``decode`` always passes one): causal attention, and the
    logits of each row's last real token, a one-token prompt included, equal the uncached forward pass."""
    _, dec, params = _ours('gemma1', scan_layers=False)
    prompts = _prompts([5, 1, 3], seed=2)
    tokens = _pad(prompts)
    x = dec.apply(params, jnp.asarray(tokens), method=dec.embed)
    logits, state = decode.prefill(dec, params, x, tokens != 0, cache_len=7)
    for row, p in enumerate(prompts):
        n = len(p)
        want = _forward(dec, params, p[None], jnp.arange(n)[None], jnp.tril(jnp.ones((1, n, n), bool)))[0, -1]
        np.testing.assert_allclose(np.asarray(logits[row]), np.asarray(want), rtol=2e-5, atol=2e-5,
                                   err_msg=str(row))
    np.testing.assert_array_equal(np.asarray(state['next_pos']), [5, 1, 3])
    np.testing.assert_array_equal(np.asarray(state['valid']), np.pad(tokens != 0, ((0, 0), (0, 2))))


def test_sampled_rows_stop_at_their_own_first_eos():
    """Rows sampled from the steady decoder hit EOS (token 1) at different steps: each row's length is its own
    first EOS + 1 (``max_new_tokens`` without one), ``pad_id`` after it, both outputs int32 as documented."""
    dec, params = _steady_decoder()
    n = 8
    out = decode.generate(dec, params, np.full((16, 3), 2, np.int32), max_new_tokens=n, rng=_key(3),
                          sampling=decode.Sampling(temperature=1.0), eos_id=(1,), pad_id=0)
    assert out.tokens.dtype == jnp.int32 and out.lengths.dtype == jnp.int32
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for row in range(16):
        hits = np.flatnonzero(tokens[row] == 1)
        end = hits[0] + 1 if len(hits) else n
        assert lengths[row] == end and (tokens[row, end:] == 0).all(), (row, tokens[row], lengths[row])
    assert len(set(lengths.tolist())) > 2  # rows stop at different steps, some never


# mutation-testing gaps (decode.py, round 3)

def _draws(logits, sampling, n=256):
    """``n`` draws of ``sample_logits`` for one row of logits, each with its own key."""
    sample = functools.partial(decode.sample_logits, jnp.asarray(logits, jnp.float32)[None], sampling=sampling)
    return np.asarray(jax.jit(jax.vmap(lambda k: sample(k)[0]))(jax.random.split(_key(0), n)))


def test_top_k_on_a_single_row_keeps_k_tokens_not_one_per_row():
    """``top_k`` keeps the k largest logits of a row, whatever the batch size: on a batch of one row a sampler
    that bounded k by the number of rows instead of the vocabulary would always draw the argmax."""
    logits = [2.0, 1.9, 1.8, -5.0, -5.0, -5.0, -5.0, -5.0]
    assert set(_draws(logits, decode.Sampling(temperature=1.0, top_k=2))) == {0, 1}
    assert set(_draws(logits, decode.Sampling(temperature=1.0, top_k=3))) == {0, 1, 2}
    assert set(_draws(logits, decode.Sampling(temperature=1.0, top_k=20))) >= {0, 1, 2}  # k > V keeps all


def test_top_p_boundary_head_whose_mass_equals_p_exactly_matches_transformers():
    """Probabilities 1/2, 1/4, 1/8, 1/8 (exact in float32): the head {0} has mass exactly 0.5 and {0, 1} exactly
    0.75, so top-p 0.5 keeps token 0 alone and 0.75 keeps {0, 1}, as transformers' ``TopPLogitsWarper`` does. A
    filter that also kept a token whose preceding mass equals p would keep one (or two tied) tokens more."""
    from transformers.generation.logits_process import TopPLogitsWarper
    logits = np.log(np.array([0.5, 0.25, 0.125, 0.125], np.float32))
    for top_p in (0.5, 0.75):
        hf = TopPLogitsWarper(top_p)(None, torch.tensor(logits)[None])[0]
        want = set(np.flatnonzero(np.isfinite(hf.numpy())).tolist())
        assert want == ({0} if top_p == 0.5 else {0, 1})
        assert set(_draws(logits, decode.Sampling(temperature=1.0, top_p=top_p)).tolist()) == want, top_p


def test_decode_pads_with_zero_by_default_and_draws_from_the_given_key():
    """``decode`` called directly (the VLM path, ``generate`` always passes its own ``pad_id``): the documented
    default ``pad_id = 0`` fills the row after EOS; and a sampled draw depends on the ``rng`` passed in (two
    keys give different tokens, one key the same), not on a key of the decoder's own."""
    dec, params = _steady_decoder()  # greedy token 0 at every step
    prompt = np.full((4, 3), 2, np.int32)
    x = dec.apply(params, jnp.asarray(prompt), method=dec.embed)
    mask = np.ones(prompt.shape, bool)
    out = decode.decode(dec, params, x, mask, max_new_tokens=4, eos_id=0)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.zeros((4, 4)))
    np.testing.assert_array_equal(np.asarray(out.lengths), [1, 1, 1, 1])
    sampling = decode.Sampling(temperature=1.0)
    draws = [np.asarray(decode.decode(dec, params, x, mask, max_new_tokens=6, rng=_key(seed),
                                      sampling=sampling).tokens) for seed in (1, 2, 1)]
    assert (draws[0] != draws[1]).any()  # equal with probability sum(q^2)^24 < 1e-11
    np.testing.assert_array_equal(draws[0], draws[2])


def test_decode_argument_errors_have_exactly_the_documented_message():
    """The whole message, anchored: a message with extra text around the rule would still match a search."""
    dec, params = _steady_decoder()
    x = jnp.zeros((1, 3, dec.config.width))
    mask = np.ones((1, 3), bool)
    with pytest.raises(ValueError, match=r'^decode: max_new_tokens must be >= 1, got 0$'):
        decode.decode(dec, params, x, mask, max_new_tokens=0)
    with pytest.raises(ValueError, match=r'^decode: sampling with temperature > 0 needs an rng key$'):
        decode.decode(dec, params, x, mask, max_new_tokens=2, sampling=decode.Sampling(temperature=1.0))


def test_top_p_cuts_each_row_at_its_own_head_on_unsorted_rows():
    """Two rows of different scale and token order in one batch: top-p 0.7 keeps each row's own head (as
    transformers' ``TopPLogitsWarper`` does, row by row). A cutoff taken over the whole batch, or per sorted
    position across rows, would let row 0 keep its tail or drop its head."""
    from transformers.generation.logits_process import TopPLogitsWarper
    probs = np.array([0.05, 0.15, 0.3, 0.5])
    logits = np.log(np.stack([probs, probs[::-1]])).astype(np.float32) - np.array([[0.0], [10.0]], np.float32)
    hf = TopPLogitsWarper(0.7)(None, torch.tensor(logits)).numpy()
    want = [set(np.flatnonzero(np.isfinite(row)).tolist()) for row in hf]
    assert want == [{2, 3}, {0, 1}]
    sample = functools.partial(decode.sample_logits, jnp.asarray(logits), sampling=decode.Sampling(1.0, top_p=0.7))
    draws = np.asarray(jax.jit(jax.vmap(sample))(jax.random.split(_key(0), 256)))  # [256, 2]
    assert [set(draws[:, row].tolist()) for row in range(2)] == want


def test_generated_tokens_are_a_strongly_typed_int32_array():
    """``tokens`` is documented ``int32``: a weakly typed int32 (what an output buffer created from the Python int
    ``pad_id`` without a dtype is) would promote like a Python scalar, e.g. to int8 next to an int8 array."""
    dec, params = _steady_decoder()
    out = decode.generate(dec, params, np.full((2, 3), 2, np.int32), max_new_tokens=3, eos_id=0)
    assert out.tokens.dtype == jnp.int32 and not out.tokens.weak_type
    assert (out.tokens + jnp.int8(1)).dtype == jnp.int32
