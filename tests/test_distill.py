import json

import numpy as np
import pandas as pd
import pytest
import stage_chain
import torch
import torch.nn.functional as F
from conftest import mixed_table

from stages import distill
from tamis import calibration
from tamis.contract import StageError
from tamis.losses import dkd_loss, nkd_loss, non_target_log_softmax
from tamis import nets
from tamis.nets import Table, load_model


def test_dkd_is_zero_for_equal_logits_and_positive_otherwise():
    z, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    assert dkd_loss(z, z.clone(), y, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert dkd_loss(z, torch.randn(6, 5), y, 4.0).item() > 0


def test_the_non_target_mask_really_removes_the_target_column():
    z, y = torch.randn(4, 5), torch.tensor([0, 3, 1, 4])
    log_p = non_target_log_softmax(z, y, 2.0)
    assert (log_p.exp()[torch.arange(4), y] == 0).all()
    assert torch.allclose(log_p.exp().sum(1), torch.ones(4))
    bumped = z.clone()
    bumped[torch.arange(4), y] += 7.0  # only the target logits move
    assert torch.allclose(non_target_log_softmax(bumped, y, 2.0).exp(), log_p.exp())
    student = z.clone().requires_grad_(True)
    dkd_loss(student, torch.randn(4, 5), y, 2.0, alpha=0.0, beta=1.0).backward()  # NCKD alone
    assert (student.grad[torch.arange(4), y] == 0).all() and student.grad.abs().sum() > 0


def test_nkd_keeps_only_the_target_term_when_non_targets_agree():
    teacher, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    student = teacher.clone()
    student[torch.arange(5), y] -= 1.5  # same non-target distribution, lower target
    t_target = F.softmax(teacher, 1)[torch.arange(5), y]
    s_log_target = F.log_softmax(student, 1)[torch.arange(5), y]
    expected = -(t_target * s_log_target).mean()
    assert nkd_loss(student, teacher, y, 2.0, gamma=1.5).item() == pytest.approx(expected.item(), rel=1e-5)
    assert nkd_loss(torch.randn(5, 4), teacher, y, 2.0) > 0


def test_dkd_and_nkd_honour_row_weights():
    s, t, y = torch.randn(6, 3), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    w = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    assert dkd_loss(s, t, y, 4.0, weight=w).item() == pytest.approx(dkd_loss(s[:3], t[:3], y[:3], 4.0).item(), rel=1e-5)
    assert nkd_loss(s, t, y, weight=w).item() == pytest.approx(nkd_loss(s[:3], t[:3], y[:3]).item(), rel=1e-5)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    return stage_chain.built(tmp_path_factory, "distill", mixed_table(800, 4))


def test_soft_targets_are_the_frozen_calibrated_teacher(distilled):
    teacher, encoder, _ = load_model(distilled / "models/teacher.pt")
    cal = json.loads((distilled / "models/calibration.json").read_text())
    frame = pd.read_parquet(distilled / "data/resampled/train.parquet")
    table = Table.of(*encoder.transform(frame), encoder.labels(frame["label"]))
    soft = distill.soft_targets(teacher, cal, table)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        raw = teacher(table.num, table.cat).numpy()
    assert np.allclose(soft.exp().numpy(), calibration.apply_map(cal, raw), atol=1e-5)


def test_stage_trains_both_students_and_keeps_the_better(distilled):
    metrics = json.loads((distilled / "metrics/distill.json").read_text())
    kd, base = metrics["distilled"]["calib"], metrics["baseline"]["calib"]
    better = kd["macro_f1"] > base["macro_f1"] or (kd["macro_f1"] == base["macro_f1"] and kd["nll"] <= base["nll"])
    assert metrics["kept"] == ("distilled" if better else "baseline")
    assert metrics["calib"] == metrics[metrics["kept"]]["calib"]
    student, _, ckpt = load_model(distilled / "models/student.pt")
    assert ckpt["calibration"]["method"] in calibration.PARAMETRIC and ckpt["distilled"] == (metrics["kept"] == "distilled")
    assert student.arch["hidden"] == [16] and metrics["parameters"] < metrics["teacher_parameters"]


def test_a_student_as_wide_as_the_teacher_is_refused(distilled, tmp_path):
    root = stage_chain.copy_of(distilled, tmp_path / "ws")
    stage_chain.set_params(root, "distill.hidden=[48, 24]")
    with pytest.raises(StageError, match=r"distill.hidden \[48, 24\] is not smaller than the teacher's train.hidden"):
        distill.run(stage_chain.params_of(root), root)


def test_transfer_rows_are_mixups_of_training_rows_labelled_by_the_teacher(distilled, monkeypatch):
    teacher, encoder, _ = load_model(distilled / "models/teacher.pt")
    cal = json.loads((distilled / "models/calibration.json").read_text())
    frame = pd.read_parquet(distilled / "data/resampled/train.parquet")
    table = Table.of(*encoder.transform(frame), encoder.labels(frame["label"]))
    table.soft = distill.soft_targets(teacher, cal, table)
    n = len(table)
    label = lambda rows: distill.soft_targets(teacher, cal, rows)
    assert nets.with_mixup_rows(table, 0.0, 0, label) is table

    both = nets.with_mixup_rows(table, 2.0, 0, label)
    assert len(both) == 3 * n and torch.equal(both.index, torch.arange(3 * n))
    assert torch.equal(both.num[:n], table.num) and torch.equal(both.soft[:n], table.soft) and torch.equal(both.y[:n], table.y)
    mixed = Table(both.num[n:], both.cat[n:], both.y[n:], both.weight[n:])
    assert torch.allclose(both.soft[n:], distill.soft_targets(teacher, cal, mixed), atol=1e-6)
    assert torch.equal(both.y[n:], both.soft[n:].argmax(1))
    # numeric columns interpolate between two rows: inside the training rows' range, and mostly not a copy of one
    assert (both.num[n:] >= table.num.min(0).values - 1e-6).all() and (both.num[n:] <= table.num.max(0).values + 1e-6).all()
    assert (torch.cdist(both.num[n:], table.num).min(1).values > 1e-4).float().mean() > 0.5
    # categoricals come from a parent: every (column, code) pair seen in the synthetic rows is one the training rows have
    for col in range(table.cat.shape[1]):
        assert set(both.cat[n:, col].tolist()) <= set(table.cat[:, col].tolist())
    again = nets.with_mixup_rows(table, 2.0, 0, label)
    assert torch.equal(again.num, both.num) and not torch.equal(nets.with_mixup_rows(table, 2.0, 1, label).num, both.num)

    monkeypatch.setattr(nets, "MAX_MIXUP_ROWS", 10)
    assert len(nets.with_mixup_rows(table, 2.0, 0, label)) == n + 10


def test_stage_reports_its_transfer_rows(distilled):
    metrics = json.loads((distilled / "metrics/distill.json").read_text())
    rows = len(pd.read_parquet(distilled / "data/resampled/train.parquet"))
    assert metrics["transfer_rows"] == min(3 * rows, nets.MAX_MIXUP_ROWS)


def test_the_distilled_student_stops_by_agreement_with_the_teacher_the_baseline_by_the_given_labels(distilled, tmp_path, monkeypatch):
    root = stage_chain.copy_of(distilled, tmp_path / "ws")
    calib = pd.read_parquet(root / "data/corrected/calib.parquet")
    teacher, encoder, _ = load_model(root / "models/teacher.pt")
    cal = json.loads((root / "models/calibration.json").read_text())
    table = Table.of(*encoder.transform(calib), encoder.labels(calib["label"]))
    agree = distill.soft_targets(teacher, cal, table).argmax(1)
    assert not torch.equal(agree, table.y)  # the teacher disagrees with some given labels, so the two can be told apart
    seen, real = {}, distill.train_student

    def spy(params, encoder, rows, val, loss_fn, name):
        seen[name] = val.y.clone()
        return real(params, encoder, rows, val, loss_fn, name)

    monkeypatch.setattr(distill, "train_student", spy)
    distill.run(stage_chain.params_of(root), root)
    assert torch.equal(seen["distill (distilled)"], agree) and torch.equal(seen["distill (baseline)"], table.y)
