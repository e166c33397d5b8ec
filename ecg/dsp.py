"""The few scipy.signal functions serving needs, in numpy alone.

Why this module: the serving install must fit in 400 MB and scipy alone is 143 MB of it, for four
functions of ECG preparation (``ecg/signals.py``) and one of the comparison view
(``web/peaks.py``). Each function here follows scipy's documented algorithm (scipy 1.17 read as the
reference) and gives its values to rounding; tests/ecg/test_dsp.py checks them against scipy,
which stays installed in the dev, train and bench extras as that reference and nowhere else.

- ``firwin``: scipy.signal.firwin for a low-pass with a Kaiser window (what resample_poly designs).
- ``resample_poly``: scipy.signal.resample_poly with zero padding (its default).
- ``butter_highpass_sos``: scipy.signal.butter(N, f, btype="highpass", fs=fs, output="sos"), even N.
- ``sosfilt_zi`` and ``sosfiltfilt``: scipy.signal's, with its default odd padding.
- ``find_peaks``: scipy.signal.find_peaks with the ``height`` and ``distance`` conditions only.

Speed: preparation runs on batches of thousands of ECGs and on single queries, so no Python loop
runs over samples. resample_poly is one matrix product per few hundred rows (a polyphase gather for
ratios whose period is long next to the filter); the IIR filter runs in blocks of samples, all blocks
in a few matrix products, the state carried between blocks by precomputed powers of the state matrix.
Both sum in another order than scipy's loops: results agree to ~1e-15 (resampling) and ~1e-12
(filtering) of the signal's scale.
"""

from __future__ import annotations

import functools
import math

import numpy as np

# Rows of a batch go through resampling and filtering a few hundred at a time (temporaries of about this
# many elements), so that each step finds its input in cache: 2x faster than whole batches at once.
_CACHE_ELEMENTS = 1 << 17
# Largest tap matrix of the block form of resample_poly (elements, 8 MiB); beyond it outputs gather.
_MAX_TAP_MATRIX = 1 << 20
# numpy's OpenBLAS runs a matrix product on several threads once m * n * k passes about 2^19. Ingest
# prepares in worker processes beside onnxruntime's threads, so those threads would oversubscribe the
# cores (measured on a loaded 2-core machine: a (4096, 34) @ (34, 32) product 46x slower than on one
# thread). Products are cut to at most this size: one thread each, like scipy's loops, and as fast.
_ONE_THREAD_MNK = 1 << 18


def _matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[:] = a @ b`` for 2-D ``a``, in slices of rows small enough for one BLAS thread."""
    step = max(1, _ONE_THREAD_MNK // (b.shape[0] * b.shape[1]))
    for lo in range(0, a.shape[0], step):
        np.matmul(a[lo : lo + step], b, out=out[lo : lo + step])
    return out


# --- FIR design ---------------------------------------------------------------------------------


def kaiser(m: int, beta: float) -> np.ndarray:
    """Symmetric Kaiser window of ``m`` points: scipy.signal.windows.kaiser(m, beta) (numpy's i0)."""
    if m <= 1:
        return np.ones(max(m, 0))
    n = np.arange(0, m, dtype=np.float64)
    alpha = (m - 1) / 2.0
    return np.i0(beta * np.sqrt(1 - ((n - alpha) / alpha) ** 2.0)) / np.i0(np.float64(beta))


def firwin(numtaps: int, cutoff: float, beta: float = 5.0) -> np.ndarray:
    """Low-pass FIR taps: scipy.signal.firwin(numtaps, cutoff, window=("kaiser", beta)).

    Windowed sinc (cutoff as a fraction of the Nyquist rate, 0 < cutoff < 1), scaled to unit gain at
    DC; the design scipy.signal.resample_poly uses for its anti-alias filter.
    """
    if numtaps < 1:
        raise ValueError("numtaps must be at least 1")
    if not 0.0 < cutoff < 1.0:
        raise ValueError("cutoff must be a fraction of the Nyquist rate, 0 < cutoff < 1")
    m = np.arange(0, numtaps, dtype=np.float64) - 0.5 * (numtaps - 1)
    h = cutoff * np.sinc(cutoff * m)
    h *= kaiser(numtaps, beta)
    h /= np.sum(h)
    return h


def firwin_bandpass(numtaps: int, low_hz: float, high_hz: float, fs: float) -> np.ndarray:
    """Band-pass FIR taps: scipy.signal.firwin(numtaps, (low_hz, high_hz), pass_zero=False, fs=fs).

    Windowed sinc (the difference of two low-passes) under scipy's default Hamming window, scaled to
    unit gain at the band's centre frequency; odd ``numtaps`` only (a band-pass needs a centre tap).
    """
    if numtaps < 3 or numtaps % 2 == 0:
        raise ValueError("a band-pass needs an odd numtaps of at least 3")
    nyquist = fs / 2.0
    low, high = low_hz / nyquist, high_hz / nyquist
    if not 0.0 < low < high < 1.0:
        raise ValueError("band edges must satisfy 0 < low < high < fs / 2")
    m = np.arange(0, numtaps, dtype=np.float64) - 0.5 * (numtaps - 1)
    h = high * np.sinc(high * m) - low * np.sinc(low * m)
    h *= np.hamming(numtaps)
    centre = 0.5 * (low + high)
    return h / np.sum(h * np.cos(np.pi * m * centre))


# --- moving windows along the last axis (scipy.ndimage's 1-D filters, mode="constant") -----------


def _windows(x: np.ndarray, size: int, fill: float) -> np.ndarray:
    """(..., T) -> (..., T, size): the centred window of every sample, ``fill`` beyond the edges."""
    if size < 1 or size % 2 == 0:
        raise ValueError("window size must be odd and positive")
    half = size // 2
    padded = np.pad(
        np.asarray(x, dtype=np.float64), [(0, 0)] * (x.ndim - 1) + [(half, half)], constant_values=fill
    )
    return np.lib.stride_tricks.sliding_window_view(padded, size, axis=-1)


def correlate_same(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """scipy.ndimage.correlate1d(x, weights, axis=-1, mode="constant"): zeros beyond the edges."""
    w = np.asarray(weights, dtype=np.float64)
    return _windows(x, len(w), 0.0) @ w


def moving_mean(x: np.ndarray, size: int) -> np.ndarray:
    """scipy.ndimage.uniform_filter1d(x, size, axis=-1, mode="constant"): zeros beyond the edges."""
    return _windows(x, size, 0.0).mean(axis=-1)


def moving_max(x: np.ndarray, size: int) -> np.ndarray:
    """scipy.ndimage.maximum_filter1d(x, size, axis=-1, mode="constant", cval=-inf).

    One running maximum over the window's shifted copies (contiguous passes: twice as fast as a
    maximum over each sample's window, and the same values)."""
    windows = _windows(x, size, -np.inf)
    out = windows[..., 0].copy()
    for shift in range(1, size):
        np.maximum(out, windows[..., shift], out=out)
    return out


# --- polyphase resampling -----------------------------------------------------------------------


def resample_poly(
    x: np.ndarray, up: int, down: int, axis: int = 0, window: np.ndarray | None = None
) -> np.ndarray:
    """Resample by ``up / down`` along ``axis``: scipy.signal.resample_poly with padtype 'constant'.

    scipy's documented steps: reduce up/down by their gcd; the filter is ``window`` (FIR taps) or,
    when None, firwin(20 * max(up, down) + 1, 1 / max(up, down), Kaiser beta 5), scaled by ``up``;
    zeros are put before it so that output samples sit at the filter's centre; upfirdn (upsample
    with zeros, filter, downsample) over the signal taken as zero outside; the output is the slice of
    ceil(n * up / down) samples starting at the filter's delay. Computed in float64. A non-finite
    sample spoils the outputs whose filter window covers it, as in scipy, and in the block form up to
    as many again; other rows are untouched (signals.py refuses non-finite samples before this).
    """
    if up != int(up) or down != int(down):
        raise ValueError("up and down must be integers")
    up, down = int(up), int(down)
    if up < 1 or down < 1:
        raise ValueError("up and down must be >= 1")
    x = np.asarray(x)
    g = math.gcd(up, down)
    up, down = up // g, down // g
    if up == down == 1:
        return np.array(x, copy=True)
    if window is None:
        max_rate = max(up, down)
        window = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, 5.0)
    taps = np.asarray(window, dtype=np.float64)
    if taps.ndim != 1 or taps.size == 0:
        raise ValueError("window must be 1-D and not empty")
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    n_in = moved.shape[-1]
    rows = moved.reshape(math.prod(moved.shape[:-1]), n_in)
    n_out = -(-n_in * up // down)
    plan = _resample_plan(up, down, taps.tobytes())
    out = np.empty((rows.shape[0], n_out))
    if n_out and rows.shape[0]:
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite samples: NaN out, as scipy, silently
            plan.apply(rows, out)
    return np.moveaxis(out.reshape(moved.shape[:-1] + (n_out,)), -1, axis)


class _ResamplePlan:
    """y[m] = sum_i x[i] g[(m + delay) * down - i * up], g the padded, up-scaled taps (Lg of them).

    Block form: inputs in blocks of ``s * down`` samples, outputs in groups of ``s * up``; group q takes
    block a through the tap matrix W[j = q - a], and s is chosen so that j is 0 or 1 (s * up * down >=
    Lg). Then all blocks of all rows go through one matrix product (rows * blocks, s * down) @ W and
    two shifted sums: at least twice the minimum of products (more when up * down exceeds Lg) at
    matrix-product speed. When the period up * down is long next to the filter (99.9 Hz: 1000/999),
    W is mostly zeros; then each output gathers its own ceil(Lg / up) inputs instead (``gather``).
    """

    def __init__(self, up: int, down: int, taps: np.ndarray) -> None:
        half_len = (taps.size - 1) // 2
        pre = down - half_len % down
        self.up, self.down = up, down
        self.delay = (half_len + pre) // down
        self.g = np.concatenate((np.zeros(pre), taps * up))
        lg = self.g.size
        s = max(1, -(-lg // (up * down)))
        # Products per output: 2 s down for the blocks, ceil(Lg / up) gathered; a product in a matrix product
        # costs ~1/30 of a gathered one (measured at 257, 333 and 99.9 Hz).
        self.gather = 2 * s * down > 32 * -(-lg // up) or 2 * (s * down) * (s * up) > _MAX_TAP_MATRIX
        if self.gather:
            self.k = -(-lg // up)  # taps any output uses at most
            return
        self.s = s
        self.j = (lg - 1 + (s * down - 1) * up) // (s * up * down) + 1
        b = np.arange(s * down)[:, None, None]
        j = np.arange(self.j)[None, :, None]
        r = np.arange(s * up)[None, None, :]
        idx = j * (s * up * down) + r * down - b * up
        inside = (idx >= 0) & (idx < lg)
        w = np.where(inside, self.g[np.clip(idx, 0, lg - 1)], 0.0)
        self.w = w.reshape(s * down, self.j * s * up)

    def apply(self, rows: np.ndarray, out: np.ndarray) -> None:
        if self.gather:
            self._apply_gather(rows, out)
        else:
            self._apply_blocks(rows, out)

    def _apply_blocks(self, rows: np.ndarray, out: np.ndarray) -> None:
        n_rows, n_in = rows.shape
        n_out = out.shape[1]
        bin_, bout = self.s * self.down, self.s * self.up
        blocks = -(-n_in // bin_)
        groups = max(blocks + self.j - 1, (self.delay + n_out - 1) // bout + 1)
        step = max(1, _CACHE_ELEMENTS // (groups * bout * (self.j + 1)))
        for lo in range(0, n_rows, step):
            hi = min(lo + step, n_rows)
            xb = np.zeros((hi - lo, blocks * bin_))
            xb[:, :n_in] = rows[lo:hi]
            z = np.empty((hi - lo, blocks, self.j, bout))
            _matmul(xb.reshape(-1, bin_), self.w, z.reshape(-1, self.j * bout))
            full = np.zeros((hi - lo, groups, bout))
            for j in range(self.j):
                full[:, j : j + blocks] += z[:, :, j]
            out[lo:hi] = full.reshape(hi - lo, -1)[:, self.delay : self.delay + n_out]

    def _apply_gather(self, rows: np.ndarray, out: np.ndarray) -> None:
        n_rows, n_in = rows.shape
        n_out = out.shape[1]
        index, taps, left = _gather_plan(self, n_in, n_out)
        padded = np.zeros((n_rows, index.max() + 1))
        padded[:, left : left + n_in] = rows
        step = max(1, 8 * _CACHE_ELEMENTS // index.size)  # a 12-lead record or more at a time
        for lo in range(0, n_rows, step):
            out[lo : lo + step] = np.einsum(
                "rmk,mk->rm", np.take(padded[lo : lo + step], index, axis=1), taps
            )


@functools.lru_cache(maxsize=8)
def _resample_plan(up: int, down: int, taps: bytes) -> _ResamplePlan:
    plan = _ResamplePlan(up, down, np.frombuffer(taps, dtype=np.float64))
    return plan


@functools.lru_cache(maxsize=8)
def _gather_plan(plan: _ResamplePlan, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, int]:
    """For each output: the ``k`` input positions it reads (in a zero-padded row) and their taps."""
    t = (np.arange(n_out) + plan.delay) * plan.down  # tap index of input 0, per output
    first = t // plan.up - plan.k + 1  # lowest input position that can meet a tap
    i = first[:, None] + np.arange(plan.k)[None, :]
    idx = t[:, None] - i * plan.up
    inside = (idx >= 0) & (idx < plan.g.size) & (i >= 0) & (i < n_in)
    taps = np.where(inside, plan.g[np.clip(idx, 0, plan.g.size - 1)], 0.0)
    left = max(0, -int(first.min()))
    index = np.clip(i + left, 0, None)
    index.setflags(write=False)
    taps.setflags(write=False)
    return index, taps, left


# --- IIR design and zero-phase filtering --------------------------------------------------------


def butter_highpass_sos(order: int, cutoff: float, fs: float) -> np.ndarray:
    """scipy.signal.butter(order, cutoff, btype="highpass", fs=fs, output="sos") for an even order.

    scipy's steps: analog Butterworth poles, high-pass transform at the pre-warped cutoff, bilinear
    transform, then one section per conjugate pole pair (both zeros at z = 1), sections ordered with
    the poles nearest the unit circle last and the gain in the first section.
    """
    if order < 2 or order % 2:
        raise ValueError("order must be an even number >= 2")
    wn = cutoff / (fs / 2)
    if not 0.0 < wn < 1.0:
        raise ValueError("cutoff must be between 0 and fs/2")
    m = np.arange(-order + 1, order, 2, dtype=np.float64)
    p = -np.exp(1j * np.pi * m / (2 * order))  # analog prototype (buttap)
    warped = 2 * 2.0 * np.tan(np.pi * wn / 2.0)
    k = np.real(1.0 / np.prod(-p))  # lp2hp_zpk: no finite zeros
    p = warped / p
    z = np.zeros(order)
    fs2 = 4.0  # bilinear_zpk with fs = 2
    k = k * np.real(np.prod(fs2 - z) / np.prod(fs2 - p))
    p = (fs2 + p) / (fs2 - p)
    upper = p[np.imag(p) > 0]  # one pole of each conjugate pair
    upper = upper[np.argsort(-np.abs(1 - np.abs(upper)), kind="stable")]  # nearest the circle last
    sos = np.zeros((order // 2, 6))
    for i, pole in enumerate(upper):
        sos[i, :3] = np.poly([1.0, 1.0])
        sos[i, 3:] = np.real(np.poly([pole, np.conj(pole)]))
    sos[0, :3] *= k
    return sos


def sosfilt_zi(sos: np.ndarray) -> np.ndarray:
    """Steady-state initial states (n_sections, 2) of a step response: scipy.signal.sosfilt_zi.

    Per section lfilter_zi (solve zi = A zi + B for the companion matrix A), scaled by the DC gain of
    the sections before it.
    """
    sos = _check_sos(sos)
    zi = np.empty((sos.shape[0], 2))
    scale = 1.0
    for i, (b, a) in enumerate(zip(sos[:, :3], sos[:, 3:], strict=True)):
        i_minus_a = np.array([[1.0 + a[1], -1.0], [a[2], 1.0]])  # eye(2) - companion(a).T
        zi[i] = scale * np.linalg.solve(i_minus_a, b[1:] - a[1:] * b[0])
        scale *= b.sum() / a.sum()
    return zi


def sosfiltfilt(sos: np.ndarray, x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Zero-phase filtering along ``axis``: scipy.signal.sosfiltfilt(sos, x, axis) (padtype 'odd').

    scipy's steps: odd extension of padlen = 3 * (2 * n_sections + 1) samples at each end (fewer
    when sections are first order), a forward pass started from sosfilt_zi times the first
    extended sample, a backward pass over the reversed result started likewise from its first
    sample, and the extension cut off. A row with a non-finite sample comes back all NaN, as in scipy.
    The blocked passes (``_IirPlan``) agree with scipy's recursion to ~1e-12 of the signal's scale.
    """
    sos = _check_sos(sos)
    ntaps = 2 * sos.shape[0] + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    edge = 3 * ntaps
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    n = moved.shape[-1]
    if n <= edge:
        raise ValueError(f"The length of the input vector x must be greater than padlen, which is {edge}.")
    rows = moved.reshape(math.prod(moved.shape[:-1]), n)
    out = np.empty(rows.shape)
    zi = sosfilt_zi(sos).reshape(-1)
    plan = _iir_plan(sos.tobytes(), min(64, -(-(n + 2 * edge) // _BLOCK)))
    step = max(1, _CACHE_ELEMENTS // (n + 2 * edge))  # rows at a time, all steps while they sit in cache
    for lo in range(0, rows.shape[0], step):
        x = rows[lo : lo + step]
        ext = np.empty((x.shape[0], n + 2 * edge))
        ext[:, edge : edge + n] = x
        ext[:, :edge] = 2 * x[:, :1] - x[:, edge:0:-1]
        ext[:, edge + n :] = 2 * x[:, -1:] - x[:, -2 : -edge - 2 : -1]
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite samples: NaN rows, as scipy, silently
            forward = plan.run(ext, zi * ext[:, :1])
            backward = plan.run(forward[:, ::-1], zi * forward[:, -1:])
        out[lo : lo + step] = backward[:, edge + n - 1 : edge - 1 : -1]  # reversed, extension cut (edge >= 6)
    return np.moveaxis(out.reshape(moved.shape), -1, axis)


def _check_sos(sos: np.ndarray) -> np.ndarray:
    sos = np.atleast_2d(np.asarray(sos, dtype=np.float64))
    if sos.ndim != 2 or sos.shape[1] != 6:
        raise ValueError("sos must be shape (n_sections, 6)")
    if not np.all(sos[:, 3] == 1):
        raise ValueError("sos[:, 3] should be all ones")
    return sos


_BLOCK = 32  # samples per block of the blocked IIR filter


class _IirPlan:
    """The cascade of second-order sections (transposed direct form II, as scipy's sosfilt) as a
    linear state-space system s' = A s + B x, y = C s + D x, run ``_BLOCK`` samples at a time.

    Within a block the outputs are T @ x_block + O @ s_start (T the lower-triangular Toeplitz matrix
    of the impulse response, O the response to the starting state); the block's inputs move the state
    by G @ x_block and the state itself moves by A^_BLOCK. For ``blocks`` blocks at once, every block's
    starting state is one product of the initial state and of all the blocks' G @ x with precomputed
    powers of A^_BLOCK. So a span of blocks * _BLOCK samples takes four matrix products, for every
    row at once; longer signals go span by span, carrying the state.
    """

    def __init__(self, sos: np.ndarray, blocks: int) -> None:
        n = 2 * sos.shape[0]
        p = _BLOCK
        # One step of the recursion applied to the unit states and to a unit input gives A, B, C, D.
        y, nxt = _sos_step(sos, np.vstack((np.eye(n), np.zeros(n))), np.r_[np.zeros(n), 1.0])
        a, b, c, d = nxt[:n].T, nxt[n], y[:n], y[n]
        h = np.empty(p)
        o = np.empty((p, n))  # o[i] = C A^i
        g = np.empty((n, p))  # g[:, j] = A^(p-1-j) B
        h[0] = d
        v, w = b.copy(), c.copy()
        for i in range(p):
            o[i] = w
            g[:, p - 1 - i] = v
            if i + 1 < p:
                h[i + 1] = c @ v
            v, w = a @ v, w @ a
        toeplitz = np.zeros((p, p))
        for i in range(p):
            toeplitz[i:, i] = h[: p - i]
        a_block = np.linalg.matrix_power(a, p)
        # States at the start of blocks 0..blocks (the last: after the span), as row vectors.
        powers = [np.eye(n)]
        for _ in range(blocks):
            powers.append(powers[-1] @ a_block)
        self.from_start = np.hstack([q.T for q in powers])  # (n, (blocks + 1) n)
        self.from_inputs = np.zeros((blocks * n, (blocks + 1) * n))
        for i in range(blocks):  # the input of block i reaches the start of block k > i via A_block^(k-1-i)
            for k in range(i + 1, blocks + 1):
                self.from_inputs[i * n : (i + 1) * n, k * n : (k + 1) * n] = powers[k - 1 - i].T
        self.increments = np.ascontiguousarray(g.T)  # x_block @ -> state increment over the block
        self.outputs = np.ascontiguousarray(np.vstack((toeplitz.T, o.T)))  # [x_block, s_start] @ -> y
        self.n, self.blocks = n, blocks

    def run(self, rows: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Filter (R, L) rows from states (R, n): (R, L) outputs."""
        n_rows, length = rows.shape
        n, blocks, p = self.n, self.blocks, _BLOCK
        span = blocks * p
        spans = -(-length // span)
        out = np.empty((spans, n_rows, span))
        step = max(1, _CACHE_ELEMENTS // (span + blocks * n))
        for lo in range(0, n_rows, step):
            hi = min(lo + step, n_rows)
            s = state[lo:hi]
            # Each block's inputs followed by its starting state: one row of the output product.
            buf = np.zeros((hi - lo, blocks, p + n))
            flat = buf.reshape(-1, p + n)
            increments = np.empty((hi - lo, blocks * n))
            states = np.empty((hi - lo, (blocks + 1) * n))
            for k in range(spans):
                chunk = rows[lo:hi, k * span : (k + 1) * span]
                full, rest = divmod(chunk.shape[1], p)
                buf[:, :full, :p] = chunk[:, : full * p].reshape(hi - lo, full, p)
                if full < blocks:  # the end of the signal: zeros after it
                    buf[:, full, :rest] = chunk[:, full * p :]
                    buf[:, full, rest:p] = 0.0
                    buf[:, full + 1 :, :p] = 0.0
                _matmul(flat[:, :p], self.increments, increments.reshape(-1, n))
                _matmul(increments, self.from_inputs, states)
                states += s @ self.from_start
                buf[:, :, p:] = states[:, : blocks * n].reshape(hi - lo, blocks, n)
                _matmul(flat, self.outputs, out[k, lo:hi].reshape(-1, p))
                s = states[:, blocks * n :].copy()  # states is overwritten by the next span
        return (out[0] if spans == 1 else out.transpose(1, 0, 2).reshape(n_rows, -1))[:, :length]


@functools.lru_cache(maxsize=8)
def _iir_plan(sos: bytes, blocks: int) -> _IirPlan:
    return _IirPlan(np.frombuffer(sos, dtype=np.float64).reshape(-1, 6), blocks)


def _sos_step(sos: np.ndarray, state: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One sample of scipy's sosfilt recursion for many (state, input) pairs: (outputs, new states)."""
    state = state.copy()
    for i, (b0, b1, b2, _, a1, a2) in enumerate(sos):
        y = b0 * x + state[:, 2 * i]
        state[:, 2 * i] = b1 * x - a1 * y + state[:, 2 * i + 1]
        state[:, 2 * i + 1] = b2 * x - a2 * y
        x = y
    return x, state


# --- peaks --------------------------------------------------------------------------------------


def find_peaks(x: np.ndarray, height: float | None = None, distance: float | None = None) -> np.ndarray:
    """Indices of the peaks of a 1-D signal: scipy.signal.find_peaks(x, height, distance)[0].

    scipy's rules: a peak is a sample (the middle one, rounded down, of a plateau of equal samples)
    with a lower neighbour on each side, never the first or last sample; ``height`` keeps peaks at or
    above it; ``distance`` then visits peaks from the highest down (numpy's argsort order, as scipy)
    and drops every lower-priority peak less than ceil(distance) samples from a kept one.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError("x must be a 1-D array")
    if distance is not None and distance < 1:
        raise ValueError("`distance` must be greater or equal to 1")
    if x.size < 3:
        return np.zeros(0, dtype=np.intp)
    # Runs of equal samples; a run is a peak when both neighbours are lower and it touches neither end.
    starts = np.flatnonzero(np.r_[True, x[1:] != x[:-1]])
    ends = np.r_[starts[1:], x.size] - 1
    inner = (starts >= 1) & (ends <= x.size - 2)
    starts, ends = starts[inner], ends[inner]
    peak = (x[starts - 1] < x[starts]) & (x[ends + 1] < x[ends])
    peaks = ((starts[peak] + ends[peak]) // 2).astype(np.intp)
    if height is not None:
        peaks = peaks[height <= x[peaks]]
    if distance is not None and peaks.size > 1:
        peaks = peaks[_keep_by_distance(peaks, x[peaks], math.ceil(distance))]
    return peaks


def _keep_by_distance(peaks: np.ndarray, priority: np.ndarray, distance: int) -> np.ndarray:
    keep = np.ones(peaks.size, dtype=bool)
    for j in np.argsort(priority)[::-1]:  # a loop over peaks (a few per second), not over samples
        if not keep[j]:
            continue
        lo = np.searchsorted(peaks, peaks[j] - distance, side="right")
        hi = np.searchsorted(peaks, peaks[j] + distance, side="left")
        keep[lo:j] = False
        keep[j + 1 : hi] = False
    return keep
