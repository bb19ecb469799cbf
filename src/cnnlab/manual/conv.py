"""The layers with weights, forward and backward by hand: ``linear``, ``conv2d``, ``conv1d``.

Hu, lecture 5, "Convolutional layer", with y^(l-1) the layer's input, w its kernel and
δ^(l) = ∂E/∂y^(l) the local sensitivity that arrives from the layer above:

    forward      y_q = Σ_p y_p *valid rot180(w_qp) + b_q     (a cross-correlation of y_p with w_qp)
    gradient     ∂E/∂w_qp = y_p *valid rot180(δ_q)          (X ⋆ δ: the input correlated with δ)
                 ∂E/∂b_q  = Σ_ij (δ_q)_ij
    sensitivity  δ_p^(l-1) = Σ_q δ_q *full w_qp              (δ full-correlated with rot180(w))

We compute all three as matrix products (im2col). ``unfold`` cuts every receptive field of the
padded input into one column: cols is (N, C·kh·kw, L) for L = Ho·Wo output positions. Then

    Y      = W · cols                 one dot product per output pixel (the forward sum)
    dW     = Σ_n δ_n · cols_nᵀ        one dot product per weight: the valid correlation X ⋆ δ
    dcols  = Wᵀ · δ,  dX = fold(dcols)

``fold`` (col2im) is the adjoint of ``unfold``: it adds every column back onto the pixels it was
cut from. Each input pixel thus receives Σ w·δ over every window that covered it, which is exactly
the full convolution δ *full w of the lecture (rot180 appears because a pixel at offset (i, j) in a
window meets the kernel entry (i, j), seen from the pixel's side as the entry (kh-1-i, kw-1-j)).
With stride s > 1 it is the full convolution of δ dilated with s-1 zeros between its entries
(Hu, lecture 5, "Extensions: conv with stride ≠ 1").

``_im2col`` and ``_col2im`` are our own unfold/fold: a strided view copied once, and a loop over
the kh·kw kernel offsets (never over pixels or samples). On LeNet-5's shapes they measured 3-8x
faster than ``torch.nn.functional.unfold/fold`` on the CPU. They only move data; the arithmetic is
the matmuls.

Stride-1 convs take a faster route to the same three products (``_flat_cols``): the columns are
cut from each padded plane read as one flat vector of pixels, so that a kernel entry (i, j) is the
same flat shift for every output pixel. Copying the columns and adding them back (col2im) then move
long contiguous stretches, and each direction is one matrix product for the whole batch. The big
temporaries live in per-thread scratch buffers (``_scratch``): allocating them fresh each step cost
more than the products themselves.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from cnnlab.manual._amp import amp_backward, amp_forward, autocast_enabled

IntPair = int | tuple[int, int]


def _pair(value: IntPair | list[int], name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``; a 1- or 2-sequence passes through as a pair."""
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return (value[0], value[0])
    if len(value) != 2:
        raise RuntimeError(f"{name} must be an int or a pair of ints; received {name}={value}")
    return value  # type: ignore[return-value]


def _zero_pad(x: torch.Tensor, pads: tuple[int, int, int, int], value: float = 0.0) -> torch.Tensor:
    """Pad the last two dims by (top, bottom, left, right); a copy only when some pad is non-zero."""
    top, bottom, left, right = pads
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def _crop(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo ``_zero_pad``: drop the padded border (the gradient w.r.t. the zeros is discarded)."""
    top, bottom, left, right = pads
    h, w = x.shape[-2:]
    return x[..., top:h - bottom, left:w - right]


def _out_size(padded: int, kernel: int, stride: int, dilation: int) -> int:
    """floor((W + 2P - D(F-1) - 1) / S) + 1 for an already padded size (Hu's lecture 5 output size)."""
    return (padded - dilation * (kernel - 1) - 1) // stride + 1


def _windows(xp: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int]) -> torch.Tensor:
    """A (N, C, kh, kw, Ho, Wo) view of every receptive field of ``xp`` (N, C, Hp, Wp); no copy."""
    n, c, hp, wp = xp.shape
    ho = _out_size(hp, kernel[0], stride[0], dilation[0])
    wo = _out_size(wp, kernel[1], stride[1], dilation[1])
    sn, sc, sh, sw = xp.stride()
    return xp.as_strided(
        (n, c, kernel[0], kernel[1], ho, wo),
        (sn, sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1]),
        xp.storage_offset(),
    )


def _im2col(xp: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
            dilation: tuple[int, int]) -> torch.Tensor:
    """``F.unfold`` of an already padded input: (N, C·kh·kw, Ho·Wo), rows ordered (c, i, j)."""
    v = _windows(xp, kernel, stride, dilation)
    n, c, kh, kw, ho, wo = v.shape
    return v.reshape(n, c * kh * kw, ho * wo)


def _col2im(cols: torch.Tensor, size: tuple[int, int], kernel: tuple[int, int],
            stride: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """``F.fold``, the adjoint of ``_im2col``: add each column entry back onto its pixel.

    cols is (N, C·kh·kw, L) or (N, C, kh, kw, Ho, Wo); the result is (N, C, *size). Overlapping
    windows add up, which is what turns Wᵀδ into the full convolution of the module docstring.
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    ho = _out_size(size[0], kh, sh, dh)
    wo = _out_size(size[1], kw, sw, dw)
    cols = cols.reshape(cols.shape[0], -1, kh, kw, ho, wo)
    out = cols.new_zeros(cols.shape[0], cols.shape[1], *size)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw].add_(cols[:, :, i, j])
    return out


# --------------------------------------------------------------------------------------------
# linear: y = x Wᵀ + b (Ryu, ch. 3 and Hu, lecture 5, the fully connected layer)
# --------------------------------------------------------------------------------------------


class _Linear(torch.autograd.Function):
    """y = x Wᵀ + b; δx = δ W, ∂E/∂W = δᵀ x (summed over the batch), ∂E/∂b = Σ_batch δ."""

    @staticmethod
    @amp_forward
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = x.matmul(weight.t())  # bfloat16 under autocast; the bias follows, as in torch's linear
        return y + bias.to(y.dtype) if bias is not None else y

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, delta):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = delta.matmul(weight)
        # Every leading dim of x is a batch dim: flatten them so dW is one matmul.
        delta2 = delta.reshape(-1, delta.shape[-1])  # (B, out)
        if ctx.needs_input_grad[1]:
            grad_w = delta2.t().matmul(x.reshape(-1, x.shape[-1]))  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = delta2.sum(0)
        return grad_x, grad_w, grad_b


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.nn.functional.linear`` with a hand-written backward; input is (*, in_features)."""
    if input.shape[-1] != weight.shape[-1]:
        raise RuntimeError(
            f"linear: input has {input.shape[-1]} features but weight {tuple(weight.shape)} "
            f"expects {weight.shape[-1]}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise RuntimeError(f"linear: bias must have shape ({weight.shape[0]},); received {tuple(bias.shape)}")
    return _Linear.apply(input, weight, bias)


# --------------------------------------------------------------------------------------------
# conv2d / conv1d
# --------------------------------------------------------------------------------------------


# Scratch memory for the big temporaries (im2col's columns, Wᵀδ before col2im). A fresh 10 MB
# tensor per call costs more than the matmul that fills it: the allocator hands it back to the
# OS and every page faults in again on first touch (measured on LeNet-5's second conv: copying the
# columns 7.0 ms fresh against 0.9 ms into a reused buffer, Wᵀδ 12 ms against 1.2 ms). So each
# thread keeps one buffer per slot, grown on demand, and the ops below only ever use it for values
# that do not leave the function (the result is always a fresh tensor). Beyond _SCRATCH_MAX_BYTES
# a temporary is allocated normally, so a big network does not pin its largest im2col forever.
_SCRATCH_MAX_BYTES = 64 * 2 ** 20
_scratch_local = threading.local()


def _scratch(slot: str, shape: tuple[int, ...], like: torch.Tensor, owner: object = None) -> torch.Tensor:
    """An uninitialized (shape) tensor with ``like``'s dtype and device, reused across calls.

    ``owner`` (any object) marks what the caller writes there, for ``_scratch_held``; a call
    without one marks the slot as overwritten."""
    numel = 1
    for d in shape:
        numel *= d
    if numel * like.element_size() > _SCRATCH_MAX_BYTES:
        return like.new_empty(shape)
    buffers = getattr(_scratch_local, "buffers", None)
    if buffers is None:
        buffers = _scratch_local.buffers = {}
        _scratch_local.owners = {}
    key = (slot, like.device, like.dtype)
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        buf = buffers[key] = like.new_empty(numel)
    _scratch_local.owners[key] = owner
    return buf[:numel].view(shape)


def _scratch_held(slot: str, shape: tuple[int, ...], like: torch.Tensor, owner: object) -> torch.Tensor | None:
    """The (shape) view of the slot if the last write to it was ``owner``'s, else None."""
    key = (slot, like.device, like.dtype)
    owners = getattr(_scratch_local, "owners", {})
    if owner is None or owners.get(key) is not owner:
        return None
    numel = 1
    for d in shape:
        numel *= d
    return _scratch_local.buffers[key][:numel].view(shape)


def release_scratch() -> None:
    """Free this thread's scratch buffers (they are rebuilt on the next call)."""
    _scratch_local.buffers = {}
    _scratch_local.owners = {}


def _flat_cols(xq: torch.Tensor, kernel: tuple[int, int], dilation: tuple[int, int], ho: int,
               owner: object = None) -> torch.Tensor:
    """im2col for stride 1 on flattened rows: (C·kh·kw, N·Ho·Wp), rows ordered (c, i, j).

    ``xq`` (N, C, Hp + 1, Wp) is the padded input with one spare zero row, each (n, c) plane
    contiguous. Read as a flat vector of Hp·Wp pixels, the window of output pixel (y, x) meets
    kernel entry (i, j) at ``y·Wp + x + i·dh·Wp + j·dw``: the same flat shift for every pixel.
    So we compute Ho·Wp outputs per plane, one per position p = y·Wp + x of a padded row, and
    the row (c, i, j) of cols is one contiguous slice of the plane starting at the shift. The
    last Wp - Wo outputs of each row straddle two image rows and are thrown away (they cost
    Wp/Wo - 1 more multiply-adds; the spare row keeps the last one inside the buffer). In
    exchange, copying the columns and adding them back in ``_flat_col2im`` run over long
    contiguous stretches instead of Wo-pixel pieces.

    With ``owner`` (a token the forward keeps on its ctx), the columns the forward cut are
    reused as they are when nothing has written to the scratch buffer since: the backward of a
    network's last conv follows its forward with no other conv in between, and so skips a
    kh·kw-fold copy of its input.
    """
    n, c, hq, wp = xq.shape
    sn, sc = xq.stride()[:2]
    shape = (c, kernel[0], kernel[1], n, ho * wp)
    flat = (c * kernel[0] * kernel[1], n * ho * wp)
    held = _scratch_held("cols", shape, xq, owner)
    if held is not None:
        return held.view(flat)
    view = xq.as_strided(shape, (sc, dilation[0] * wp, dilation[1], sn, 1), xq.storage_offset())
    return _scratch("cols", shape, xq, owner).copy_(view).view(flat)


def _flat_col2im(dcols: torch.Tensor, shape: tuple[int, int, int, int], kernel: tuple[int, int],
                 dilation: tuple[int, int], ho: int) -> torch.Tensor:
    """The adjoint of ``_flat_cols``: (C·kh·kw, N·Ho·Wp) -> (C, N, Hp + 1, Wp), adding each row
    back at its flat shift (one contiguous add per kernel entry)."""
    n, c, hq, wp = shape
    kh, kw = kernel
    length = ho * wp
    dcols = dcols.view(c, kh, kw, n, length)
    out = _scratch("image", (c, n, hq * wp), dcols).zero_()  # the caller copies out what it keeps
    for i in range(kh):
        for j in range(kw):
            shift = i * dilation[0] * wp + j * dilation[1]
            out[:, :, shift:shift + length].add_(dcols[:, i, j])
    return out.view(c, n, hq, wp)


# A chunk of Wᵀδ that stays in a core's L2 cache while col2im adds it back (see _flat_input_grad).
_CHUNK_BYTES = 2 * 2 ** 20


def _channels_per_chunk(channels: int, channel_bytes: int, delta_bytes: int) -> int:
    """How many of a group's input channels one chunk of Wᵀ · δ covers: as many as fit in
    _CHUNK_BYTES (at least one) while δ fits there too, else all of them (the plain form)."""
    if delta_bytes > _CHUNK_BYTES:
        return channels
    return max(1, min(channels, _CHUNK_BYTES // channel_bytes))


def _flat_input_grad(weight: torch.Tensor, dflat: torch.Tensor, shape: tuple[int, int, int, int],
                     dilation: tuple[int, int], groups: int, ho: int) -> torch.Tensor:
    """δ^(l-1) = Σ_q δ_q *full w_qp on the flat grid: (C, N, Hp + 1, Wp) in the "image" scratch slot.

    The plain form is one product for every input channel at once, dcols = Wᵀ · δ, then
    ``_flat_col2im``. Here we follow the lecture's formula one input channel p (or a few) at a time:
    dcols_p = (w_·p)ᵀ · δ holds exactly the rows (p, i, j) of Wᵀ · δ (a row of a product only
    depends on that row of the left factor), and col2im adds row (p, i, j) onto plane p only, in
    the same (i, j) order, so the planes come out the same. What changes is the memory: the
    (C·kh·kw, N·Ho·Wp) block of Wᵀ · δ (10.7 MB on LeNet-5's second conv) is never written whole;
    each chunk (1.8 MB there) is added back while it is still in the cache, and δ, read once per
    chunk, stays there too. On LeNet-5 (one thread) the chunked form ran faster than the plain
    one in 5 of 6 paired runs of separate processes, by 1-5% of a training step: within the
    machine's noise, but never clearly slower (alone, the two input-gradient calls measured 2.65
    ms plain against 3.0 ms chunked, as the plain form's big block is still cached there).
    Chunking only pays while δ itself fits the cache, so a larger δ takes the plain form (one chunk).
    """
    n, c, hq, wp = shape
    o, cg, kh, kw = weight.shape
    taps = kh * kw
    length = ho * wp
    og = o // groups
    wmat = weight.reshape(groups, og, cg * taps)
    delta_g = dflat.view(groups, og, n * length)
    per_chunk = _channels_per_chunk(cg, taps * n * length * dflat.element_size(),
                                    dflat.numel() * dflat.element_size())
    if per_chunk == cg:  # the plain form: all of Wᵀδ, then col2im
        dcols = _grouped_mm(wmat.transpose(1, 2), delta_g, "product")  # (G, C/G·kh·kw, N·Ho·Wp)
        return _flat_col2im(dcols, shape, (kh, kw), dilation, ho)
    out = _scratch("image", (c, n, hq * wp), dflat).zero_()  # the caller copies out what it keeps
    scratch_ok = wmat.dtype == dflat.dtype and not autocast_enabled(dflat.device.type)
    for g in range(groups):
        for p0 in range(0, cg, per_chunk):
            p1 = min(cg, p0 + per_chunk)
            w_chunk = wmat[g, :, p0 * taps:p1 * taps].t()  # (channels·kh·kw, O/G): rows (p, i, j)
            if scratch_ok:
                dcols = _scratch("product", ((p1 - p0) * taps, n * length), dflat)
                torch.mm(w_chunk, delta_g[g], out=dcols)
            else:
                dcols = torch.mm(w_chunk, delta_g[g])
            rows = dcols.view(p1 - p0, taps, n, length).unbind(1)  # one view per kernel entry (i, j)
            planes = out.narrow(0, g * cg + p0, p1 - p0)  # (channels, N, (Hp + 1)·Wp)
            for i in range(kh):
                for j in range(kw):
                    shift = i * dilation[0] * wp + j * dilation[1]
                    planes.narrow(2, shift, length).add_(rows[i * kw + j])
    return out.view(c, n, hq, wp)


def _grouped_mm(a: torch.Tensor, b: torch.Tensor, scratch: str | None = None) -> torch.Tensor:
    """(G, m, k) @ (G, k, n); a plain ``mm`` for one group (bmm is much slower on the CPU here).

    With ``scratch``, the product is written into that scratch slot (the caller must not let it
    escape); skipped under autocast or mixed dtypes, where the product's dtype is not a's."""
    out = None
    if scratch is not None and a.dtype == b.dtype and not autocast_enabled(a.device.type):
        out = _scratch(scratch, (a.shape[0], a.shape[1], b.shape[2]), a)
    if a.shape[0] == 1:
        if out is None:
            return torch.mm(a[0], b[0]).unsqueeze(0)
        torch.mm(a[0], b[0], out=out[0])
        return out
    return torch.bmm(a, b) if out is None else torch.bmm(a, b, out=out)


class _Conv2d(torch.autograd.Function):
    """Grouped, strided, dilated, zero-padded 2-D cross-correlation; see the module docstring.

    Stride 1 (every conv of LeNet-5, VGG, most of ResNet) runs on ``_flat_cols``: one matrix
    product for the whole batch in each direction. Other strides cut the windows with
    ``_im2col`` (one product per sample)."""

    @staticmethod
    @amp_forward
    def forward(ctx, x, weight, bias, stride, pads, dilation, groups):
        if stride == (1, 1):
            return _Conv2d._forward_flat(ctx, x, weight, bias, pads, dilation, groups)
        n, c, _, _ = x.shape
        o, cg, kh, kw = weight.shape
        xp = _zero_pad(x, pads)
        hp, wp = xp.shape[-2:]
        ho = _out_size(hp, kh, stride[0], dilation[0])
        wo = _out_size(wp, kw, stride[1], dilation[1])
        k = cg * kh * kw
        cols = _im2col(xp, (kh, kw), stride, dilation)  # (N, C·kh·kw, L)
        cols = cols.view(n, groups, k, ho * wo)  # channels of one group are contiguous
        wmat = weight.reshape(groups, o // groups, k)  # (G, O/G, K); reshape: weights may be channels_last
        y = torch.matmul(wmat, cols).view(n, o, ho, wo)  # (N, G, O/G, L) -> (N, O, Ho, Wo)
        if bias is not None:
            y.add_(bias.view(1, o, 1, 1))  # y is fresh: add in place
        # Keep x, not cols: cols is kh·kw times larger, and torch keeps only x too.
        ctx.save_for_backward(x, weight)
        ctx.flat = False
        ctx.conf = (stride, pads, dilation, groups, (hp, wp), (ho, wo), bias is not None)
        return y

    @staticmethod
    def _forward_flat(ctx, x, weight, bias, pads, dilation, groups):
        n, c, h, w = x.shape
        o, cg, kh, kw = weight.shape
        top, bottom, left, right = pads
        hp, wp = h + top + bottom, w + left + right
        ho, wo = hp - dilation[0] * (kh - 1), wp - dilation[1] * (kw - 1)
        # One spare zero row at the bottom: the thrown-away outputs of the last row read into it.
        xq = F.pad(x, (left, right, top, bottom + 1)).contiguous()
        k = cg * kh * kw
        ctx.cols_owner = object()  # marks the columns in the scratch buffer as this call's
        cols = _flat_cols(xq, (kh, kw), dilation, ho, ctx.cols_owner).view(groups, k, -1)  # (G, K, N·Ho·Wp)
        wmat = weight.reshape(groups, o // groups, k)
        ybuf = _grouped_mm(wmat, cols, "product")  # (G, O/G, N·Ho·Wp) = (O, N, Ho, Wp): W · cols for the whole batch
        valid = ybuf.view(o, n, ho, wp)[..., :wo].permute(1, 0, 2, 3)  # drop the straddling outputs
        y = torch.empty((n, o, ho, wo), dtype=ybuf.dtype, device=ybuf.device)
        if bias is not None:
            torch.add(valid, bias.view(1, o, 1, 1), out=y)  # copy out and add the bias in one pass
        else:
            y.copy_(valid)
        ctx.save_for_backward(xq, weight)  # the padded input: only one spare row more than x
        ctx.flat = True
        ctx.conf = (pads, dilation, groups, (h, w), (ho, wo), bias is not None)
        return y

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, delta):
        if ctx.flat:
            return _Conv2d._backward_flat(ctx, delta)
        x, weight = ctx.saved_tensors
        stride, pads, dilation, groups, (hp, wp), (ho, wo), has_bias = ctx.conf
        n, c = x.shape[:2]
        o, cg, kh, kw = weight.shape
        k = cg * kh * kw
        delta_g = delta.reshape(n, groups, o // groups, ho * wo)  # (N, G, O/G, L)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            # ∂E/∂w = y *valid rot180(δ) = X ⋆ δ: correlate each input window with δ, summed over
            # the batch and the L positions, one matmul per group.
            cols = _im2col(_zero_pad(x, pads), (kh, kw), stride, dilation).view(n, groups, k, ho * wo)
            # One (O/G, L) @ (L, K) product per sample and group, then the sum over the batch
            # (measured 4x faster than a single einsum that first permutes both operands).
            grad_w = torch.matmul(delta_g, cols.transpose(-1, -2)).sum(0).reshape(weight.shape)
        if ctx.needs_input_grad[0]:
            # δ^(l-1) = δ *full w: Wᵀδ gives each window's share, fold sums the shares per pixel.
            wmat = weight.reshape(groups, o // groups, k)
            dcols = torch.matmul(wmat.transpose(1, 2), delta_g)  # (N, G, K, L)
            grad_xp = _col2im(dcols, (hp, wp), (kh, kw), stride, dilation)  # (N, C, Hp, Wp)
            grad_x = _crop(grad_xp, pads)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = delta.sum((0, 2, 3))  # ∂E/∂b_q = Σ_ij (δ_q)_ij
        return grad_x, grad_w, grad_b, None, None, None, None

    @staticmethod
    def _backward_flat(ctx, delta):
        xq, weight = ctx.saved_tensors
        pads, dilation, groups, (h, w), (ho, wo), has_bias = ctx.conf
        n, c, hq, wp = xq.shape
        o, cg, kh, kw = weight.shape
        k = cg * kh * kw
        # δ on the Ho·Wp grid of the forward's products, zero at the thrown-away outputs so
        # that they add nothing to either gradient.
        dpad = _scratch("delta", (o, n, ho, wp), delta)
        dpad[..., wo:].zero_()
        dpad[..., :wo].copy_(delta.permute(1, 0, 2, 3))
        dflat = dpad.view(groups, o // groups, n * ho * wp)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            # ∂E/∂w = X ⋆ δ: every window times δ, summed over the batch and the positions, as one
            # product; computed as (cols · δᵀ)ᵀ, which measured 1.4-2x faster than δ · colsᵀ.
            cols = _flat_cols(xq, (kh, kw), dilation, ho, ctx.cols_owner).view(groups, k, -1)
            grad_w = _grouped_mm(cols, dflat.transpose(1, 2)).transpose(1, 2).reshape(weight.shape)
        if ctx.needs_input_grad[0]:
            # δ^(l-1) = δ *full w: Wᵀδ gives each window's share, col2im sums the shares per pixel,
            # one input channel at a time (see _flat_input_grad).
            grad_xq = _flat_input_grad(weight, dflat, (n, c, hq, wp), dilation, groups, ho)  # (C, N, Hp + 1, Wp)
            top, left = pads[0], pads[2]
            grad_x = torch.empty((n, c, h, w), dtype=grad_xq.dtype, device=grad_xq.device)
            grad_x.copy_(grad_xq[:, :, top:top + h, left:left + w].permute(1, 0, 2, 3))
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = delta.sum((0, 2, 3))  # ∂E/∂b_q = Σ_ij (δ_q)_ij
        return grad_x, grad_w, grad_b, None, None, None, None


def _same_pads(kernel: int, dilation: int) -> tuple[int, int]:
    """Padding that keeps the size at stride 1; PyTorch puts the odd extra pixel on the far side."""
    total = dilation * (kernel - 1)
    return total // 2, total - total // 2


def _check_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int,
                spatial: int, name: str) -> None:
    """Raise the RuntimeError that torch.nn.functional raises for the same mistake."""
    if x.dim() != spatial + 2:
        raise RuntimeError(
            f"Expected {spatial + 1}D (unbatched) or {spatial + 2}D (batched) input to {name}, "
            f"but got input of size: {list(x.shape)}"
        )
    if weight.dim() != spatial + 2:
        raise RuntimeError(f"{name}: weight must be {spatial + 2}-D; received size {list(weight.shape)}")
    if not isinstance(groups, int) or groups < 1:
        raise RuntimeError(f"non-positive groups is not supported; received groups={groups}")
    if weight.shape[0] % groups != 0:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
            f"but got weight of size {list(weight.shape)} instead"
        )
    if x.shape[1] != weight.shape[1] * groups:
        raise RuntimeError(
            f"Given groups={groups}, weight of size {list(weight.shape)}, expected input{list(x.shape)} "
            f"to have {weight.shape[1] * groups} channels, but got {x.shape[1]} channels instead"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise RuntimeError(
            f"Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional with "
            f"{weight.shape[0]} elements, but got bias of size {list(bias.shape)} instead"
        )


def _resolve_padding(padding: str | IntPair, kernel: tuple[int, int], stride: tuple[int, int],
                     dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """``padding`` (int, pair, "valid" or "same") as (top, bottom, left, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise RuntimeError(f"Invalid padding string: {padding!r}; valid: 'same', 'valid'")
        if stride != (1, 1):
            raise RuntimeError("padding='same' is not supported for strided convolutions")
        # Hu, lecture 5, "Extensions: preserving the spatial size with 'same' mode convolution".
        return (*_same_pads(kernel[0], dilation[0]), *_same_pads(kernel[1], dilation[1]))
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise RuntimeError(f"negative padding is not supported; received padding={padding}")
    return (ph, ph, pw, pw)


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: IntPair = 1, padding: str | IntPair = 0, dilation: IntPair = 1,
           groups: int = 1) -> torch.Tensor:
    """``torch.nn.functional.conv2d`` with the lecture's hand-derived backward.

    >>> x, w = torch.randn(2, 3, 8, 6), torch.randn(4, 3, 3, 2)
    >>> conv2d(x, w, stride=2, padding=1).shape
    torch.Size([2, 4, 4, 4])
    """
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    _check_conv(x, weight, bias, groups, 2, "conv2d")
    stride_, dilation_ = _pair(stride, "stride"), _pair(dilation, "dilation")
    if min(stride_) < 1:
        raise RuntimeError(f"non-positive stride is not supported; received stride={stride}")
    if min(dilation_) < 1:
        raise RuntimeError(f"dilation should be greater than zero; received dilation={dilation}")
    kernel = (weight.shape[2], weight.shape[3])
    pads = _resolve_padding(padding, kernel, stride_, dilation_)
    hp, wp = x.shape[2] + pads[0] + pads[1], x.shape[3] + pads[2] + pads[3]
    eff = (dilation_[0] * (kernel[0] - 1) + 1, dilation_[1] * (kernel[1] - 1) + 1)
    if hp < eff[0] or wp < eff[1]:
        raise RuntimeError(
            f"Calculated padded input size per channel: ({hp} x {wp}). Kernel size: "
            f"({eff[0]} x {eff[1]}). Kernel size can't be greater than actual input size"
        )
    y = _Conv2d.apply(x, weight, bias, stride_, pads, dilation_, groups)
    return y.squeeze(0) if unbatched else y


def conv1d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: int | tuple[int] = 1, padding: str | int | tuple[int] = 0,
           dilation: int | tuple[int] = 1, groups: int = 1) -> torch.Tensor:
    """``torch.nn.functional.conv1d``: a conv2d over a height-1 image, same hand-written backward.

    >>> conv1d(torch.randn(2, 3, 10), torch.randn(4, 3, 3), padding="same").shape
    torch.Size([2, 4, 10])
    """
    unbatched = input.dim() == 2
    x = input.unsqueeze(0) if unbatched else input
    _check_conv(x, weight, bias, groups, 1, "conv1d")
    (s,), (d,) = _single(stride, "stride"), _single(dilation, "dilation")
    if s < 1:
        raise RuntimeError(f"non-positive stride is not supported; received stride={stride}")
    if d < 1:
        raise RuntimeError(f"dilation should be greater than zero; received dilation={dilation}")
    if isinstance(padding, str):
        pads = _resolve_padding(padding, (1, weight.shape[2]), (1, s), (1, d))
    else:
        (p,) = _single(padding, "padding")
        pads = _resolve_padding((0, p), (1, weight.shape[2]), (1, s), (1, d))
    if x.shape[2] + pads[2] + pads[3] < d * (weight.shape[2] - 1) + 1:
        raise RuntimeError(
            f"Calculated padded input size per channel: ({x.shape[2] + pads[2] + pads[3]}). "
            f"Kernel size: ({d * (weight.shape[2] - 1) + 1}). Kernel size can't be greater than actual input size"
        )
    y = _Conv2d.apply(x.unsqueeze(2), weight.unsqueeze(2), bias, (1, s), pads, (1, d), groups).squeeze(2)
    return y.squeeze(0) if unbatched else y


def _single(value: int | tuple[int] | list[int], name: str) -> tuple[int]:
    if isinstance(value, int):
        return (value,)
    value = tuple(int(v) for v in value)
    if len(value) != 1:
        raise RuntimeError(f"{name} must be an int or a 1-tuple for conv1d; received {name}={value}")
    return value  # type: ignore[return-value]


__all__ = ["linear", "conv2d", "conv1d"]
