"""The encoder embeds 5 s windows and full 10 s ECGs alike; configs round-trip through YAML."""

from pathlib import Path

import pytest
import torch

from ecgsearch.encoder.config import EncoderConfig, load_config
from ecgsearch.encoder.model import Encoder, SelfSupervised, count_parameters

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("samples", [500, 1000])
def test_embedding_shape_for_both_lengths(samples: int) -> None:
    config = EncoderConfig()
    model = SelfSupervised(config).eval()
    with torch.no_grad():
        h, p = model(torch.randn(3, 12, samples))
        recon = model.decoder(h, samples)
    assert h.shape == (3, config.embedding_dim)
    assert p.shape == (3, config.projection_dim)
    assert recon.shape == (3, 12, samples)


def test_default_encoder_is_small() -> None:
    assert 200_000 <= count_parameters(Encoder(EncoderConfig())) <= 400_000


def test_committed_config_loads_and_round_trips() -> None:
    config = load_config(REPO / "configs" / "default.yaml")
    assert EncoderConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown config keys"):
        EncoderConfig.from_dict({"no_such_field": 1})


def test_meanmax_pooling_and_feature_reconstruction() -> None:
    config = EncoderConfig(pooling="meanmax", recon_source="features")
    model = SelfSupervised(config).eval()
    x = torch.randn(2, 12, 500)
    with torch.no_grad():
        f, h, p = model.encode(x)
        recon = model.reconstruct(f, h, 500)
    half = config.embedding_dim // 2
    assert f.shape[:2] == (2, half) and h.shape == (2, config.embedding_dim)
    assert torch.allclose(h[:, :half], f.mean(dim=2)) and torch.allclose(h[:, half:], f.amax(dim=2))
    assert torch.allclose(model.encoder(x), h, atol=1e-6)
    assert p.shape == (2, config.projection_dim) and recon.shape == (2, 12, 500)
    with pytest.raises(ValueError, match="pooling"):
        EncoderConfig(pooling="median")


def test_antialias_keeps_parameters_and_steadies_shifted_embeddings() -> None:
    from ecgsearch.encoder.model import BlurPool

    steady = torch.ones(1, 3, 40)
    assert torch.allclose(BlurPool(3)(steady)[..., 1:-1], torch.ones(1, 3, 18))  # a low-pass of gain 1
    plain, smooth = (Encoder(EncoderConfig(antialias=a)).eval() for a in (False, True))
    assert count_parameters(plain) == count_parameters(smooth)
    torch.manual_seed(0)
    x = torch.cumsum(torch.randn(16, 12, 1000), dim=2) / 10  # smooth-ish random signals
    with torch.no_grad():
        drift = {
            name: 1 - torch.nn.functional.cosine_similarity(m(x), m(torch.roll(x, 2, dims=2))).mean().item()
            for name, m in (("plain", plain), ("smooth", smooth))
        }
    assert drift["smooth"] < drift["plain"] / 2


def test_serving_encoder_appends_weighted_rhythm_and_amplitude_blocks() -> None:
    from ecgsearch.encoder.model import LeadAmplitudes, RhythmFeatures, ServingEncoder, UnitRms

    config = EncoderConfig(stem_channels=8, stage_channels=(16,), stage_kernels=(3,), embedding_dim=24)
    encoder = Encoder(config).eval()
    rhythm = RhythmFeatures(mean=(70.0, 0.05), std=(15.0, 0.1))
    amplitude = LeadAmplitudes(mean=tuple([-1.5] * 12), std=tuple([0.5] * 12), median_scale_mv=0.2)
    x = torch.randn(3, 12, 1000) * 0.3  # mV
    with torch.no_grad():
        out = ServingEncoder(encoder, rhythm, 0.5, amplitude, 0.4)(x)
        unit, scale = UnitRms()(x)
        z = rhythm(unit)
        a = amplitude(unit, scale)
    assert out.shape == (3, 38)
    assert torch.allclose(out[:, :24].norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(out[:, 24:26], z * 0.5 / 2**0.5)
    assert torch.allclose(out[:, 26:], a * 0.4 / 12**0.5)
    assert config.with_overrides(rhythm_weight=0.5, amplitude_weight=0.4).output_dim == 38


def test_serving_encoder_appends_the_statement_probabilities_at_their_weight() -> None:
    from ecgsearch.encoder.model import ServingEncoder, StatementBlock, UnitRms

    config = EncoderConfig(
        stem_channels=8, stage_channels=(16,), stage_kernels=(3,), embedding_dim=24,
        w_statement=1.0, statement_weight=0.7, statement_vocabulary=("AFIB", "NORM", "SR"),
    )  # fmt: skip
    encoder = Encoder(config).eval()
    assert encoder.statements is not None and encoder.statements.out_features == 3
    x = torch.randn(3, 12, 1000) * 0.3
    with torch.no_grad():
        out = ServingEncoder(encoder, statement_weight=0.7)(x)
        p = torch.sigmoid(encoder.statement_logits(encoder(UnitRms()(x)[0])))
    assert out.shape == (3, config.output_dim) == (3, 27)
    assert torch.allclose(out[:, 24:].norm(dim=1), torch.full((3,), 0.7), atol=1e-5)
    assert torch.allclose(out[:, 24:], 0.7 * p / p.norm(dim=1, keepdim=True), atol=1e-6)
    mean, std = torch.tensor([0.5, -1.0, 0.0]), torch.tensor([2.0, 1.0, 0.5])
    with torch.no_grad():
        z = ServingEncoder(encoder, statement_weight=0.7, statement=StatementBlock("logit_z", mean, std))(x)
        logits = encoder.statement_logits(encoder(UnitRms()(x)[0]))
    expected = ((logits - mean) / std).clamp(-5, 5) / 3**0.5 * 0.7
    assert torch.allclose(z[:, 24:], expected, atol=1e-5) and torch.equal(z[:, :24], out[:, :24])
    assert Encoder(config.with_overrides(statement_vocabulary=())).statements is None
    with pytest.raises(ValueError, match="statement head"):
        ServingEncoder(Encoder(config.with_overrides(statement_vocabulary=())), statement_weight=0.7)
    with pytest.raises(ValueError, match="w_statement"):
        EncoderConfig(statement_weight=0.5)


def test_in_graph_scaling_and_amplitudes_equal_the_numpy_rules() -> None:
    """UnitRms = signals.unit_rms, LeadAmplitudes = standardised features.lead_log_rms of the mV ECG."""
    import numpy as np

    from ecgsearch.ecg import features, signals
    from ecgsearch.encoder.model import LeadAmplitudes, UnitRms

    rng = np.random.default_rng(1)
    mv = (rng.standard_normal((4, 12, 1000)) * rng.uniform(0.05, 1.0, (4, 12, 1)) * 0.5).astype(np.float32)
    mv[1, 3] = 0.0  # a flat lead is left out of the scale
    with torch.no_grad():
        unit, scale = UnitRms()(torch.from_numpy(mv))
    assert np.allclose(unit.numpy(), signals.unit_rms(mv), atol=1e-5)
    assert np.allclose(scale.numpy(), signals.global_rms(mv), rtol=1e-5)
    mean, std = tuple(np.linspace(-2.0, -1.0, 12)), tuple(np.linspace(0.3, 0.6, 12))
    with torch.no_grad():
        z = LeadAmplitudes(mean, std, median_scale_mv=0.2)(unit, scale).numpy()
    want = features.standardise(features.lead_log_rms(mv), mean, std)
    assert np.allclose(z, want, atol=1e-4)


def test_a_1000x_gain_error_leaves_only_the_relative_amplitudes() -> None:
    """A global RMS no surface ECG has (microvolts labelled mV) makes the voltage unknown, not extreme."""
    import numpy as np

    from ecgsearch.encoder.model import LeadAmplitudes, UnitRms

    rng = np.random.default_rng(2)
    mv = torch.from_numpy((rng.standard_normal((2, 12, 1000)) * 0.3).astype(np.float32))
    amplitude = LeadAmplitudes(tuple([-1.5] * 12), tuple([0.5] * 12), median_scale_mv=0.25)
    with torch.no_grad():
        wrong = amplitude(*UnitRms()(mv * 1000))
        at_median = amplitude(*UnitRms()(mv / UnitRms()(mv)[1][:, None, None] * 0.25))
        fivefold = amplitude(*UnitRms()(mv * 5))
        right = amplitude(*UnitRms()(mv))
    assert torch.allclose(wrong, at_median, atol=1e-4)
    assert torch.allclose(fivefold - right, torch.full_like(right, float(np.log(5) / 0.5)), atol=1e-4)


def test_shift_stability_separates_invariant_from_sensitive_embeddings() -> None:
    import numpy as np

    from ecgsearch.encoder.data import EcgArrays
    from ecgsearch.encoder.report import shift_stability

    rng = np.random.default_rng(0)
    n = 60
    data = EcgArrays(
        x=rng.standard_normal((n, 12, 1000)).astype(np.float32),
        ecg_ids=np.arange(n),
        patient_ids=list(range(n)),
        folds=np.where(np.arange(n) < 20, 9, 1),
        superclasses=[frozenset({"NORM"})] * n,
    )

    def spectrum(x: np.ndarray) -> np.ndarray:
        return np.abs(np.fft.rfft(x, axis=2))[:, :, :50].reshape(len(x), -1)

    def samples(x: np.ndarray) -> np.ndarray:
        return x[:, :, :100].reshape(len(x), -1)

    steady = shift_stability(spectrum, data, shifts=(8,))["8"]
    assert steady["cosine"] > 0.999 and steady["top10_overlap"] == 1.0
    moved = shift_stability(samples, data, shifts=(8,))["8"]
    assert moved["cosine"] < 0.5 and moved["top10_overlap"] < 0.5


def test_a_statement_head_with_the_rhythm_input_reads_the_r_r_intervals() -> None:
    """Same embedding, another rhythm: the head's logits move; without the windows it refuses."""
    from ecgsearch.encoder.model import UnitRms

    config = EncoderConfig(
        stem_channels=8, stage_channels=(16,), stage_kernels=(3,), embedding_dim=24,
        w_statement=1.0, statement_vocabulary=("AFIB", "NORM"), statement_rhythm=True,
    )  # fmt: skip
    encoder = Encoder(config).eval()
    assert encoder.statements is not None and encoder.statements.in_features == 26
    t = torch.arange(1000) / 100.0
    beats = {
        "regular": [0.5 + 0.8 * i for i in range(12)],
        "irregular": [0.4, 0.9, 1.9, 2.3, 3.6, 4.0, 5.2, 6.5, 6.9, 8.3, 8.8],
    }
    x = torch.zeros(2, 12, 1000)
    for row, times in enumerate(beats.values()):
        for b in times:
            x[row] += torch.exp(-(((t - b) / 0.02) ** 2))
    unit = UnitRms()(x)[0]
    h = torch.randn(1, 24).expand(2, 24)
    with torch.no_grad():
        rhythm = encoder.statement_rhythm(unit)  # type: ignore[misc]
        logits = encoder.statement_logits(h, unit)
    assert rhythm[1, 1] > rhythm[0, 1] + 1  # the irregular one is more than a scale unit more irregular
    assert not torch.allclose(logits[0], logits[1])
    with pytest.raises(ValueError, match="rhythm"):
        encoder.statement_logits(h)
    with pytest.raises(ValueError, match="w_statement"):
        EncoderConfig(statement_rhythm=True)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_dense_levels_keep_the_weights_and_add_the_other_phases(levels: int) -> None:
    """Every 2^levels-th position of the dense feature map is the strided network's own output (the a trous
    identity, exact); the others are the phases it skipped, and an ECG moved by half the coarsest grid
    moves its pooled mean less than on the strided grid."""
    config = EncoderConfig(
        stem_channels=8, stage_channels=(16, 16), stage_kernels=(5, 3), embedding_dim=24, antialias=True,
        stem_stride=4, stem_conv_stride=2, pooling="meanmax",
    )  # fmt: skip
    torch.manual_seed(0)
    strided = Encoder(config).eval()
    dense = strided.served_as(config.with_overrides(dense_levels=levels))
    assert dense is not strided and strided.served_as(config) is strided
    assert {k: v.shape for k, v in dense.state_dict().items()} == {
        k: v.shape for k, v in strided.state_dict().items()
    }
    x = torch.randn(4, 12, 1000)
    with torch.no_grad():
        f, g = strided.features(x), dense.features(x)
        assert torch.allclose(g[..., :: 2**levels][..., : f.shape[2]], f, atol=1e-5)
        assert g.shape[2] > f.shape[2] * (2**levels - 1)
        stride = 16  # the stem's 4, then 2 per stage: half of it is the worst phase of the coarsest grid
        moved = torch.roll(x, stride // 2, dims=2)
        step_strided = (strided.features(moved).mean(2) - f.mean(2)).norm()
        step_dense = (dense.features(moved).mean(2) - g.mean(2)).norm()
    assert step_dense < step_strided


def test_dense_levels_are_refused_where_no_subsampling_can_take_them() -> None:
    with pytest.raises(ValueError, match="dense_levels"):
        EncoderConfig(dense_levels=1)  # no antialias: the subsampling is in strided convolutions
    with pytest.raises(ValueError, match="at most 4"):  # one stem BlurPool and three stages
        EncoderConfig(antialias=True, stem_conv_stride=2, dense_levels=5)
    assert EncoderConfig(antialias=True, stem_conv_stride=2, dense_levels=4).dense_levels == 4
