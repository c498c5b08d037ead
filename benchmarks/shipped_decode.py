"""What each shipped model's decode costs on this CPU: its default decode (the one its card reports,
``cdc/zoo/weights/decodes.json``) beside the 9-step, γ = 0.8 decode, per 768x512 photo, through the
real bitstream, in one process. The default decode's time is written back into ``decodes.json``,
where ``cdc models list`` shows it.

    python benchmarks/shipped_decode.py [--repeat 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json

import torch
from common import RESULTS, photo, print_table, psnr, timed, write_json

from cdc.argtypes import number
from cdc.coding.coder import Coder
from cdc.zoo.checkpoint import load_codec
from cdc.zoo.pretrained import DECODES, available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=number(int, 1, 100, "an integer"), default=3, help="timed decodes per row")
    parser.add_argument("--threads", type=number(int, 1, 1024, "an integer"), default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = photo(768, 512)
    rows = []
    for name, path in available().items():
        coder = Coder(load_codec(path))
        for label, steps, gamma in (("default", None, None), ("9 steps, γ 0.8", 9, 0.8)):
            encoded = coder.encode(x, steps=steps, gamma=gamma)
            decoded = coder.decode(encoded.data)[0]
            seconds = timed(lambda data=encoded.data, c=coder: c.decode(data), repeat=args.repeat)
            used = coder.default_decode if steps is None else (steps, gamma)
            rows.append({"model": name, "decode": label, "steps": used[0], "gamma": used[1], "bpp": encoded.bpp,
                         "psnr": psnr(x, decoded), "decode_s": seconds})
    print(f"One 768x512 photo (scikit-learn's china.jpg), {args.threads} threads, median of {args.repeat} decodes")
    table = print_table(rows, [("model", "model"), ("decode", "decode"), ("steps", "steps"), ("gamma", "γ"),
                               ("bpp", "bpp"), ("psnr", "PSNR dB"), ("decode_s", "decode s")])
    write_json("shipped-decode", {"threads": args.threads, "repeat": args.repeat, "rows": rows, "table": table,
                                  "choice_table": choice_table(rows)})
    decodes = json.loads(DECODES.read_text())
    for row in rows:
        if row["decode"] == "default" and row["model"] in decodes:
            decodes[row["model"]]["cpu_s_768x512"] = round(row["decode_s"], 3)
    DECODES.write_text(json.dumps(decodes, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote the default decodes' times into {DECODES}")


def choice_table(rows: list[dict]) -> str:
    """Which shipped model for a rate and an objective: each model's rate and quality on the family's
    held-out photos at its default decode (``family.json``) beside that decode's CPU time (``rows``); a
    variable-rate model's range, from its lowest rate level to its highest."""
    family = json.loads((RESULTS / "family.json").read_text())["members"]
    lines = []
    for row in rows:
        member = family.get(row["model"])
        if row["decode"] != "default" or member is None:
            continue
        held_out = [h for h in member["heldout"] if (h["steps"], h["gamma"]) == (row["steps"], row["gamma"])]
        low, high = held_out[0], held_out[-1]

        def span(key: str, fmt: str, low=low, high=high) -> float | str:
            return low[key] if low is high else f"{low[key]:{fmt}}-{high[key]:{fmt}}"

        objective = "perception" if member["rho"] > 0 else "distortion"
        lines.append({"model": f"`{row['model']}`",
                      "objective": objective + (", any rate (--quality, --bpp)" if low is not high else ""),
                      "bpp": span("bpp", ".3f"), "psnr": span("psnr-rgb", ".2f"),
                      "stlpips": span("stlpips-alex", ".3f"),
                      "decode": f"{row['steps']} step{'s' * (row['steps'] != 1)}, γ {row['gamma']:g}",
                      "decode_s": row["decode_s"]})
    lines.sort(key=lambda r: (r["objective"], -r["bpp"] if isinstance(r["bpp"], float) else 0))
    return print_table(lines, [("model", "model"), ("objective", "objective"), ("bpp", "bpp"),
                                  ("psnr", "PSNR dB"), ("stlpips", "ST-LPIPS-Alex"), ("decode", "default decode"),
                                  ("decode_s", "CPU s per 768x512")])


if __name__ == "__main__":
    main()
