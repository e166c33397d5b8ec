"""The ECG encoder (fully convolutional, so 5 s and 10 s inputs share weights) and its training heads.

Only ``Encoder`` is exported to ONNX. The projection head feeds the contrastive losses and the
decoder the reconstruction loss; both are dropped after training, as in SimCLR.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ecgsearch.encoder.config import EncoderConfig


class ResidualBlock(nn.Module):
    """Two convolutions with a strided shortcut: halves time, changes width."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 2) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.skip = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.gelu(y + self.skip(x))


class Encoder(nn.Module):
    """(n, 12, T) prepared ECG -> (n, embedding_dim) by conv stages and global pooling over time.

    ``pooling="mean"``: the mean of an embedding_dim-channel feature map. ``"meanmax"``: the mean and
    the max of an embedding_dim/2-channel map, concatenated (both inside the exported graph).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        c = config
        self.pooling = c.pooling
        head_channels = c.embedding_dim // 2 if c.pooling == "meanmax" else c.embedding_dim
        self.stem = nn.Sequential(
            nn.Conv1d(
                c.in_leads, c.stem_channels, c.stem_kernel, c.stem_stride, c.stem_kernel // 2, bias=False
            ),
            nn.BatchNorm1d(c.stem_channels),
            nn.GELU(),
        )
        blocks, width = [], c.stem_channels
        for channels, kernel in zip(c.stage_channels, c.stage_kernels, strict=True):
            blocks.append(ResidualBlock(width, channels, kernel))
            width = channels
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Conv1d(width, head_channels, 1, bias=False), nn.BatchNorm1d(head_channels), nn.GELU()
        )

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


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
