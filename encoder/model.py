"""The ECG encoder (fully convolutional, so 5 s and 10 s inputs share weights) and its training heads.

Only ``Encoder`` is exported to ONNX. The projection head feeds the contrastive losses and the
decoder the reconstruction loss; both are dropped after training, as in SimCLR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ecgsearch.encoder.config import STATEMENT_BLOCKS, EncoderConfig


class BlurPool(nn.Module):
    """Binomial [1, 2, 1]/4 low-pass per channel, then keep every second sample (Zhang 2019, 1-D).

    Removing content above the new Nyquist rate before subsampling makes the output change smoothly
    when the input shifts by one sample, instead of jumping between the two subsampling phases.

    ``dense``: keep every sample instead (both phases, interleaved), on an input whose samples are
    ``dilation`` apart on the grid the weights were trained on (the a trous algorithm).
    """

    kernel: torch.Tensor  # buffer

    def __init__(self, channels: int, dilation: int = 1, dense: bool = False) -> None:
        super().__init__()
        self.channels, self.dilation, self.stride = channels, dilation, 1 if dense else 2
        self.register_buffer("kernel", torch.tensor([[[0.25, 0.5, 0.25]]]).repeat(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(
            x,
            self.kernel,
            stride=self.stride,
            padding=self.dilation,
            dilation=self.dilation,
            groups=self.channels,
        )


class ResidualBlock(nn.Module):
    """Two convolutions with a strided shortcut: halves time, changes width.

    With ``antialias`` the input is blurred and subsampled once (BlurPool) and both paths run at
    the lower rate with stride-1 convolutions: the same cost, without aliasing.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int = 2,
        antialias: bool = False,
        dilation: int = 1,
        dense: bool = False,
    ) -> None:
        super().__init__()
        self.down: nn.Module = BlurPool(c_in, dilation, dense) if antialias else nn.Identity()
        conv_stride = 1 if antialias else stride
        # a dense BlurPool leaves the phases interleaved: the convolutions after it skip over the others
        after = 2 * dilation if dense else dilation
        pad = after * (kernel // 2)
        self.conv1 = nn.Conv1d(
            c_in, c_out, kernel, stride=conv_stride, padding=pad, dilation=after, bias=False
        )
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, padding=pad, dilation=after, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.skip = nn.Sequential(
            nn.Conv1d(c_in, c_out, 1, stride=conv_stride, bias=False), nn.BatchNorm1d(c_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        y = F.gelu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.gelu(y + self.skip(x))


# The statement head's rhythm input: heart rate (bpm) and RR irregularity centred and scaled by fixed round
# numbers near PTB-XL's (74 +- 19 bpm, 0.05 +- 0.09), not by statistics of the training folds: the head's
# weights learn the rest, and a model (or its random-init twin) needs no data to be built.
HEAD_RHYTHM_CENTRE = (75.0, 0.05)
HEAD_RHYTHM_SCALE = (20.0, 0.1)


class Encoder(nn.Module):
    """(n, 12, T) prepared ECG -> (n, embedding_dim) by conv stages and global pooling over time.

    ``antialias``: a stem conv of stride ``stem_conv_stride`` (default 1) followed by BlurPools for the
    rest of ``stem_stride``, and a BlurPool before every stage.

    ``pooling="mean"``: the mean of an embedding_dim-channel feature map. ``"meanmax"``: the mean and
    the max of an embedding_dim/2-channel map, concatenated (both inside the exported graph).

    ``dense_levels`` N > 0 (antialias only): the last N BlurPools keep every phase and the convolutions
    after them are dilated to match, so the feature map holds the network's output at 2^N offsets of its
    coarsest grid, interleaved, and the pooling reads them all: what the ECG looks like, less where the
    grid happened to fall. The same weights serve either way (a served setting, like the blocks').
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        c = config
        self.pooling, self.dense_levels = c.pooling, c.dense_levels
        head_channels = c.embedding_dim // 2 if c.pooling == "meanmax" else c.embedding_dim
        stem_stride = c.stem_conv_stride if c.antialias else c.stem_stride
        # per BlurPool in order (the stem's, then one per stage): how far apart its input's samples are on
        # the grid the weights were trained on, and whether it keeps every phase
        first_dense = len(c.blur_pools) - c.dense_levels
        plan = [(2 ** max(0, i - first_dense), i >= first_dense) for i in range(len(c.blur_pools))]
        blurs = c.blur_pools.count("stem")
        # without antialias the stages subsample by strided convolutions: no BlurPool, never dense
        stage_plan = plan[blurs:] or [(1, False)] * len(c.stage_channels)
        stem_blur = [BlurPool(c.stem_channels, dilation, dense) for dilation, dense in plan[:blurs]]
        self.stem = nn.Sequential(
            nn.Conv1d(
                c.in_leads, c.stem_channels, c.stem_kernel, stem_stride, c.stem_kernel // 2, bias=False
            ),
            nn.BatchNorm1d(c.stem_channels),
            nn.GELU(),
            *stem_blur,
        )
        blocks, width = [], c.stem_channels
        for channels, kernel, (dilation, dense) in zip(
            c.stage_channels, c.stage_kernels, stage_plan, strict=True
        ):
            blocks.append(
                ResidualBlock(width, channels, kernel, antialias=c.antialias, dilation=dilation, dense=dense)
            )
            width = channels
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Conv1d(width, head_channels, 1, bias=False), nn.BatchNorm1d(head_channels), nn.GELU()
        )
        # a logit per statement of the training folds' vocabulary (w_statement > 0): trained by the
        # label BCE, served as a block of the embedding; absent otherwise, so older models are unchanged.
        # With statement_rhythm it reads the window's rhythm numbers beside the embedding.
        self.statement_rhythm: RhythmFeatures | None = (
            RhythmFeatures(HEAD_RHYTHM_CENTRE, HEAD_RHYTHM_SCALE)
            if c.statement_rhythm and c.statement_vocabulary
            else None
        )
        head_inputs = c.embedding_dim + (2 if self.statement_rhythm is not None else 0)
        self.statements: nn.Linear | None = (
            nn.Linear(head_inputs, len(c.statement_vocabulary)) if c.statement_vocabulary else None
        )

    def served_as(self, config: EncoderConfig) -> Encoder:
        """These weights in the network ``config`` describes: the same, or another ``dense_levels``."""
        if config.dense_levels == self.dense_levels:
            return self
        other = Encoder(config)
        other.load_state_dict(self.state_dict())
        return other.train(self.training)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 12, T) -> (n, C, T') feature map before pooling (C = embedding_dim, or half for meanmax)."""
        return self.head(self.stages(self.stem(x)))

    def pool(self, f: torch.Tensor) -> torch.Tensor:
        """(n, C, T') feature map -> (n, embedding_dim) embedding."""
        if self.pooling == "meanmax":
            return torch.cat([f.mean(dim=2), f.amax(dim=2)], dim=1)
        return f.mean(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))

    def statement_logits(self, h: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """(n, embedding_dim) embeddings of the unit-RMS windows ``x`` (n, 12, T) -> (n, L) statement
        logits; an error without a statement head. ``x`` is read only by a head with the rhythm input."""
        if self.statements is None:
            raise ValueError("this encoder has no statement head (trained with w_statement = 0)")
        if self.statement_rhythm is not None:
            if x is None:
                raise ValueError("this statement head reads the ECG's rhythm: pass the windows it embedded")
            h = torch.cat([h, self.statement_rhythm(x)], dim=1)
        return self.statements(h)


def _upsampling(channels: int, ups: int) -> list[nn.Module]:
    """``ups`` doublings of time, each followed by a convolution: the decoders' shared body."""
    layers: list[nn.Module] = []
    for _ in range(ups):
        layers += [
            nn.Upsample(scale_factor=2, mode="linear", align_corners=False),
            nn.Conv1d(channels, channels, 5, padding=2),
            nn.GELU(),
        ]
    return layers


class Decoder(nn.Module):
    """Embedding -> (n, 12, length): upsampling convolutions from a short learned seed sequence."""

    def __init__(self, config: EncoderConfig, seed_length: int = 16, ups: int = 5) -> None:
        super().__init__()
        self.channels, self.seed_length = config.decoder_channels, seed_length
        self.fc = nn.Linear(config.embedding_dim, config.decoder_channels * seed_length)
        self.body = nn.Sequential(*_upsampling(config.decoder_channels, ups))
        self.out = nn.Conv1d(config.decoder_channels, config.in_leads, 5, padding=2)

    def forward(self, z: torch.Tensor, length: int) -> torch.Tensor:
        y = self.fc(z).view(z.shape[0], self.channels, self.seed_length)
        y = self.body(y)
        y = F.interpolate(y, size=length, mode="linear", align_corners=False)
        return self.out(y)


class FeatureDecoder(nn.Module):
    """Temporal feature map (n, C, T') -> (n, 12, length): the map itself is the seed sequence.

    Decoding from the map (not the pooled vector) keeps the time alignment a waveform needs, so the
    reconstruction loss can fall and push morphology into the features the embedding pools.
    """

    def __init__(self, config: EncoderConfig, ups: int = 5) -> None:
        super().__init__()
        c_in = config.embedding_dim // 2 if config.pooling == "meanmax" else config.embedding_dim
        self.inp = nn.Conv1d(c_in, config.decoder_channels, 1)
        self.body = nn.Sequential(nn.GELU(), *_upsampling(config.decoder_channels, ups))
        self.out = nn.Conv1d(config.decoder_channels, config.in_leads, 5, padding=2)

    def forward(self, f: torch.Tensor, length: int) -> torch.Tensor:
        y = self.body(self.inp(f))
        y = F.interpolate(y, size=length, mode="linear", align_corners=False)
        return self.out(y)


class SelfSupervised(nn.Module):
    """Encoder plus projection head and decoder: everything the training loss needs."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.encoder = Encoder(config)
        d = config.embedding_dim
        self.projection = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, config.projection_dim))
        self.recon_source = config.recon_source
        self.decoder: nn.Module = (
            FeatureDecoder(config) if config.recon_source == "features" else Decoder(config)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, projection) of a batch of windows."""
        h = self.encoder(x)
        return h, self.projection(h)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(feature map, embedding, projection) of a batch of windows."""
        f = self.encoder.features(x)
        h = self.encoder.pool(f)
        return f, h, self.projection(h)

    def reconstruct(self, f: torch.Tensor, h: torch.Tensor, length: int) -> torch.Tensor:
        """Decode windows of ``length`` samples from the feature map or the embedding (recon_source)."""
        return self.decoder(f if self.recon_source == "features" else h, length)


def load_checkpoint(path: str | Path) -> tuple[Encoder, EncoderConfig, dict[str, Any]]:
    """Rebuild the encoder from a training checkpoint; returns (encoder, config, checkpoint)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    config = EncoderConfig.from_dict(ckpt["config"])
    model = SelfSupervised(config)
    model.load_state_dict(ckpt["state_dict"])
    return model.encoder, config, ckpt


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class RhythmFeatures(nn.Module):
    """(n, 12, T) prepared ECGs -> (n, 2) standardised heart rate and RR irregularity, in the graph.

    The same rule as ``ecgsearch.ecg.features.rhythm`` (lead-II QRS-band energy, local maxima
    above a fraction of a high rank), written with dense tensor operations so it exports to ONNX:
    serving computes it inside the encoder, with no code of its own. No learned weights; the mean and
    std standardising the two numbers are buffers set from the training folds at export.
    """

    # buffers
    fir: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, float] = (0.0, 0.0), std: tuple[float, float] = (1.0, 1.0)) -> None:
        super().__init__()
        from ecgsearch.ecg import features

        self.f = features
        self.register_buffer("fir", torch.from_numpy(features.QRS_FIR.copy()).view(1, 1, -1))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 2) heart rate (bpm) and trimmed RR irregularity (``features.rhythm``), and (n,) whether
        three or more peaks were found."""
        f = self.f
        lead = x[:, f.LEAD_II : f.LEAD_II + 1]
        band = F.conv1d(lead, self.fir, padding=f.FIR_TAPS // 2)
        energy = F.avg_pool1d(band * band, f.ENERGY_SAMPLES, 1, f.ENERGY_SAMPLES // 2, count_include_pad=True)
        energy = energy[:, 0]
        top = torch.topk(energy, f.TOP_RANK, dim=1).values[:, -1:]
        local = F.max_pool1d(energy[:, None], 2 * f.PEAK_HALF_WIDTH + 1, 1, f.PEAK_HALF_WIDTH)[:, 0]
        peak = (energy == local) & (energy > f.THRESHOLD * top) & (energy > 0)
        far = 1e6  # beyond any sample index: marks "no peak" (a constant, so the graph has no shape math)
        index = torch.arange(energy.shape[1], dtype=torch.float32, device=x.device).expand_as(energy)
        at = torch.topk(torch.where(peak, index, far), f.MAX_PEAKS, dim=1, largest=False).values
        valid = at < far
        rr = (at[:, 1:] - at[:, :-1]) / f.MODEL_FS
        rr_ok = valid[:, 1:] & valid[:, :-1]
        n_rr = rr_ok.sum(dim=1)
        # median RR: the valid intervals sorted first, the mean of the two middle ones (numpy's median)
        ranked = torch.sort(torch.where(rr_ok, rr, far), dim=1).values
        low, high = (
            torch.div(n_rr - 1, 2, rounding_mode="floor").clamp(min=0),
            torch.div(n_rr, 2, rounding_mode="floor"),
        )
        median_rr = 0.5 * (ranked.gather(1, low[:, None]) + ranked.gather(1, high[:, None]))[:, 0]
        # successive differences without the TRIM_LARGEST largest (when more than TRIM_LARGEST + 1)
        d_ok = rr_ok[:, 1:] & rr_ok[:, :-1]
        d = torch.sort(torch.where(d_ok, (rr[:, 1:] - rr[:, :-1]).abs(), far), dim=1).values
        n_d = d_ok.sum(dim=1)
        kept = torch.where(n_d > f.TRIM_LARGEST + 1, n_d - f.TRIM_LARGEST, n_d)
        keep = torch.arange(d.shape[1], device=x.device)[None, :] < kept[:, None]
        d = torch.where(keep, d, torch.zeros_like(d))
        spread = torch.sqrt((d * d).sum(dim=1) / kept.clamp(min=1).float())
        ok = n_rr >= 2
        safe_rr = torch.where(ok, median_rr, torch.ones_like(median_rr))
        return torch.stack([60.0 / safe_rr, spread / safe_rr], dim=1), ok

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, ok = self.raw(x)
        z = ((values - self.mean) / self.std).clamp(-self.f.Z_CLIP, self.f.Z_CLIP)
        return torch.where(ok[:, None], z, torch.zeros_like(z))


class UnitRms(nn.Module):
    """(n, 12, T) prepared ECGs in mV -> the same divided by their global RMS over non-flat leads, clipped,
    and that RMS (n,) in mV. ``signals.unit_rms`` in torch: the model's first step when served."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ecgsearch.ecg import signals

        live = (x.std(dim=2, unbiased=False) > signals.FLAT_STD_MV).float()
        counts = live.sum(dim=1)
        energy = (x * x).sum(dim=2)
        scale = torch.sqrt((energy * live).sum(dim=1) / (counts * x.shape[2]).clamp(min=1.0))
        safe = torch.where(counts > 0, scale, torch.ones_like(scale))
        return (x / safe[:, None, None]).clamp(-signals.CLIP, signals.CLIP), scale


class LeadAmplitudes(nn.Module):
    """Per-lead log-RMS in mV, standardised and clipped: the voltage block of the embedding, in the graph.

    Reads the unit-RMS ECG and its scale (``UnitRms``): log(RMS of the lead x scale), the same as
    ``features.lead_log_rms`` of the mV ECG. A scale outside ``features.VOLTAGE_RANGE_MV`` cannot be a
    surface ECG's (a header gain off by 1000x); the voltage is then taken as unknown and the
    training folds' median scale stands in, so only the relative lead amplitudes count.
    """

    # buffers
    mean: torch.Tensor
    std: torch.Tensor
    median_scale: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], median_scale_mv: float) -> None:
        super().__init__()
        from ecgsearch.ecg import features

        self.f = features
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.register_buffer("median_scale", torch.tensor(float(median_scale_mv)))

    def forward(self, unit: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        low, high = self.f.VOLTAGE_RANGE_MV
        plausible = (scale >= low) & (scale <= high)
        used = torch.where(plausible, scale, self.median_scale.expand_as(scale))
        rms = torch.sqrt((unit * unit).mean(dim=2)) * used[:, None]
        z = (torch.log(rms.clamp(min=self.f.LOG_RMS_FLOOR_MV)) - self.mean) / self.std
        return z.clamp(-self.f.Z_CLIP, self.f.Z_CLIP)


class StatementBlock(nn.Module):
    """(n, L) statement logits -> the served block at weight 1: the sigmoid outputs over their norm
    ("probabilities"), or the logits standardised with the training folds' mean and std, clipped, over
    sqrt(L) ("logit_z"; buffers set at export)."""

    # buffers
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, kind: str, mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> None:
        super().__init__()
        from ecgsearch.ecg import features

        if kind not in STATEMENT_BLOCKS or (kind == "logit_z" and (mean is None or std is None)):
            raise ValueError(
                f"a {kind!r} statement block needs its kind known and, for logit_z, mean and std"
            )
        self.kind, self.clip = kind, float(features.Z_CLIP)
        self.register_buffer("mean", torch.zeros(0) if mean is None else mean.float())
        self.register_buffer("std", torch.ones(0) if std is None else std.float().clamp(min=1e-6))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.kind == "logit_z":
            z = ((logits - self.mean) / self.std).clamp(-self.clip, self.clip)
            return z / logits.shape[1] ** 0.5
        p = torch.sigmoid(logits)
        return p / p.norm(dim=1, keepdim=True).clamp(min=1e-12)


class RefitHead(nn.Module):
    """Statement logits from the unit embedding and the rhythm z / sqrt 2 (``encoder.refit_head``): a
    linear map with the refitted weights, and the rhythm features with the training folds' statistics,
    in the graph."""

    def __init__(self, rhythm: RhythmFeatures, weights: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.rhythm = rhythm
        self.linear = nn.Linear(weights.shape[1], weights.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(np.asarray(weights, dtype=np.float32)))
            self.linear.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))

    def forward(self, unit_embedding: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([unit_embedding, self.rhythm(x) / 2**0.5], dim=1))


class ServingEncoder(nn.Module):
    """What is exported: prepared ECGs in mV -> [unit conv embedding | w_r/sqrt(2) * rhythm z |
    w_a/sqrt(12) * amplitude z | w_s * statement block], times the whitening matrix where one is set.

    The encoder and the rhythm features read the ECG divided by its global RMS (``UnitRms``), as in
    training; the amplitude block reads the voltage. A block of z-scores with weight w weighs about
    w^2 against the learned part in a cosine. The runtime L2-normalises the whole.
    """

    whitening: torch.Tensor | None  # buffer

    def __init__(
        self,
        encoder: Encoder,
        rhythm: RhythmFeatures | None = None,
        rhythm_weight: float = 0.0,
        amplitude: LeadAmplitudes | None = None,
        amplitude_weight: float = 0.0,
        statement_weight: float = 0.0,
        statement: StatementBlock | None = None,
        refit: RefitHead | None = None,
    ) -> None:
        super().__init__()
        self.scale, self.encoder = UnitRms(), encoder
        self.rhythm, self.rhythm_weight = rhythm, float(rhythm_weight)
        self.amplitude, self.amplitude_weight = amplitude, float(amplitude_weight)
        if statement_weight > 0 and encoder.statements is None:
            raise ValueError("a statement block needs an encoder with a statement head")
        self.statement_weight = float(statement_weight)
        self.statement = statement or StatementBlock("probabilities")
        self.refit = refit  # the statement logits' head: this one, else the trained head
        self.register_buffer("whitening", None)  # (d, d), set by ``whiten``

    def whiten(self, matrix: np.ndarray | None) -> None:
        """Serve ``vector @ matrix`` from now on (None: the vector as it is): export.whitening's fit."""
        self.whitening = None if matrix is None else torch.from_numpy(np.asarray(matrix, dtype=np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unit, scale = self.scale(x)
        e = self.encoder(unit)
        parts = [e / e.norm(dim=1, keepdim=True).clamp(min=1e-12)]
        if self.rhythm is not None:
            parts.append(self.rhythm(unit) * (self.rhythm_weight / 2**0.5))
        if self.amplitude is not None:
            parts.append(self.amplitude(unit, scale) * (self.amplitude_weight / 12**0.5))
        if self.statement_weight > 0:
            refit = self.refit
            logits = self.encoder.statement_logits(e, unit) if refit is None else refit(parts[0], unit)
            parts.append(self.statement(logits) * self.statement_weight)
        out = torch.cat(parts, dim=1)
        return out if self.whitening is None else out @ self.whitening
