"""Sampling (FlashInfer 0.6 ``flashinfer.sampling`` API): softmax with a temperature, one draw per row under top-k /
top-p / min-p filters, the filters' renormalised probabilities and masked logits, and the check of speculative
decoding's draft tokens.

Rows are ``[batch_size, vocab_size]``. The filters, as the ops define them (ties at a boundary are all kept):
top-k keeps entry i when fewer than k entries are larger; top-p keeps it when the entries larger than it hold less
than ``top_p`` of the row's mass (the smallest set of largest entries reaching ``top_p``); min-p keeps it when it is
at least ``min_p`` times the row's largest. A parameter is a Python number for every row or a ``[batch_size]``
tensor. ``top_k <= 0`` or ``>= vocab_size``, ``top_p >= 1`` and ``min_p <= 0`` switch a filter off.

Randomness is Philox4x32-10 keyed by ``seed`` and counted by ``offset`` (ints, or int64 device tensors of length 1 or
``batch_size``): the same pair gives the same draws on a device (CPU and CUDA draw from the same distribution by different
algorithms, so not the same values). Ints are copied to the device at each call, which a CUDA graph capture does not
allow: captured steps pass tensors. Without them, each call
draws a fresh pair on the device from ``generator`` (the device's default generator when ``None``) with
``torch.randint``, which ``torch.compile``, CUDA graphs (each replay draws anew) and ``torch.export`` all carry, so a
compiled or captured decode step samples differently every step with no host round trip. ``deterministic`` is
accepted for compatibility: every op here gives the same bits for the same inputs. ``check_nan=True`` tests the
input for NaN on the host (a device sync: eager only).
"""

from typing import Optional, Tuple, Union

import torch

__all__ = ["softmax", "sampling_from_probs", "sampling_from_logits", "top_p_sampling_from_probs",
           "top_k_sampling_from_probs", "min_p_sampling_from_probs", "top_k_top_p_sampling_from_probs",
           "top_k_top_p_sampling_from_logits", "top_k_renorm_probs", "top_p_renorm_probs", "top_k_mask_logits",
           "chain_speculative_sampling"]

Param = Union[torch.Tensor, float, int]


def _split(x, dtype: torch.dtype) -> Tuple[Optional[torch.Tensor], float]:
    """A filter parameter as (per-row tensor or None, scalar)."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype), 0
    return None, x


def _seed_offset(seed, offset, generator, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    if seed is None or offset is None:
        pair = torch.randint(0, 2**62, (2,), dtype=torch.int64, device=device, generator=generator)
        return pair[:1], pair[1:]
    if isinstance(seed, torch.Tensor) != isinstance(offset, torch.Tensor):
        raise ValueError("flashinfer.sampling: seed and offset must both be tensors or both be ints")
    if isinstance(seed, torch.Tensor):
        return seed, offset
    return (torch.tensor([int(seed)], dtype=torch.int64, device=device),
            torch.tensor([int(offset)], dtype=torch.int64, device=device))


def _check_nan(t: torch.Tensor, name: str, check_nan: bool) -> None:
    if check_nan and bool(torch.isnan(t).any()):
        raise ValueError(f"flashinfer.sampling: {name} contains NaN")


def _draw(probs, indices, top_k, top_p, min_p, generator, check_nan, seed, offset, return_valid):
    _check_nan(probs, "probs", check_nan)
    k_arr, k_val = _split(top_k, torch.int32)
    p_arr, p_val = _split(top_p, torch.float32)
    m_arr, m_val = _split(min_p, torch.float32)
    s, o = _seed_offset(seed, offset, generator, probs.device)
    samples, valid = torch.ops.flashinfer.sampling_from_probs(probs, indices, k_arr, int(k_val), p_arr,
                                                              float(p_val), m_arr, float(m_val), s, o)
    if indices is not None and indices.dtype != torch.int32:
        samples = samples.to(indices.dtype)  # upstream returns the indices' dtype
    return (samples, valid) if return_valid else samples


def softmax(logits: torch.Tensor, temperature: Optional[Union[torch.Tensor, float]] = None,
            enable_pdl: Optional[bool] = None) -> torch.Tensor:
    """float32 ``softmax(logits / temperature)`` over each row. ``temperature``: a float or a ``[batch_size]``
    tensor (default 1); a row whose temperature is ``<= 0`` gets probability 1 on its first largest logit (greedy).
    ``enable_pdl`` is accepted for compatibility (the kernels use programmatic dependent launch where it exists)."""
    t_arr, t_val = _split(1.0 if temperature is None else temperature, torch.float32)
    return torch.ops.flashinfer.softmax(logits, t_arr, float(t_val))


def sampling_from_probs(probs: torch.Tensor, indices: Optional[torch.Tensor] = None, deterministic: bool = True,
                        generator: Optional[torch.Generator] = None, check_nan: bool = False,
                        seed: Optional[Union[int, torch.Tensor]] = None,
                        offset: Optional[Union[int, torch.Tensor]] = None, return_valid: bool = False):
    """One draw per row of ``probs`` (float32, rows need not sum to 1): int32 ``[batch_size]`` (``indices``' dtype
    when given: draw b then reads row ``indices[b]``). ``return_valid`` adds a bool ``[batch_size]``: the row had a
    positive finite total (else the draw is its first largest entry)."""
    return _draw(probs, indices, 0, 1.0, 0.0, generator, check_nan, seed, offset, return_valid)


def sampling_from_logits(logits: torch.Tensor, indices: Optional[torch.Tensor] = None, deterministic: bool = True,
                         generator: Optional[torch.Generator] = None, check_nan: bool = False,
                         seed: Optional[Union[int, torch.Tensor]] = None,
                         offset: Optional[Union[int, torch.Tensor]] = None) -> torch.Tensor:
    """One draw per row of ``softmax(logits)``."""
    _check_nan(logits, "logits", check_nan)
    return _draw(softmax(logits), indices, 0, 1.0, 0.0, generator, False, seed, offset, False)


def top_p_sampling_from_probs(probs: torch.Tensor, top_p: Param, indices: Optional[torch.Tensor] = None,
                              deterministic: bool = True, generator: Optional[torch.Generator] = None,
                              check_nan: bool = False, seed: Optional[Union[int, torch.Tensor]] = None,
                              offset: Optional[Union[int, torch.Tensor]] = None, return_valid: bool = False):
    """One draw per row from the top-p set (nucleus sampling)."""
    return _draw(probs, indices, 0, top_p, 0.0, generator, check_nan, seed, offset, return_valid)


def top_k_sampling_from_probs(probs: torch.Tensor, top_k: Param, indices: Optional[torch.Tensor] = None,
                              deterministic: bool = True, generator: Optional[torch.Generator] = None,
                              check_nan: bool = False, seed: Optional[Union[int, torch.Tensor]] = None,
                              offset: Optional[Union[int, torch.Tensor]] = None, return_valid: bool = False):
    """One draw per row from the top-k entries."""
    return _draw(probs, indices, top_k, 1.0, 0.0, generator, check_nan, seed, offset, return_valid)


def min_p_sampling_from_probs(probs: torch.Tensor, min_p: Param, indices: Optional[torch.Tensor] = None,
                              deterministic: bool = True, generator: Optional[torch.Generator] = None,
                              check_nan: bool = False, seed: Optional[Union[int, torch.Tensor]] = None,
                              offset: Optional[Union[int, torch.Tensor]] = None, return_valid: bool = False):
    """One draw per row from the entries at least ``min_p`` times the row's largest."""
    return _draw(probs, indices, 0, 1.0, min_p, generator, check_nan, seed, offset, return_valid)


def top_k_top_p_sampling_from_probs(probs: torch.Tensor, top_k: Param, top_p: Param,
                                    indices: Optional[torch.Tensor] = None, filter_apply_order: str = "top_k_first",
                                    deterministic: bool = True, generator: Optional[torch.Generator] = None,
                                    check_nan: bool = False, seed: Optional[Union[int, torch.Tensor]] = None,
                                    offset: Optional[Union[int, torch.Tensor]] = None, return_valid: bool = False):
    """One draw per row under top-k and top-p. ``filter_apply_order="top_k_first"``: top-p over the top-k entries
    renormalised (:func:`top_k_renorm_probs`, then a top-p draw); ``"joint"``: both filters on the row as given,
    their intersection kept, in one op."""
    if filter_apply_order == "joint":
        return _draw(probs, indices, top_k, top_p, 0.0, generator, check_nan, seed, offset, return_valid)
    if filter_apply_order != "top_k_first":
        raise ValueError(f"flashinfer.sampling: filter_apply_order must be 'top_k_first' or 'joint', "
                         f"got {filter_apply_order!r}")
    _check_nan(probs, "probs", check_nan)
    # A filter switched off by a number leaves one: the draw needs no renormalised copy (top-p's kept set does not
    # change when the row is scaled, and a draw from the top-k renormalised is a top-k draw).
    if not isinstance(top_k, torch.Tensor) and not 0 < top_k < probs.shape[-1]:
        return _draw(probs, indices, 0, top_p, 0.0, generator, False, seed, offset, return_valid)
    if not isinstance(top_p, torch.Tensor) and top_p >= 1:
        return _draw(probs, indices, top_k, 1.0, 0.0, generator, False, seed, offset, return_valid)
    if indices is None or not isinstance(top_k, torch.Tensor):
        # One k for every draw: each row is renormalised once, however many draws read it.
        return _draw(top_k_renorm_probs(probs, top_k), indices, 0, top_p, 0.0, generator, False, seed, offset,
                     return_valid)
    # A k per draw: the rows the draws read, one copy per draw, each renormalised with its draw's k.
    out = _draw(top_k_renorm_probs(probs[indices.long()], top_k), None, 0, top_p, 0.0, generator, False, seed,
                offset, return_valid)
    if indices.dtype != torch.int32:
        out = (out[0].to(indices.dtype), out[1]) if return_valid else out.to(indices.dtype)
    return out


def top_k_top_p_sampling_from_logits(logits: torch.Tensor, top_k: Param, top_p: Param,
                                     indices: Optional[torch.Tensor] = None,
                                     filter_apply_order: str = "top_k_first", deterministic: bool = True,
                                     generator: Optional[torch.Generator] = None, check_nan: bool = False,
                                     seed: Optional[Union[int, torch.Tensor]] = None,
                                     offset: Optional[Union[int, torch.Tensor]] = None) -> torch.Tensor:
    """:func:`top_k_top_p_sampling_from_probs` over ``softmax(logits)``."""
    _check_nan(logits, "logits", check_nan)
    return top_k_top_p_sampling_from_probs(softmax(logits), top_k, top_p, indices, filter_apply_order,
                                           deterministic, generator, False, seed, offset)


def top_k_renorm_probs(probs: torch.Tensor, top_k: Param) -> torch.Tensor:
    """``probs`` with the entries outside each row's top-k zeroed and the rest renormalised to sum 1 (float32)."""
    k_arr, k_val = _split(top_k, torch.int32)
    return torch.ops.flashinfer.top_k_renorm_probs(probs, k_arr, int(k_val))


def top_p_renorm_probs(probs: torch.Tensor, top_p: Param, is_deterministic: bool = False) -> torch.Tensor:
    """``probs`` with the entries outside each row's top-p set zeroed and the rest renormalised to sum 1."""
    p_arr, p_val = _split(top_p, torch.float32)
    return torch.ops.flashinfer.top_p_renorm_probs(probs, p_arr, float(p_val))


def top_k_mask_logits(logits: torch.Tensor, top_k: Param) -> torch.Tensor:
    """``logits`` (any float dtype, kept) with the entries outside each row's top-k set to ``-inf``."""
    k_arr, k_val = _split(top_k, torch.int32)
    return torch.ops.flashinfer.top_k_mask_logits(logits, k_arr, int(k_val))


def chain_speculative_sampling(draft_probs: torch.Tensor, draft_token_ids: torch.Tensor, target_probs: torch.Tensor,
                               maybe_output_accepted_token_num: Optional[torch.Tensor] = None,
                               maybe_output_emitted_draft_token_num: Optional[torch.Tensor] = None,
                               deterministic: bool = True, generator: Optional[torch.Generator] = None,
                               seed: Optional[Union[int, torch.Tensor]] = None,
                               offset: Optional[Union[int, torch.Tensor]] = None):
    """Speculative sampling over a chain of ``n`` draft tokens a request: ``draft_probs`` float32 ``[batch, n,
    vocab]`` (the draft model's distributions), ``draft_token_ids`` ``[batch, n]`` (its tokens), ``target_probs``
    float32 ``[batch, n + 1, vocab]`` (the target model's, one more row). Draft token i is kept when
    ``u_i * draft_probs[b, i, t_i] < target_probs[b, i, t_i]`` (``u_i`` uniform in [0, 1); a token id outside the
    vocabulary is never kept); the first token not kept is replaced by a draw from ``max(target - draft, 0)`` at its
    position (from the target row when that holds no mass), and when all ``n`` are kept a bonus token is drawn from
    target row ``n``: each emitted token is distributed as the target model's. Returns ``(output_token_ids`` int32
    ``[batch, n + 1]`` (-1 past the drawn token), ``accepted`` (draft tokens kept, each judged on its own, as a
    measure of the two models' agreement), ``emitted`` (draft tokens emitted before the drawn one)``)``; given
    ``maybe_output_*`` tensors, the counts are added to them in place and they are returned."""
    s, o = _seed_offset(seed, offset, generator, draft_probs.device)
    out, accepted, emitted = torch.ops.flashinfer.chain_speculative_sampling(
        draft_probs, draft_token_ids.to(torch.int32), target_probs, s, o)
    if maybe_output_accepted_token_num is not None:
        accepted = maybe_output_accepted_token_num.add_(accepted)
    if maybe_output_emitted_draft_token_num is not None:
        emitted = maybe_output_emitted_draft_token_num.add_(emitted)
    return out, accepted, emitted
