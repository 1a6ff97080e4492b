"""Render the module's vertebra boxes on the X-ray slice views, offscreen with VTK, into a PNG.

The scene is built as :mod:`render_scene` builds it (the phantom, its X-rays on their detector
planes, a registration result applied as transform nodes), then the boxes come from
SpineRegistrationModuleLib.boxes: projected from the CT at the registered poses, some
accepted (green), one dragged off its vertebra (orange, with the module's warning). Each box
is drawn from its markups plane node (corners read back in X-ray pixels, the node's colour).

Usage::

    python Testing/slicer/render_boxes.py [--data PHANTOM_DIR] [--result truth|register|DIR]
                                          [--out Resources/Screenshots]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import vtk

sys.path.insert(0, str(Path(__file__).resolve().parent))

import render_scene  # noqa: E402  (puts the module folder on sys.path, sets the offscreen window)
from render_scene import grey_rgba, image_actor, label_3d, line_actor, render_window, save, text  # noqa: E402

import SpineRegistrationModuleLib as logic  # noqa: E402

#: How far the one misplaced box is dragged along the detector rows, mm.
MISPLACED_MM = 25.0


def boxes_scene(data: Path, result: str, work: Path):
    """The render_scene scene with projected boxes: all accepted but one LAT box, dragged off."""
    scene, nodes, _ = render_scene.build_scene(data, result, work)
    xrays = {view: nodes[view] for view in logic.VIEWS}
    logic.project_boxes(scene, nodes["ct"], nodes["seg"], xrays)
    logic.accept_all(scene)
    moved = logic.box_nodes(scene, xrays["LAT"])[1]
    logic.set_accepted(moved, False)
    geometry = logic.geometry_of(xrays["LAT"])
    moved.SetCenterWorld(*(np.array(moved.GetCenterWorld()) - MISPLACED_MM * geometry.detector_v))
    warnings = logic.projection_warnings(scene, nodes["ct"], nodes["seg"], xrays)
    return scene, xrays, warnings


def render(scene, xrays: dict, warnings: list[str], out: Path) -> None:
    panel = 560
    window = render_window(2 * panel, panel)
    for col, (view, xray) in enumerate(xrays.items()):
        geometry = logic.geometry_of(xray)
        (du, dv), (cols, rows) = geometry.pixel_spacing, geometry.size
        renderer = vtk.vtkRenderer()
        renderer.SetViewport(col / 2, 0, (col + 1) / 2, 1)
        renderer.AddActor(image_actor(grey_rgba(xray), (du, dv), 0.0))
        for node in logic.box_nodes(scene, xray):
            corners = logic.box_of(node).corners_px
            # The slice view's frame of image_actor: column -> x, row 0 at the top.
            points = np.column_stack([corners[:, 0] * du, (rows - 1 - corners[:, 1]) * dv, np.ones(4)])
            color = node.GetDisplayNode().GetSelectedColor()
            renderer.AddActor(line_actor([(points[k], points[(k + 1) % 4]) for k in range(4)], color, 1.0, 3.0))
            label_3d(renderer, node.GetName(), points[1:3].mean(axis=0) + [6.0, 0.0, 0.0], color, 18)
        camera = renderer.GetActiveCamera()
        camera.ParallelProjectionOn()
        center = np.array([cols * du / 2, rows * dv / 2])
        camera.SetFocalPoint(*center, 0)
        camera.SetPosition(*center, 1000)
        camera.SetViewUp(0, 1, 0)
        camera.SetParallelScale(rows * dv / 2)
        renderer.ResetCameraClippingRange()
        text(renderer, f"{view}: vertebra boxes (green accepted, orange not)", (0.02, 0.95), 16, bold=True)
        if view == "LAT":
            for line, message in enumerate(warnings):
                text(renderer, "\n".join(textwrap.wrap(message, 58)), (0.02, 0.02 + 0.09 * line), 13, (1.0, 0.7, 0.3))
        window.AddRenderer(renderer)
    save(window, out / "boxes.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="sample-data folder (spinereg phantom output); default: make one")
    parser.add_argument("--result", default="truth", help="truth | register | a spinereg register output folder")
    parser.add_argument("--out", type=Path, default=render_scene.ROOT / "Resources" / "Screenshots", help="folder for the PNG")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spinereg-boxes-") as work:
        work = Path(work)
        data = args.data or render_scene.make_phantom(work / "data")
        scene, xrays, warnings = boxes_scene(data, args.result, work)
        print("\n".join(warnings) or "no warning")
        render(scene, xrays, warnings, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
