"""Candidate served blocks: what each block is, and that composing them leaves the base vectors alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgsearch.bench import candidates as cb
from ecgsearch.bench import crossfit as cf
from ecgsearch.ecg import ptbxl


def blocks(n: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "embedding": cf._unit(rng.standard_normal((n, 8))),
        "rhythm": rng.standard_normal((n, 2)) / np.sqrt(2),
        "probabilities": cf._unit(rng.random((n, 4))),
        "logit_z": rng.standard_normal((n, 4)) / 2,
        cf.block_key("probabilities", "refit_rhythm"): cf._unit(rng.random((n, 4))),
        cf.block_key("logit_z", "refit_rhythm"): rng.standard_normal((n, 4)) / 2,
    }


def test_the_gated_rhythm_block_is_zero_for_a_regular_ecg_and_whole_a_z_above_the_gate() -> None:
    rhythm = np.array([[0.3, 0.2], [0.3, 1.5], [0.3, 2.0], [-1.0, 3.0]]) / np.sqrt(2)  # irregularity z 0.2..3
    gated = cb.gated_rhythm(rhythm, above=1.0)
    assert np.all(gated[0] == 0)  # under the gate: nothing
    assert np.allclose(gated[1], 0.5 * rhythm[1])  # half way up the ramp
    assert np.allclose(gated[2:], rhythm[2:])  # a z or more above: the whole block


def test_rhythm_statements_come_from_ptbxl_and_keep_the_block_scale(data_dir: Path) -> None:
    rhythm = ptbxl.rhythm_statements(data_dir / "ptb-xl")
    assert {"SR", "AFIB", "STACH", "SBRAD"} <= rhythm and not {"NORM", "CLBBB", "LVH"} & rhythm
    z = np.full((3, 16), 0.25)  # each logit's z / sqrt(16)
    block = cb.rhythm_statement_block(z, [0, 5, 9, 11])
    assert block.shape == (3, 4) and np.allclose(block, 0.5)  # z / sqrt(4): the same z, its own scale


def test_a_setting_without_a_candidate_block_is_the_base_grids_vectors() -> None:
    b = blocks()
    served = cb.Served(b, np.zeros((6, 3)), np.ones(6, dtype=bool), [1, 2], np.zeros(6, dtype=bool))
    for setting in cf.grid_settings(True):
        assert np.array_equal(cb.vectors(served, setting), cf.compose(b, **setting))
    with_block = cb.vectors(served, {**cf.grid_settings(True)[0], "rhythm_statements_weight": 1.0})
    assert with_block.shape == (6, 8 + 2 + 2) and np.allclose(np.linalg.norm(with_block, axis=1), 1)


def test_the_spectrum_block_is_fitted_on_the_training_rows_only() -> None:
    rng = np.random.default_rng(1)
    spectra = rng.standard_normal((40, 12))
    fit = np.arange(40) < 30
    served = cb.Served(blocks(40), spectra.copy(), fit, [], np.zeros(40, dtype=bool))
    before = served.spectrum(4)
    spectra_changed = spectra.copy()
    spectra_changed[~fit] *= 100  # the held-out rows change: the projection learnt from the rest does not
    again = cb.Served(blocks(40), spectra_changed, fit, [], np.zeros(40, dtype=bool)).spectrum(4)
    assert np.allclose(np.abs(before[fit]), np.abs(again[fit]))
    assert before.shape == (40, 4) and np.allclose(np.linalg.norm(before, axis=1), 1)


def test_the_af_probability_is_learnt_from_the_training_rows_and_low_for_a_regular_ecg() -> None:
    rng = np.random.default_rng(2)
    n = 200
    irregularity = np.where(np.arange(n) % 10 == 0, 3.0, 0.0) + rng.normal(0, 0.3, n)  # every 10th irregular
    b = {**blocks(n), "rhythm": np.column_stack([rng.normal(0, 1, n), irregularity]) / np.sqrt(2)}
    af = irregularity > 1.5
    fit = np.arange(n) < 150
    p = cb.Served(b, np.zeros((n, 3)), fit, [], af).af_probability()
    assert p.shape == (n, 1) and p[af].min() > 0.5 and p[~af].max() < 0.5
    assert np.median(p[~af]) < 0.05  # a regular ECG carries (nearly) none of the block
    flipped = af.copy()
    flipped[~fit] = ~flipped[~fit]  # the held-out rows' labels cannot reach the fit
    assert np.array_equal(p, cb.Served(b, np.zeros((n, 3)), fit, [], flipped).af_probability())
    none_seen = cb.Served(b, np.zeros((n, 3)), fit, [], np.zeros(n, dtype=bool)).af_probability()
    assert np.array_equal(none_seen, np.zeros((n, 1)))  # no AF among the training rows: an empty block
    vectors = cb.vectors(
        cb.Served(b, np.zeros((n, 3)), fit, [], af), {**cf.grid_settings(True)[0], "af_weight": 2.0}
    )
    assert vectors.shape == (n, 8 + 2 + 1) and np.allclose(np.linalg.norm(vectors, axis=1), 1)


def test_a_refitted_head_reads_the_rhythm_only_when_given_it() -> None:
    """A statement decided by the irregularity alone: the head fitted on the embedding and the rhythm
    finds it on held-out rows, the embedding-only control cannot; both fitted on the training rows."""
    from ecgsearch.encoder import refit_head

    rng = np.random.default_rng(3)
    n = 300
    irregular = np.arange(n) % 5 == 0
    b = {**blocks(n), "rhythm": np.column_stack([rng.normal(0, 1, n), 3.0 * irregular]) / np.sqrt(2)}
    labels = np.column_stack([irregular, rng.random(n) < 0.5, np.ones(n, dtype=bool)])
    fit = np.arange(n) < 200
    held_out = ~fit
    inputs = np.concatenate([b["embedding"], b["rhythm"]], axis=1)
    weights, bias = refit_head.fit(inputs[fit], labels[fit])
    assert weights.shape == (3, 10) and bias[2] == refit_head.CONSTANT_LOGIT and not weights[2].any()
    logit = inputs @ weights[0] + bias[0]
    assert logit[held_out & irregular].min() > logit[held_out & ~irregular].max()
    served = cb.Served(b, np.zeros((n, 3)), fit, [], irregular, labels[:, :2])
    without = served.refit_blocks("embedding")
    blind = without["logit_z"][:, 0]
    assert not blind[held_out & irregular].min() > blind[held_out & ~irregular].max()
    assert np.allclose(np.linalg.norm(without["probabilities"], axis=1), 1)
    assert np.array_equal(without["embedding"], b["embedding"])  # only the statement blocks change
    flipped = labels.copy()
    flipped[held_out] = ~flipped[held_out]  # held-out labels cannot reach the fit
    assert np.array_equal(refit_head.fit(inputs[fit], flipped[fit])[0], weights)


def test_aims_first_ranks_the_aims_met_before_p10() -> None:
    rivals = {"AFIB": 0.4, "CLBBB": 0.3, "CRBBB": 0.1, "ASMI": 0.2}
    more_aims = {"p10_any": 0.70, "codes": {"AFIB": 0.41, "CLBBB": 0.3, "CRBBB": 0.2, "ASMI": 0.1}}
    higher_p10 = {"p10_any": 0.80, "codes": {"AFIB": 0.39, "CLBBB": 0.3, "CRBBB": 0.2, "ASMI": 0.1}}
    assert cf.aims_first(more_aims, rivals) == 3.70 and cf.aims_first(higher_p10, rivals) == 2.80
    no_rival = {"p10_any": 0.5, "codes": {"IMI": 0.9, "AFIB": 0.5}}  # a code without an aim counts nothing
    assert cf.aims_first(no_rival, rivals) == 1.5


def test_every_candidate_adds_settings_the_base_grid_does_not_have() -> None:
    base = cf.grid_settings(True)
    for candidate in cb.CANDIDATES:
        extra = candidate.settings(base)
        assert extra and not any(s in base for s in extra), candidate.name


def test_a_work_folder_without_a_groups_model_is_refused_naming_it(data_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ecgsearch.cli.main import app

    args = ["eval", "candidates", "--work", str(tmp_path), "--data", str(data_dir), "--groups", "2"]
    result = CliRunner().invoke(
        app, [*args, "--limit", "60", "--cache", str(tmp_path / "c"), "--quiet"], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 2 and "heldout-1-2-3-4-5" in result.output
    assert "--nested --groups 2 --limit 60" in result.output  # the command that trains them
    bad_groups = CliRunner().invoke(app, [*args[:-2], "--groups", "3"], env={"COLUMNS": "400"})
    assert bad_groups.exit_code == 2 and "--groups" in bad_groups.output


def test_a_choice_picks_only_what_the_runtime_can_serve_with_named_views() -> None:
    """A statement block beside the rhythm block leaves the waveform view no leading columns
    (export.runtime.waveform_split_error): the nested choice and eval choose must not pick it, and
    every other setting of the grid stays."""
    from ecgsearch.export.runtime import waveform_split_error

    settings = cf.grid_settings(True)
    assert all(
        waveform_split_error(s["rhythm_weight"] > 0, s["statement_weight"] > 0, False) is None
        for s in settings
    )
    assert waveform_split_error(True, True, False)  # the pair it leaves out is refused by the runtime
    plain = {s["rhythm_weight"] for s in settings if s["statement_weight"] == 0}
    blocks = {
        (s["statement_head"], s["statement_block"], s["statement_weight"])
        for s in settings
        if s["statement_weight"] > 0
    }
    assert plain == set(cf.RHYTHM_WEIGHTS) and len(settings) == len(plain) + len(blocks)
    weights = [w for w in cf.STATEMENT_WEIGHTS if w > 0]
    heads = cf.STATEMENT_HEADS_TRIED
    assert blocks == {(head, kind, w) for head in heads for kind in cf.STATEMENT_BLOCKS for w in weights}
    assert {s["statement_head"] for s in settings if s["statement_weight"] == 0} == {"trained"}
    assert [s["rhythm_weight"] for s in cf.grid_settings(False)] == list(cf.RHYTHM_WEIGHTS)  # no head
