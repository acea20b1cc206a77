"""The specification: plain PyTorch versions of every op, computed in float64 unless told otherwise.

Each function takes ``dtype``: float64 gives the reference; the input's own dtype gives the same computation
done in plain PyTorch at low precision, whose error sets the tolerance (DESIGN.md: ours <= 2x that, plus a
small floor).
"""

import math

import torch


# ---- norm ----

def rmsnorm(x, weight, eps=1e-6, gemma=False, dtype=torch.float64):
    x, w = x.to(dtype), weight.to(dtype)
    if gemma:
        w = w + 1
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def fused_add_rmsnorm(x, residual, weight, eps=1e-6, gemma=False, dtype=torch.float64):
    """Returns (new input, new residual)."""
    s = x.to(dtype) + residual.to(dtype)
    return rmsnorm(s, weight, eps, gemma, dtype), s


def layernorm(x, gamma, beta, eps=1e-6, dtype=torch.float64):
    x = x.to(dtype)
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * gamma.to(dtype) + beta.to(dtype)


# ---- activation ----

def _gelu_erf(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


ACTIVATIONS = {
    "silu_and_mul": lambda x: x * torch.sigmoid(x),
    "gelu_and_mul": _gelu_erf,
    "gelu_tanh_and_mul": _gelu_tanh,
}


def act_and_mul(name, x, dtype=torch.float64):
    x = x.to(dtype)
    d = x.shape[-1] // 2
    return ACTIVATIONS[name](x[..., :d]) * x[..., d:]


# ---- rope ----

def rope_frequencies(rotary_dim, rope_scale=1.0, rope_theta=1e4, llama31=None, dtype=torch.float64):
    """Inverse frequencies of the rotary_dim/2 pairs. llama31 = (low_freq_factor, high_freq_factor,
    old_context_len) applies the Llama 3.1 recipe by wavelength bands."""
    i = torch.arange(0, rotary_dim, 2, dtype=dtype)
    freq = 1.0 / (rope_theta ** (i / rotary_dim))
    if llama31 is None:
        return freq / rope_scale
    low, high, old = llama31
    wavelen = 2 * math.pi / freq
    smooth = (old / wavelen - low) / (high - low)
    blended = (1 - smooth) * freq / rope_scale + smooth * freq
    out = torch.where(wavelen > old / low, freq / rope_scale, blended)
    return torch.where(wavelen < old / high, freq, out)


def ragged_positions(indptr, offsets, nnz):
    """Position of every token of a ragged batch, or None for tokens outside every request."""
    pos = [None] * nnz
    for b in range(len(offsets)):
        for t in range(int(indptr[b]), int(indptr[b + 1])):
            pos[t] = int(offsets[b]) + t - int(indptr[b])
    return pos


def rotate(x, cos, sin, interleave, dtype=torch.float64):
    """x [nnz, H, D]; cos/sin [nnz, rotary_dim/2]; dims past rotary_dim are kept."""
    x = x.to(dtype)
    half = cos.shape[-1]
    c, s = cos.to(dtype)[:, None, :], sin.to(dtype)[:, None, :]
    rot = x[..., : 2 * half]
    if interleave:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).flatten(-2)
    else:
        x1, x2 = rot[..., :half], rot[..., half:]
        out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    return torch.cat([out, x[..., 2 * half:]], dim=-1)


def rope(x, positions, rotary_dim, interleave=False, rope_scale=1.0, rope_theta=1e4, llama31=None,
         dtype=torch.float64):
    """positions: list of int or None (None: token left unrotated). At low precision the angles are taken
    in float32 and cos/sin rounded to x's dtype, as a plain PyTorch model does."""
    angle_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    freq = rope_frequencies(rotary_dim, rope_scale, rope_theta, llama31, angle_dtype)
    pos = torch.tensor([0 if p is None else p for p in positions], dtype=angle_dtype)
    angle = pos[:, None] * freq[None, :]
    keep = torch.tensor([p is None for p in positions], dtype=torch.bool)[:, None]
    cos = torch.where(keep, 1.0, angle.cos()).to(dtype)
    sin = torch.where(keep, 0.0, angle.sin()).to(dtype)
    return rotate(x, cos, sin, interleave, dtype)


def cos_sin_cache(max_pos, rotary_dim, rope_theta=1e4):
    """The float32 [max_pos, rotary_dim] table (cos | sin) that vLLM-style models build."""
    freq = rope_frequencies(rotary_dim, 1.0, rope_theta)
    angle = torch.arange(max_pos, dtype=torch.float64)[:, None] * freq[None, :]
    return torch.cat([angle.cos(), angle.sin()], dim=-1).float()


def rope_with_cache(x, positions, cache, interleave, dtype=torch.float64):
    half = cache.shape[1] // 2
    rows = cache[positions.long()]
    return rotate(x, rows[:, :half], rows[:, half:], interleave, dtype)


# ---- page ----

def seq_lens(kv_indptr, kv_last_page_len, page_size):
    return [max(0, (int(kv_indptr[b + 1]) - int(kv_indptr[b]) - 1) * page_size + int(kv_last_page_len[b]))
            if int(kv_indptr[b + 1]) > int(kv_indptr[b]) else 0 for b in range(len(kv_last_page_len))]


def append_paged_kv_cache(k_pages, v_pages, key, value, batch_indices, positions, kv_indices, kv_indptr,
                          kv_last_page_len):
    """k_pages/v_pages: [P, page, H, D] (logical NHD order), updated in place one token at a time; a token whose
    request, position or page is out of range is skipped."""
    page = k_pages.shape[1]
    lens = seq_lens(kv_indptr, kv_last_page_len, page)
    for i in range(key.shape[0]):
        b, pos = int(batch_indices[i]), int(positions[i])
        if not (0 <= b < len(lens)) or not (0 <= pos < lens[b]):
            continue
        slot = int(kv_indptr[b]) + pos // page
        if slot >= len(kv_indices):
            continue
        p = int(kv_indices[slot])
        if not (0 <= p < k_pages.shape[0]):
            continue
        k_pages[p, pos % page] = key[i]
        v_pages[p, pos % page] = value[i]


# ---- decode ----

def _rope_rows(x, positions, rope_scale, rope_theta):
    """NeoX-style RoPE of rows x [L, ..., D] at the given positions (float64)."""
    d = x.shape[-1]
    freq = rope_frequencies(d, rope_scale, rope_theta)
    ang = torch.as_tensor(positions, dtype=torch.float64)[:, None] * freq[None, :]
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (d // 2,)
    c, s = ang.cos().view(shape), ang.sin().view(shape)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def decode_one(q, k, v, sm_scale, window_left=-1, logits_soft_cap=0.0, rope=None, dtype=torch.float64):
    """One request: q [Hq, D], k/v [L, Hkv, D] (already dequantised). rope = (scale, theta) applies RoPE to q at
    position L - 1 and to k at positions 0..L-1. Returns out [Hq, D], lse [Hq] (log base 2). RoPE angles are
    always float64; the rest is computed in `dtype`."""
    q, k, v = q.double(), k.double(), v.double()
    hq, d = q.shape
    length, hkv = k.shape[0], k.shape[1]
    if length == 0:
        return torch.zeros(hq, d, dtype=torch.float64), torch.full((hq,), float("-inf"), dtype=torch.float64)
    if rope is not None:
        q = _rope_rows(q[None], [length - 1], *rope)[0]
        k = _rope_rows(k, list(range(length)), *rope)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    kh = k.repeat_interleave(hq // hkv, dim=1)  # [L, Hq, D]
    vh = v.repeat_interleave(hq // hkv, dim=1)
    s = torch.einsum("hd,lhd->hl", q, kh) * sm_scale
    if logits_soft_cap > 0:
        s = logits_soft_cap * torch.tanh(s / logits_soft_cap)
    if window_left >= 0:
        keep = torch.arange(length) >= length - 1 - window_left
        s = s.masked_fill(~keep[None, :], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.softmax(s, dim=-1)
    return torch.einsum("hl,lhd->hd", p, vh).double(), lse.double() / math.log(2)


def paged_kv(k_pages, v_pages, indptr, indices, last_page_len, b):
    """Request b's K and V [L, Hkv, D] gathered from [P, page, Hkv, D] pages."""
    page = k_pages.shape[1]
    pages = [int(p) for p in indices[int(indptr[b]) : int(indptr[b + 1])]]
    if not pages:
        return k_pages[:0, 0], v_pages[:0, 0]
    length = (len(pages) - 1) * page + int(last_page_len[b])
    k = torch.cat([k_pages[p] for p in pages])[:length]
    v = torch.cat([v_pages[p] for p in pages])[:length]
    return k, v


# ---- prefill ----

def prefill_one(q, k, v, sm_scale, causal=False, mask=None, window_left=-1, logits_soft_cap=0.0, rope=None,
                dtype=torch.float64):
    """One request: q [qo_len, Hq, D], k/v [kv_len, Hkv, D], mask [qo_len, kv_len] bool (or None). Query i sees
    key j when j <= kv_len - qo_len + i (causal), j >= kv_len - qo_len + i - window_left (window_left >= 0) and
    mask[i, j]. rope = (scale, theta) applies RoPE to query i at position kv_len - qo_len + i and to key j at j.
    Returns out [qo_len, Hq, D] and lse [qo_len, Hq] (log base 2); a row that sees no key gives 0 and -inf. RoPE
    angles are float64; the rest is computed in `dtype`."""
    qo_len, hq, d = q.shape
    kv_len, hkv = k.shape[0], k.shape[1]
    if rope is not None:
        q = _rope_rows(q.double(), list(range(kv_len - qo_len, kv_len)), *rope)
        k = _rope_rows(k.double(), list(range(kv_len)), *rope)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    kh, vh = k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, kh) * sm_scale
    if logits_soft_cap > 0:
        s = logits_soft_cap * torch.tanh(s / logits_soft_cap)
    i = torch.arange(qo_len)[:, None]
    j = torch.arange(kv_len)[None, :]
    keep = torch.ones(qo_len, kv_len, dtype=torch.bool)
    if causal:
        keep &= j <= kv_len - qo_len + i
    if window_left >= 0:
        keep &= j >= kv_len - qo_len + i - window_left
    if mask is not None:
        keep &= mask.bool()
    s = s.masked_fill(~keep[None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [Hq, qo_len]
    p = torch.exp(s - torch.where(torch.isinf(lse), 0, lse)[..., None])
    out = torch.einsum("hqk,khd->qhd", p, vh)
    return out.double(), (lse.double() / math.log(2)).transpose(0, 1)


# ---- cascade ----

def merge_states(v, s, dtype=torch.float64):
    """Attention states over disjoint KV merged into the state over their union: v [seq, N, H, D] with s [seq, N,
    H], the log2-sum-exp of each state's scores. s' = log2 sum_k 2^s_k, v' = sum_k 2^(s_k - s') v_k; a row whose
    states are all -inf gives 0 and -inf. The weights are computed in float64 (dtype float64) or float32 (s is
    float32 data), the weighted sum of v in `dtype`."""
    s = s.to(torch.float64 if dtype == torch.float64 else torch.float32)
    merged = torch.logsumexp(s * math.log(2), dim=1) / math.log(2)
    w = torch.exp2(s - merged.unsqueeze(1))
    w = torch.where(torch.isneginf(merged).unsqueeze(1), 0, w)
    out = (w.to(dtype).unsqueeze(-1) * v.to(dtype)).sum(1)
    return out, merged


# ---- sampling ----

def softmax(logits, temperature):
    """float64 softmax(logits / t) per row, t a float or [batch] tensor; t <= 0: one-hot at the first largest."""
    x = logits.double()
    t = torch.as_tensor(temperature, dtype=torch.float64).expand(x.shape[0]).clone()
    greedy = t <= 0
    out = torch.softmax(x / torch.where(greedy, 1.0, t)[:, None], dim=-1)
    hot = torch.zeros_like(x).scatter_(1, x.argmax(1, keepdim=True), 1.0)
    return torch.where(greedy[:, None], hot, out)


def kept(probs, top_k=0, top_p=1.0, min_p=0.0):
    """The filters' kept entries, bool [batch, vocab], from their definitions in float64: top-k keeps i when fewer
    than k entries are larger than p_i; top-p when the entries larger than p_i hold less than top_p of the row's
    mass (top_p <= 0: the largest only); min-p when p_i >= min_p * max. Parameters: numbers or [batch] tensors;
    top_k <= 0 or >= vocab, top_p >= 1, min_p <= 0 are off."""
    p = probs.double()
    b, v = p.shape
    k = torch.as_tensor(top_k).expand(b)
    tp = torch.as_tensor(top_p, dtype=torch.float64).expand(b)
    mp = torch.as_tensor(min_p, dtype=torch.float64).expand(b)
    # Per entry, the count and the mass of the entries larger than it, from the row sorted descending: the larger
    # entries are the first count_gt of that order, their mass the exclusive running sum there.
    desc = p.sort(-1, descending=True).values
    count_gt = v - torch.searchsorted(desc.flip(-1), p, right=True)
    before = torch.cat([torch.zeros(b, 1, dtype=p.dtype), desc.cumsum(-1)[:, :-1]], -1)
    mass_gt = before.gather(-1, count_gt)
    keep = torch.ones(b, v, dtype=torch.bool)
    k_on = (k > 0) & (k < v)
    keep &= ~k_on[:, None] | (count_gt < k[:, None])
    p_keep = torch.where(tp[:, None] > 0, mass_gt < tp[:, None] * p.sum(-1, keepdim=True), count_gt == 0)
    keep &= ~(tp < 1)[:, None] | p_keep
    keep &= ~(mp > 0)[:, None] | (p >= mp[:, None] * p.max(-1, keepdim=True).values)
    return keep


def renorm(probs, keep):
    """probs restricted to `keep`, each row over its kept mass (float64)."""
    p = torch.where(keep, probs.double(), 0.0)
    return p / p.sum(-1, keepdim=True)


def speculative_keep_rate(target, draft):
    """The probability that speculative sampling keeps a draft token drawn from `draft` at a position whose target
    distribution is `target` (rows normalised, float64): sum_v min(target_v, draft_v)."""
    return torch.minimum(target.double(), draft.double()).sum(-1)


def speculative_residual(target, draft):
    """The distribution a rejected position's token is drawn from: max(target - draft, 0) over its mass."""
    r = (target.double() - draft.double()).clamp_min(0)
    return r / r.sum(-1, keepdim=True)
