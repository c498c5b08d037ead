"""A perceptual member's multi-step decode distilled into one step: does the student keep the teacher's gain?

The teacher (a shipped ρ > 0 member) beats the ρ = 0 members' best decode in ST-LPIPS at equal bpp only at
its 9-step decode (about six times the one-step decode's time). Its student (``python -m
cdc.training.distill``: the teacher's encoder and bitstream, its decoder fine-tuned so that one
deterministic step gives the teacher's 9-step output) decodes in one step. Every model codes the photos
through real bitstreams in this one process, decode times side by side: the teacher at its multi-step
decode and at each student's one-step decode, each student at its one-step decode (γ 0 from x_T = 0, or
γ ``--student-gamma`` from the teacher's start noise), and the two ρ = 0 members whose rates bracket the
teacher's at 1 step γ 0 and 9 steps γ 0.8. Each ρ > 0 row's ST-LPIPS (both networks; the teacher and the
student trained with ST-LPIPS-Alex, so VGG is the judge they did not train with) is compared with the ρ = 0
members' best decode, interpolated in log-rate at its bpp. Sets: the held-out packages (``shards.heldout``)
and, with ``--shards``, the first ``--limit`` photos of that build's held-out split. A gallery of centre
crops of the smoothest and the most textured photo of the held-out packages is written for the eye.

    python -m cdc.training.distill --teacher small-q1-perceptual --shards runs/photos/shards \\
        --output runs/distil/small-q1-perceptual --student-gamma 0.8
    python benchmarks/distilled_decoder.py --student runs/distil/small-q1-perceptual

``--student`` takes a student's checkpoint directory or a shipped student's name (``small-q1-perceptual-1step``)
and repeats: students of one teacher that start their step from different states (x_T = 0, or the
teacher's start noise at their ``--student-gamma``) are measured side by side, each at its own one-step
decode, and the teacher at each student's teacher decode.

Writes ``benchmarks/results/distilled-decoder-TEACHER.json`` and ``docs/family/distilled-decoder-TEACHER.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from common import HELDOUT_PACKAGES, photo_sets, print_table, write_json
from family_heldout import log_interp
from perceptual_decoder import measure, sheet, texture

from cdc.argtypes import number

REPO = Path(__file__).resolve().parents[1]
REFERENCES = {"small-q1-perceptual": ("small-q1", "small-q2"), "small-q0-perceptual": ("small-q0", "small-q1")}
"""Teacher -> the ρ = 0 members whose rates bracket its rate on the held-out photos."""
NETS = ("vgg", "alex")
COLUMNS = [("photos", "photos"), ("model", "model"), ("decode", "decode"), ("bpp", "bpp"), ("psnr-rgb", "PSNR dB"),
           ("stlpips-vgg", "ST-LPIPS-VGG"), ("vgg_vs_rho0_pct", "vs ρ = 0 %"), ("stlpips-alex", "ST-LPIPS-Alex"),
           ("alex_vs_rho0_pct", "vs ρ = 0 % "), ("decode_s", "decode s")]


def compare(rows: list[dict], references: tuple[str, ...]) -> None:
    """Add to every row that is not a reference its ST-LPIPS against the references' best decode at its bpp (%)."""
    for net in NETS:
        floor = [(min(r["bpp"] for r in rows if r["model"] == m), min(r[f"stlpips-{net}"] for r in rows
                                                                         if r["model"] == m)) for m in references]
        for r in rows:
            ref = None if r["model"] in references else log_interp(floor, r["bpp"])
            r[f"{net}_vs_rho0_pct"] = None if ref is None else 100 * (r[f"stlpips-{net}"] / ref - 1)


def cell(key: str, value) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if key.endswith("_pct"):
        return f"{value:+.1f}"
    return f"{value:.2f}" if key in ("psnr-rgb", "decode_s") else f"{value:.3f}"


def markdown(results: dict) -> str:
    """One Markdown table of every set's rows."""
    lines = ["| " + " | ".join(h.strip() for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for label, entry in results.items():
        for r in entry["rows"]:
            r = {**r, "photos": f"{label.split(' (')[0]} ({entry['photos']})"}
            lines.append("| " + " | ".join(cell(k, r.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def student_record(ref: str, p: argparse.ArgumentParser) -> tuple[Path, dict]:
    """A student's checkpoint (a directory or a shipped name) and its distillation record: its
    ``distill.json`` where there is one (with the loss curve), else its checkpoint's provenance."""
    from cdc.zoo.layout import read_checkpoint_info
    from cdc.zoo.pretrained import resolve_checkpoint

    try:
        path = resolve_checkpoint(ref)
        info = path / "distill.json"
        record = json.loads(info.read_text()) if info.is_file() else read_checkpoint_info(path)["metadata"]
    except (OSError, ValueError) as exc:
        p.error(f"--student {str(exc).splitlines()[0]}")  # the message names the file
    if "distilled_from" not in record:
        p.error(f"--student {ref}: no distill.json nor a distillation record in its metadata (not written by "
                "python -m cdc.training.distill)")
    return path, record


def students(refs: list[str], p: argparse.ArgumentParser) -> tuple[str, dict[str, tuple[Path, dict]]]:
    """The students' common teacher and, per student, its label (its start state), checkpoint and record."""
    found, teachers = {}, set()
    for ref in refs:
        path, record = student_record(ref, p)
        teacher = record["distilled_from"]
        if teacher not in REFERENCES:
            p.error(f"--student {ref}: its teacher {teacher} is not one of {', '.join(REFERENCES)}")
        if teachers and teacher not in teachers:
            p.error(f"--student: the students have different teachers ({', '.join(sorted(teachers | {teacher}))})")
        teachers.add(teacher)
        gamma = record["distill"].get("student_gamma", 0.0)
        state = f"x_T = {f'{gamma:g} ε' if gamma else '0'}"
        label = f"student, {state}"
        if label in found:
            p.error(f"--student {ref}: two students start from the same state ({state}); compare them one at a time")
        found[label] = (path, record)
    return teachers.pop(), found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", required=True, action="append",
                   help="a checkpoint from python -m cdc.training.distill or a shipped student's name (repeat to "
                        "compare students)")
    p.add_argument("--shards", help="a shard build whose held-out split is the second set (default: packages only)")
    p.add_argument("--limit", type=number(int, 0, 10**6, "an integer"), default=12, help="held-out photos (0: all)")
    p.add_argument("--threads", type=number(int, 1, 1024, "an integer"), default=2)
    args = p.parse_args(argv)
    teacher, found = students(args.student, p)
    torch.set_num_threads(args.threads)
    from cdc.zoo.pretrained import available

    shipped = available()
    stem = f"distilled-decoder-{teacher}"
    one_step = {label: (1, r["distill"].get("student_gamma", 0.0)) for label, (_, r) in found.items()}
    multi = {(r["distill"]["teacher_steps"], r["distill"]["teacher_gamma"]) for _, r in found.values()}
    # The teacher also decodes at each student's one-step decode: what one step gives before distillation.
    models = {**{m: (shipped[m], ((1, 0.0), (9, 0.8))) for m in REFERENCES[teacher]},
              teacher: (shipped[teacher], tuple(sorted({(1, 0.0), *one_step.values(), *multi}))),
              **{label: (path, (one_step[label],)) for label, (path, _) in found.items()}}
    results = {}
    for label, photos in photo_sets(args.shards, args.limit).items():
        textures = [texture(img) for img in photos]
        order = [int(np.argmin(textures)), int(np.argmax(textures))]
        rows, kept = measure(models, photos, set(order))
        compare(rows, REFERENCES[teacher])
        results[label] = {"photos": len(photos), "rows": rows}
        print(f"\n{label} ({len(photos)} photos)")
        print_table(rows, COLUMNS[1:])
        if label == HELDOUT_PACKAGES:
            best = REFERENCES[teacher][0]
            shown = {k: v for k, v in kept.items() if k[0] != REFERENCES[teacher][1] and (k[0] != best or k[1] > 1)}
            sheet(photos, shown, order, REPO / "docs" / "family" / f"{stem}.png")
    write_json(stem, {"table": markdown(results), "teacher": teacher,
                      "students": {label: {"checkpoint": str(path), "distill": r["distill"], "curve": r.get("curve"),
                                           "target_seconds": r.get("target_seconds")}
                                   for label, (path, r) in found.items()},
                      "args": vars(args), "sets": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
