"""One-step distillation (cdc.training.distill): the differentiable decode, the targets, the student."""

from __future__ import annotations

import pytest
import torch
from conftest import photo_tensor, tiny_codec

from cdc.models.perceptual import build_perceptual
from cdc.training.distill import DistillConfig, distil, main, one_step_decode, student_noise, teacher_targets


def teacher():
    codec = tiny_codec(seed=1)
    with torch.no_grad():  # the residual decoder's head starts at zero: give the U-Net a say
        codec.unet.head[-1].weight.normal_(std=1e-2)
    return codec


def crops() -> torch.Tensor:
    image = photo_tensor(size=(256, 256))[0]
    return torch.stack([image[:, i:i + 64, j:j + 64] for i in (0, 96, 192) for j in (0, 128)])


def test_one_step_decode_is_the_samplers_one_step_decode():
    codec = teacher()
    y_hat = codec.compress(photo_tensor(size=(64, 128)))["y_hat"]
    with torch.no_grad():
        assert torch.allclose(one_step_decode(codec, y_hat), codec.reconstruct(y_hat, steps=1, gamma=0.0), atol=1e-6)


def test_targets_are_the_teachers_multi_step_decodes():
    codec, images = teacher(), crops()
    cfg = DistillConfig(teacher_steps=3, teacher_gamma=0.8, crops=len(images), crop=64, batch=4, seed=5)
    y_hat, targets = teacher_targets(codec, images, cfg)
    assert torch.equal(y_hat[2:3], codec.compress(images[2:3])["y_hat"])
    assert torch.allclose(targets[5:6], codec.reconstruct(y_hat[5:6], steps=3, gamma=0.8, seed=10), atol=1e-6)


def test_the_student_learns_its_teachers_decode_and_keeps_its_bitstream():
    codec, images = teacher(), crops()
    cfg = DistillConfig(teacher_steps=3, crops=len(images), crop=64, batch=3, steps=15, lr=1e-3)
    y_hat, targets = teacher_targets(codec, images, cfg)
    distance = build_perceptual(cfg.perceptual)

    def gap(model):
        with torch.no_grad():
            out = one_step_decode(model, y_hat)
            return float(torch.nn.functional.mse_loss(out, targets) + distance(out, targets).mean())

    student, curve = distil(codec, y_hat, targets, cfg, log_every=5)
    assert [c["step"] for c in curve] == [5, 10, 15]
    assert gap(student) < 0.9 * gap(codec)
    assert (student.config.sampler.steps, student.config.sampler.gamma) == (1, 0.0)
    before, after = codec.state_dict(), student.state_dict()
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and {name.split(".")[0] for name in moved} <= {"g_s", "context", "unet"}
    photo = photo_tensor(size=(64, 128))  # the same bits (file headers name the model: they differ)
    assert student.compress(photo)["strings"] == codec.compress(photo)["strings"]


@pytest.mark.parametrize(("flag", "message"), [("--crop=100", "multiple of 64"), ("--teacher-steps=1", ">= 2 steps"),
                                               ("--teacher=nowhere", "no such model checkpoint"),
                                               ("--init=small-q1", "not a student of small-q1-perceptual")])
def test_bad_arguments_are_refused_in_one_line(flag, message, capsys, tmp_path):
    args = ["--teacher", "small-q1-perceptual", "--shards", str(tmp_path), "--output", str(tmp_path / "s"), flag]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_noise_conditioned_student_decodes_from_its_teachers_start_noise():
    codec, images = teacher(), crops()[:2]
    cfg = DistillConfig(teacher_steps=3, student_gamma=0.8, crops=2, crop=64, batch=2, steps=2, seed=7)
    y_hat, targets = teacher_targets(codec, images, cfg)
    noise = student_noise(codec, y_hat, cfg)
    with torch.no_grad():  # crop i's student decode starts where the teacher's did, scaled by the student's γ
        assert torch.allclose(one_step_decode(codec, y_hat[1:], noise[1:]),
                              codec.reconstruct(y_hat[1:], steps=1, gamma=0.8, seed=8), atol=1e-6)
    student, _ = distil(codec, y_hat, targets, cfg, log_every=1)
    assert (student.config.sampler.steps, student.config.sampler.gamma) == (1, 0.8)
    assert student_noise(codec, y_hat, DistillConfig(crops=2, batch=2)) is None


def test_a_second_round_continues_the_student_and_refuses_another_teachers():
    codec, images = teacher(), crops()[:2]
    cfg = DistillConfig(teacher_steps=3, crops=2, crop=64, batch=2, steps=2, lr=1e-3)
    y_hat, targets = teacher_targets(codec, images, cfg)
    first, _ = distil(codec, y_hat, targets, cfg, log_every=1)
    second, _ = distil(codec, y_hat, targets, DistillConfig(**{**cfg.__dict__, "steps": 1, "lr": 1e-12}),
                       log_every=1, init=first)
    for name, value in first.state_dict().items():  # a negligible step from the first round, not from the teacher
        assert torch.allclose(second.state_dict()[name], value, atol=1e-6), name
    assert not torch.equal(first.unet.head[-1].weight, codec.unet.head[-1].weight)
    with pytest.raises(ValueError, match="another encoder or entropy model"):
        distil(teacher_with_other_encoder(), y_hat, targets, cfg, init=first)


def teacher_with_other_encoder():
    codec = teacher()
    with torch.no_grad():
        next(codec.g_a.parameters()).add_(0.1)
    return codec
