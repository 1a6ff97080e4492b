"""Speed, memory and accuracy of our DRR renderer side by side with DiffDRR, in one run.

One CT (the procedural phantom of :mod:`SpineRegistrationLib.phantom`), one AP view whose
physical detector stays fixed while its pixel grid goes 128², 256², 512² (pixel spacing
scaled), two volumes: (a) the whole CT and (b) one vertebra (masked and cropped to its
box: our ``mask``, DiffDRR's :class:`peers.diffdrr_peer.DiffDRRPeer` with the same mask).
The CT is posed by a non-trivial rigid pose about the vertebra centroid. For each case:

- forward: seconds per DRR, no autograd (median of ``--repeats`` after one warm-up run);
- forward+backward: seconds for one DRR and the gradient of a scalar loss with respect to
  the 6 pose parameters (rx, ry, rz, tx, ty, tz -> :func:`pose.params_to_matrix_torch`);
- peak memory above the case's baseline (CPU: growth of the process's maximum resident
  set, ``ru_maxrss``, each case in a fresh subprocess; CUDA: ``max_memory_allocated``);
- accuracy: relative error ``||ours - DiffDRR|| / ||DiffDRR||`` against DiffDRR's Siddon;
- throughput ratio: ours / DiffDRR in DRRs per second (> 1: ours is faster).

DiffDRR's Siddon holds (rays x crossed planes) tensors: the forward pass is split into
DiffDRR's own ``patch_size`` patches under ``--peer-memory-gb``; a forward+backward whose
estimate exceeds that budget is skipped and marked (its autograd graph keeps every patch).

Usage (install the peer first: ``bash Testing/benchmarks/install_peers.sh``)::

    python Testing/benchmarks/bench_drr.py --device cpu --sizes 128 256 512 --out drr_bench

writes ``drr_bench.md`` and ``drr_bench.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RENDERERS = ("ours", "diffdrr")
CASES = ("whole", "vertebra")
#: Bytes per (ray x crossed plane) element at DiffDRR Siddon's peak, measured with this
#: script on CPU (42-48 B forward, 56-62 B forward+backward, phantom and vertebra crop,
#: 128² and 256²), rounded up. Used only to size patches and to skip cases.
PEER_FORWARD_BYTES_PER_ELEMENT = 50
PEER_BACKWARD_BYTES_PER_ELEMENT = 65
POSE_PARAMS = (6.0, -4.0, 5.0, 3.0, -2.0, 4.0)  # rx, ry, rz deg, tx, ty, tz mm about the vertebra
VERTEBRA = "L3"


# --------------------------------------------------------------------------- inputs
def load_ct(vertebra: str):
    """(mu Volume, vertebra mask (K, J, I) bool, centroid RAS, description) of the benchmark CT."""
    from SpineRegistrationLib.render.drr import hu_to_mu

    try:
        from SpineRegistrationLib.core.labels import SCHEMES
        from SpineRegistrationLib.synthetic.phantom import generate_phantom
    except ImportError as error:
        print(
            f"bench_drr: SpineRegistrationLib.phantom not available ({error}); "
            "FALLING BACK to a synthetic CT: figures are not the phantom's",
            file=sys.stderr,
        )
        ct, mask, center = _synthetic_ct()
        return ct.with_array(hu_to_mu(ct.array)), mask, center, "synthetic fallback CT (no phantom)"
    phantom = generate_phantom()
    label = SCHEMES["verse"].label_of[vertebra]
    mask = phantom.labels.array == label
    if not mask.any():
        raise SystemExit(f"bench_drr: vertebra {vertebra} (label {label}) is not in the phantom")
    ct = phantom.ct
    names = phantom.config.vertebrae
    description = f"phantom {names[0]}-{names[-1]}, seed {phantom.config.seed}"
    return ct.with_array(hu_to_mu(ct.array)), mask, phantom.centroids_ras[vertebra], description


def _synthetic_ct():
    """Stand-in used only while the phantom module is missing: a water cylinder and a bone box."""
    from SpineRegistrationLib.core.volume import Volume

    n_ij, n_k, spacing = 200, 240, 1.0
    ijk_to_ras = np.diag([-spacing, -spacing, spacing, 1.0])
    ijk_to_ras[:3, 3] = [(n_ij - 1) / 2, (n_ij - 1) / 2, -(n_k - 1) / 2]
    k, j, i = np.meshgrid(np.arange(n_k), np.arange(n_ij), np.arange(n_ij), indexing="ij")
    x, y, z = ijk_to_ras[0, 0] * i + ijk_to_ras[0, 3], ijk_to_ras[1, 1] * j + ijk_to_ras[1, 3], k + ijk_to_ras[2, 3]
    hu = np.where(np.hypot(x / 95, y / 80) < 1, 40.0, -1000.0)
    mask = (np.abs(x) < 22) & (np.abs(y) < 16) & (np.abs(z) < 14)
    hu = np.where(mask, 700.0, hu).astype(np.float32)
    return Volume(hu, ijk_to_ras), mask, np.zeros(3)


def ap_geometry(size: int, center_ras):
    """The default AP C-arm view centred on ``center_ras``, its detector resampled to size x size."""
    from SpineRegistrationLib.geometry import preset_geometry

    return preset_geometry("AP", isocenter_ras=center_ras).resized(size, size)


# --------------------------------------------------------------------------- one case (subprocess)
def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _trim_heap() -> bool:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``) so the baseline RSS is live data."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return True


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0, /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class _Memory:
    """Peak memory above the current level: CUDA allocator peak, or the CPU process's peak RSS.

    On CPU the high-water mark is reset first so that loading the volume and building the
    renderer do not hide the rendering's peak; where that is impossible, the growth of
    ``ru_maxrss`` (a lower bound) is reported.
    """

    def __init__(self, device):
        import gc

        import torch

        self.torch, self.cuda, self.device = torch, device.type == "cuda", device
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device) / 2**20
        elif _trim_heap() and _reset_peak_rss() and _proc_status_mb("VmHWM") is not None:
            self.high_water = lambda: _proc_status_mb("VmHWM")
            self.base = _proc_status_mb("VmRSS")
        else:
            self.high_water = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
            self.base = self.high_water()

    def peak_mb(self) -> float:
        if self.cuda:
            return self.torch.cuda.max_memory_allocated(self.device) / 2**20 - self.base
        return self.high_water() - self.base


def _time(function, repeats: int, budget_s: float, synchronize) -> tuple[float, int, float]:
    """(median, runs, min) seconds of ``function`` over up to ``repeats`` runs after one warm-up.

    Runs are cut to fit ``budget_s``; a warm-up longer than the budget is itself the one
    measurement (runs = 0): at several seconds a call, first-call overhead is negligible.
    """
    start = time.perf_counter()
    function()
    synchronize()
    warm = time.perf_counter() - start
    if warm > budget_s:
        return warm, 0, warm
    repeats = max(1, min(repeats, int(budget_s / max(warm, 1e-9))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), repeats, min(times)


def run_case(spec: dict) -> dict:
    """Time one (renderer, case, size) in this process; write its forward image to spec['image']."""
    import torch

    from SpineRegistrationLib.render.drr import Detectors, DRRRenderer
    from SpineRegistrationLib.geometry import XrayGeometry
    from SpineRegistrationLib.core.pose import params_to_matrix_torch
    from SpineRegistrationLib.core.volume import Volume

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    data = np.load(spec["volume"])
    mu = Volume(data["mu"], data["ijk_to_ras"])
    mask = data["mask"] if spec["case"] == "vertebra" else None
    g = spec["geometry"]
    geometry = XrayGeometry(
        g["source"], g["detector_origin"], g["detector_u"], g["detector_v"], g["pixel_spacing"], g["size"]
    )
    center = torch.as_tensor(spec["center_ras"], dtype=torch.float32, device=device)
    params0 = torch.tensor(POSE_PARAMS, dtype=torch.float32, device=device)
    params0 = torch.cat([torch.deg2rad(params0[:3]), params0[3:]])
    result = {"renderer": spec["renderer"], "case": spec["case"], "size": geometry.size[0]}

    if spec["renderer"] == "ours":
        renderer = DRRRenderer(mu, mask=mask).to(device)
        detectors = Detectors.from_geometries([geometry], device=device)
        render = lambda pose: renderer(pose, detectors)[:, 0]  # noqa: E731
        result["volume_ijk"] = list(renderer.shape_ijk)
        backward_ok, note = True, ""
    else:
        sys.path.insert(0, str(HERE))
        from peers.diffdrr_peer import DiffDRRPeer

        rays = geometry.size[0] * geometry.size[1]
        ijk = _crop_shape_ijk(mu, mask)
        planes = sum(n + 1 for n in ijk)
        budget = spec["peer_memory_gb"] * 2**30
        max_rays = int(budget / (planes * PEER_FORWARD_BYTES_PER_ELEMENT))
        # DiffDRR renders (rays // patch_size²) chunks in series: a power of two keeps them even.
        patch = None if rays <= max_rays else 2 ** max(0, int(math.log2(max(1, math.isqrt(max_rays)))))
        peer = DiffDRRPeer(mu, geometry, "siddon", mask=mask, device=device)
        peer.drr.patch_size = patch
        render = peer.forward
        result["volume_ijk"] = list(ijk)
        result["peer_patch_size"] = patch
        estimate = rays * planes * PEER_BACKWARD_BYTES_PER_ELEMENT
        backward_ok = estimate <= budget
        note = "" if backward_ok else f"fwd+bwd skipped: est. {estimate / 2**30:.1f} GiB > {spec['peer_memory_gb']} GiB"

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    pose0 = params_to_matrix_torch(params0[None], center)
    memory = _Memory(device)

    def forward():
        with torch.no_grad():
            return render(pose0)

    result["forward_s"], result["forward_runs"], result["forward_min_s"] = _time(
        forward, spec["repeats"], spec["budget_s"], sync
    )
    result["forward_peak_mb"] = memory.peak_mb()
    np.save(spec["image"], forward()[0].cpu().numpy())

    def forward_backward():
        params = params0.clone().requires_grad_(True)
        image = render(params_to_matrix_torch(params[None], center))
        loss = image.square().mean()
        loss.backward()
        return params.grad

    if backward_ok:
        memory = _Memory(device)
        result["backward_s"], result["backward_runs"], result["backward_min_s"] = _time(
            forward_backward, spec["repeats"], spec["budget_s"], sync
        )
        result["backward_peak_mb"] = memory.peak_mb()
        grad = forward_backward()
        result["grad_finite"] = bool(torch.isfinite(grad).all())
    result["note"] = note
    return result


def _crop_shape_ijk(mu, mask) -> tuple[int, int, int]:
    if mask is None:
        return mu.shape_ijk
    k, j, i = np.nonzero(mask)
    return (int(i.max() - i.min() + 1), int(j.max() - j.min() + 1), int(k.max() - k.min() + 1))


# --------------------------------------------------------------------------- driver
def _run_subprocess(spec: dict, timeout_s: float) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt_ms(seconds) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.0f}" if seconds >= 0.1 else f"{seconds * 1e3:.1f}"


def _fmt_mb(mb) -> str:
    return "–" if mb is None else f"{mb:.0f}"


def _ratio(ours, peer) -> str:
    return "–" if ours is None or peer is None else f"{peer / ours:.1f}×"


def markdown(rows: list[dict], header: dict) -> str:
    lines = [
        "# DRR renderer benchmark: ours (Joseph, bilinear slices) vs DiffDRR (Siddon)",
        "",
        *(f"- {key}: {value}" for key, value in header.items()),
        "",
        "Times: ms per DRR, median (min) of up to the requested runs after one warm-up; * = a single run "
        "(the warm-up itself when it exceeded the time budget). Memory: peak above the case's baseline, MiB. "
        "Speed-up = DiffDRR median / our median (> 1: ours is faster). "
        "Error = ||ours − DiffDRR Siddon|| / ||DiffDRR Siddon||.",
        "",
        "| volume | detector | ours fwd | DiffDRR fwd | speed-up fwd | ours fwd+bwd | DiffDRR fwd+bwd "
        "| speed-up fwd+bwd | ours peak fwd / fwd+bwd | DiffDRR peak fwd / fwd+bwd | rel. error | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        o, p = row["ours"], row["diffdrr"]

        def timed(r, key):
            if key not in r:
                return "–"
            runs = r[key.replace("_s", "_runs")]
            return (
                f"{_fmt_ms(r[key])} ({_fmt_ms(r[key.replace('_s', '_min_s')])})" if runs > 1 else f"{_fmt_ms(r[key])}*"
            )

        notes = "; ".join(
            n
            for n in (
                o.get("error", ""),
                p.get("error", ""),
                p.get("note", ""),
                f"DiffDRR patch_size {p['peer_patch_size']}" if p.get("peer_patch_size") else "",
            )
            if n
        )
        error = "–" if row.get("relative_error") is None else f"{100 * row['relative_error']:.2f} %"
        lines.append(
            f"| {row['case']} {'×'.join(map(str, o.get('volume_ijk', p.get('volume_ijk', []))))} | {row['size']}² "
            f"| {timed(o, 'forward_s')} | {timed(p, 'forward_s')} | {_ratio(o.get('forward_s'), p.get('forward_s'))} "
            f"| {timed(o, 'backward_s')} | {timed(p, 'backward_s')} "
            f"| {_ratio(o.get('backward_s'), p.get('backward_s'))} "
            f"| {_fmt_mb(o.get('forward_peak_mb'))} / {_fmt_mb(o.get('backward_peak_mb'))} "
            f"| {_fmt_mb(p.get('forward_peak_mb'))} / {_fmt_mb(p.get('backward_peak_mb'))} | {error} | {notes} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="torch device for both renderers")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[128, 256, 512],
        help="detector pixels per side (same physical detector, spacing scaled)",
    )
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES, help="volumes to render")
    parser.add_argument("--renderers", nargs="+", default=list(RENDERERS), choices=RENDERERS)
    parser.add_argument("--vertebra", default=VERTEBRA, help="vertebra of the ROI case; also the pose centre")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement, after one warm-up")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=10.0,
        help="seconds of timed runs per measurement; fewer repeats (at least 1) when exceeded",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every case")
    parser.add_argument(
        "--peer-memory-gb",
        type=float,
        default=4.0,
        help="GiB budget for DiffDRR Siddon's (rays x planes) tensors: forward split into "
        "patches under it, forward+backward skipped above it",
    )
    parser.add_argument("--timeout-s", type=float, default=300.0, help="limit for one case's subprocess, seconds")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_case(json.loads(args.worker))))
        return 0
    if "diffdrr" in args.renderers:
        try:
            import diffdrr  # noqa: F401
        except ImportError:
            parser.error(
                "DiffDRR is not installed: run `bash Testing/benchmarks/install_peers.sh` or pass --renderers ours"
            )
    import torch

    import SpineRegistrationLib

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    start = time.perf_counter()
    mu, mask, center, description = load_ct(args.vertebra)
    header = {
        "CT": f"{description}; {'×'.join(map(str, mu.shape_ijk))} voxels of "
        f"{'×'.join(f'{s:g}' for s in mu.spacing_mm)} mm; ROI: vertebra {args.vertebra} masked, cropped to its box",
        "view": "AP preset (SDD 1020 mm, SID 620 mm, 307 mm detector) centred on the vertebra; pose "
        f"{POSE_PARAMS} (rx, ry, rz deg, tx, ty, tz mm) about its centroid",
        "device": f"{args.device} ({platform.processor() or platform.machine()}, {args.threads} torch threads, "
        f"{os.cpu_count()} cores visible)"
        if args.device == "cpu"
        else torch.cuda.get_device_name(),
        "software": f"SpineRegistrationLib {SpineRegistrationLib.__version__}, torch {torch.__version__}"
        + (f", diffdrr {__import__('diffdrr').__version__}" if "diffdrr" in args.renderers else ""),
        "loss for fwd+bwd": "mean squared DRR, gradient w.r.t. the 6 pose parameters",
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_drr_") as tmp:
        volume_path = os.path.join(tmp, "volume.npz")
        np.savez(volume_path, mu=mu.array, ijk_to_ras=mu.ijk_to_ras, mask=mask)
        for case in args.cases:
            for size in args.sizes:
                geometry = ap_geometry(size, center)
                row = {"case": case, "size": size}
                for renderer in RENDERERS:
                    if renderer not in args.renderers:
                        row[renderer] = {}
                        continue
                    spec = dict(
                        renderer=renderer,
                        case=case,
                        device=args.device,
                        threads=args.threads,
                        volume=volume_path,
                        geometry=geometry.to_json_dict(),
                        center_ras=[float(c) for c in center],
                        repeats=args.repeats,
                        budget_s=args.budget_s,
                        peer_memory_gb=args.peer_memory_gb,
                        image=os.path.join(tmp, f"{renderer}_{case}_{size}.npy"),
                    )
                    print(f"bench_drr: {case} {size}² {renderer} ...", file=sys.stderr, flush=True)
                    row[renderer] = _run_subprocess(spec, args.timeout_s)
                images = [os.path.join(tmp, f"{r}_{case}_{size}.npy") for r in RENDERERS]
                if all(os.path.exists(p) for p in images):
                    ours, theirs = (np.load(p) for p in images)
                    row["relative_error"] = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
                rows.append(row)
    header["total time"] = f"{time.perf_counter() - start:.0f} s"
    table = markdown(rows, header)
    print(table)
    if args.out is not None:
        args.out.with_suffix(".md").write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
