"""The ECG encoder (fully convolutional, so 5 s and 10 s inputs share weights) and its training heads.

Only ``Encoder`` is exported to ONNX. The projection head feeds the contrastive losses and the
decoder the reconstruction loss; both are dropped after training, as in SimCLR.
"""

from __future__ import annotations

import torch
from ecgsearch.encoder.config import EncoderConfig
from torch import nn
from torch.nn import functional as F


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
    """(n, 12, T) prepared ECG -> (n, embedding_dim) by conv stages and global average pooling."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        c = config
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
            nn.Conv1d(width, c.embedding_dim, 1, bias=False), nn.BatchNorm1d(c.embedding_dim), nn.GELU()
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 12, T) -> (n, embedding_dim, T') feature map before pooling."""
        return self.head(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=2)


class Decoder(nn.Module):
    """Embedding -> (n, 12, length): upsampling convolutions from a short learned seed sequence."""

    def __init__(self, config: EncoderConfig, seed_length: int = 16, ups: int = 5) -> None:
        super().__init__()
        self.channels, self.seed_length = config.decoder_channels, seed_length
        self.fc = nn.Linear(config.embedding_dim, config.decoder_channels * seed_length)
        layers: list[nn.Module] = []
        for _ in range(ups):
            layers += [
                nn.Upsample(scale_factor=2, mode="linear", align_corners=False),
                nn.Conv1d(config.decoder_channels, config.decoder_channels, 5, padding=2),
                nn.GELU(),
            ]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv1d(config.decoder_channels, config.in_leads, 5, padding=2)

    def forward(self, z: torch.Tensor, length: int) -> torch.Tensor:
        y = self.fc(z).view(z.shape[0], self.channels, self.seed_length)
        y = self.body(y)
        y = F.interpolate(y, size=length, mode="linear", align_corners=False)
        return self.out(y)


class SelfSupervised(nn.Module):
    """Encoder plus projection head and decoder: everything the training loss needs."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.encoder = Encoder(config)
        d = config.embedding_dim
        self.projection = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, config.projection_dim))
        self.decoder = Decoder(config)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, projection) of a batch of windows."""
        h = self.encoder(x)
        return h, self.projection(h)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
