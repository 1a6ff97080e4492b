"""Render what the SpineRegistration module shows, offscreen with VTK, into PNG screenshots.

The scene is built exactly as the module builds it, through SpineRegistrationModuleLib on a
slicer-core vtkMRMLScene (CT, segmentation, X-rays on their detector planes with their source
points, vertebra boxes, a registration result applied as transform nodes, moved vertebra
surfaces and DRR volumes), and then drawn from those MRML nodes with plain VTK:

- ``overlay.png``: the two slice views of the module (AP, LAT): each X-ray with the DRR of
  the vertebrae blended over it in green (the DRR display of the module: black -> green,
  transparent below 5 % of its range, at the module's default opacity 0.5). Top row: the
  vertebrae at their CT pose (before registration); bottom row: at the registered pose.
- ``scene_3d.png``: the 3D view: both X-rays on their detector planes with the DRR blended in,
  their focal spots and beam outlines, the moved vertebrae between them.
- ``vertebrae_3d.png``: close-up of the moved vertebrae (coloured) over their CT pose
  (grey ghosts), with the editable vertebra boxes.

The result shown is, in order of preference: ``--result DIR`` (a ``spinereg register`` output
folder), ``--result register`` (run ``spinereg register`` on the data now), or
``--result truth`` (default while ``spinereg register`` does not exist: a result folder written
from the phantom's truth.json, with DRRs rendered by the library at the true poses; it shows
what a perfect registration looks like, not the registration's accuracy).

Usage::

    python Testing/slicer/render_scene.py [--data PHANTOM_DIR] [--result truth|register|DIR]
                                          [--out Resources/Screenshots]

Needs an OpenGL context: on a headless Linux machine VTK's wheel falls back to EGL (Mesa);
set VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow to skip the X11 attempt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SpineRegistration"))

import SpineRegistrationModuleLib as logic  # noqa: E402

#: The module's default DRR opacity (SpineRegistrationParameterNode.drrOpacity).
DRR_OPACITY = 0.5
GREEN = np.array([0.15, 1.0, 0.25])
BACKGROUND = (0.09, 0.1, 0.13)


# ---------------------------------------------------------------------- data and scene
def make_phantom(folder: Path) -> Path:
    from SpineRegistrationLib.synthetic.phantom import PhantomConfig
    from SpineRegistrationLib.synthetic.sample_data import SampleConfig, make_sample, write_sample

    config = SampleConfig(
        phantom=PhantomConfig(spacing_mm=1.0, vertebrae=("T12", "L1", "L2", "L3", "L4")),
        pose_deg=5.0,
        pose_mm=5.0,
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_sample(folder, *make_sample(config))
    return folder


def drr_of_vertebrae(ct, labelmap, poses: dict, geometry) -> np.ndarray:
    """Sum of each vertebra's DRR at its pose (the library's renderer), (rows, cols)."""
    from SpineRegistrationLib.render.drr import hu_to_mu, render_drr
    from SpineRegistrationLib.io import vertebra_mask

    mu = ct.with_array(hu_to_mu(ct.array))
    return sum(render_drr(mu, geometry, poses[name], mask=vertebra_mask(labelmap, name)) for name in poses)


def result_from_truth(data: Path, folder: Path) -> Path:
    """A ``spinereg register`` output folder holding the true poses (see the module docstring)."""
    from SpineRegistrationLib.io.geometry_json import load_geometry
    from SpineRegistrationLib.io import read_labelmap, read_volume
    from SpineRegistrationLib.io.results import PARAM_KEYS, VertebraResult, write_result_folder

    truth = json.loads((data / "truth.json").read_text())["vertebrae"]
    ct, labelmap = read_volume(data / "ct.nii.gz"), read_labelmap(data / "seg.nii.gz")
    poses = {name: np.array(entry["matrix_ras"]) for name, entry in truth.items()}
    folder.mkdir(parents=True, exist_ok=True)
    drrs = {view: drr_of_vertebrae(ct, labelmap, poses, load_geometry(data / f"{view}.json")) for view in logic.VIEWS}
    results = [
        VertebraResult(name=name, matrix_ras=poses[name], params=np.array([entry["params"][key] for key in PARAM_KEYS]),
                       center_ras=np.array(entry["center_ras"]), similarity=float("nan"), verdict="truth",
                       time_s=float("nan"), evaluations=0)
        for name, entry in truth.items()
    ]
    write_result_folder(folder, {"method": "truth"}, results, drrs)
    return folder


def build_scene(data: Path, result: str, work: Path):
    scene = slicer.vtkMRMLScene()
    nodes = {
        "ct": logic.load_ct(scene, data / "ct.nii.gz"),
        "seg": logic.load_segmentation(scene, data / "seg.nii.gz"),
    }
    for view in logic.VIEWS:
        nodes[view] = logic.load_xray(scene, data / f"{view}.png", data / f"{view}.json", view)
    nodes["rois"] = logic.create_vertebra_rois(scene, nodes["seg"], nodes["ct"])
    xrays = {view: nodes[view] for view in logic.VIEWS}
    if result == "register":
        inputs = logic.RegistrationInputs(nodes["ct"], nodes["seg"], xrays)
        made = logic.RegistrationRun(inputs, work_dir=work).run(scene, callback=lambda e: print(e.line, file=sys.stderr))
    else:
        folder = result_from_truth(data, work / "truth-result") if result == "truth" else Path(result)
        labelmap = logic.vertebra_labelmap(nodes["seg"], nodes["ct"])
        made = logic.apply_registration_result(scene, logic.read_registration_result(folder), xrays, labelmap)
    return scene, nodes, made


# ---------------------------------------------------------------------- VTK helpers
def grey_rgba(xray_node) -> np.ndarray:
    """The X-ray as its display node shows it (window min/max, grey): (rows, cols, 4) uint8."""
    xray = slicer.util.arrayFromVolume(xray_node)[0].astype(np.float64)
    display = xray_node.GetDisplayNode()
    low, high = display.GetWindowLevelMin(), display.GetWindowLevelMax()
    grey = (np.clip((xray - low) / max(high - low, 1e-12), 0, 1) * 255).astype(np.uint8)
    return np.dstack([grey, grey, grey, np.full_like(grey, 255)])


def drr_rgba(drr: np.ndarray, display_node, opacity: float) -> np.ndarray:
    """A DRR as its display node shows it as a slice view's foreground layer: window min/max
    through its colour table, transparent below the lower threshold, alpha = layer opacity."""
    table = display_node.GetColorNode().GetLookupTable()
    low, high = display_node.GetWindowLevelMin(), display_node.GetWindowLevelMax()
    count = table.GetNumberOfTableValues()
    index = np.clip(((drr - low) / max(high - low, 1e-12) * (count - 1)).round().astype(int), 0, count - 1)
    colors = np.array([table.GetTableValue(i)[:3] for i in range(count)])
    rgb = (colors[index] * 255).astype(np.uint8)
    shown = drr >= display_node.GetLowerThreshold() if display_node.GetApplyThreshold() else np.ones(drr.shape, bool)
    return np.dstack([rgb, (255 * opacity * shown).astype(np.uint8)])


def before_drr_rgba(drr: np.ndarray, after_display, opacity: float) -> np.ndarray:
    """A DRR at the CT pose, shown with the registered DRR's display settings (same scale)."""
    return drr_rgba(drr, after_display, opacity)


def vtk_image_rgba(rgba: np.ndarray, flip: bool) -> vtk.vtkImageData:
    """(rows, cols, 4) uint8 -> vtkImageData (cols x rows); ``flip`` puts row 0 at the top of a 2D view."""
    rows, cols = rgba.shape[:2]
    data = rgba[::-1] if flip else rgba
    image = vtk.vtkImageData()
    image.SetDimensions(cols, rows, 1)
    array = numpy_support.numpy_to_vtk(np.ascontiguousarray(data).reshape(-1, 4), deep=True,
                                       array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(array)
    return image


def composite(background: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Alpha-blend a foreground RGBA layer over an opaque background (a slice view's compositing)."""
    a = foreground[..., 3:4] / 255.0
    rgb = background[..., :3] * (1 - a) + foreground[..., :3] * a
    return np.dstack([rgb.astype(np.uint8), np.full(background.shape[:2], 255, np.uint8)])


def image_actor(rgba: np.ndarray, spacing, z: float = 0.0) -> vtk.vtkImageActor:
    actor = vtk.vtkImageActor()
    image = vtk_image_rgba(rgba, flip=True)
    image.SetSpacing(spacing[0], spacing[1], 1.0)
    image.SetOrigin(0.0, 0.0, z)
    actor.GetMapper().SetInputData(image)
    actor.InterpolateOff()
    return actor


def text(renderer, message: str, position=(0.01, 0.96), size=18, color=(1, 1, 1), bold=False):
    """A caption at ``position`` in the renderer's normalised viewport coordinates."""
    actor = vtk.vtkTextActor()
    actor.SetInput(message)
    prop = actor.GetTextProperty()
    prop.SetFontSize(size)
    prop.SetColor(*color)
    prop.SetBold(bold)
    prop.SetShadow(True)
    actor.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
    actor.GetPositionCoordinate().SetValue(*position)
    renderer.AddViewProp(actor)
    return actor


def render_window(width: int, height: int) -> vtk.vtkRenderWindow:
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(width, height)
    window.SetMultiSamples(8)
    window.SetAlphaBitPlanes(1)
    return window


def save(window: vtk.vtkRenderWindow, path: Path) -> None:
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    print(f"wrote {path}")


# ---------------------------------------------------------------------- the views
def render_overlays(nodes, before: dict, out: Path) -> None:
    """Slice views: AP and LAT X-ray with the DRR blended; before (top) and after (bottom)."""
    panel = 480
    window = render_window(2 * panel, 2 * panel)
    for row, stage in enumerate(("before registration (CT pose)", "after registration")):
        for col, view in enumerate(logic.VIEWS):
            node = nodes[view]
            drr_node = logic.drr_node_of(node)
            geometry = logic.geometry_of(node)
            if row == 0:
                foreground = before_drr_rgba(before[view], drr_node.GetDisplayNode(), DRR_OPACITY)
            else:
                foreground = drr_rgba(slicer.util.arrayFromVolume(drr_node)[0], drr_node.GetDisplayNode(), DRR_OPACITY)
            renderer = vtk.vtkRenderer()
            renderer.SetViewport(col / 2, (1 - row) / 2, (col + 1) / 2, (2 - row) / 2)
            renderer.SetBackground(0, 0, 0)
            spacing = geometry.pixel_spacing
            # Two layers, as a slice view composites them: the X-ray, the DRR in front of it.
            renderer.AddActor(image_actor(grey_rgba(node), spacing, 0.0))
            renderer.AddActor(image_actor(foreground, spacing, 0.5))
            width, height = geometry.size[0] * spacing[0], geometry.size[1] * spacing[1]
            camera = renderer.GetActiveCamera()
            camera.ParallelProjectionOn()
            camera.SetFocalPoint(width / 2, height / 2, 0)
            camera.SetPosition(width / 2, height / 2, 1000)
            camera.SetViewUp(0, 1, 0)
            camera.SetParallelScale(height / 2)
            renderer.ResetCameraClippingRange()
            text(renderer, f"{view}: X-ray + DRR (green), {stage}", (0.02, 0.94), 16, bold=True)
            sides = ("R", "L") if view == "AP" else ("A", "P")
            text(renderer, sides[0], (0.02, 0.5), 20, (1, 0.85, 0.2), bold=True)
            text(renderer, sides[1], (0.95, 0.5), 20, (1, 0.85, 0.2), bold=True)
            window.AddRenderer(renderer)
    save(window, out / "overlay.png")


def detector_quad(node, texture_rgba: np.ndarray) -> vtk.vtkActor:
    """The X-ray on its detector plane: a quad through the pixel-edge corners given by the
    node's IJKToRAS, textured with the composited slice (row 0 at texture t = 0)."""
    ijk_to_ras = logic.ijk_to_ras_of(node)
    cols, rows = logic.xray_size(node)

    def corner(i, j):
        return (ijk_to_ras @ [i, j, 0, 1])[:3]

    plane = vtk.vtkPlaneSource()
    plane.SetOrigin(*corner(-0.5, -0.5))
    plane.SetPoint1(*corner(cols - 0.5, -0.5))
    plane.SetPoint2(*corner(-0.5, rows - 0.5))
    texture = vtk.vtkTexture()
    texture.SetInputData(vtk_image_rgba(texture_rgba, flip=False))
    texture.InterpolateOn()
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(plane.GetOutputPort())
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.SetTexture(texture)
    actor.GetProperty().LightingOff()
    return actor


def line_actor(points, color, opacity=1.0, width=1.5) -> vtk.vtkActor:
    source = vtk.vtkPolyData()
    vtk_points = vtk.vtkPoints()
    lines = vtk.vtkCellArray()
    for a, b in points:
        ia = vtk_points.InsertNextPoint(*a)
        ib = vtk_points.InsertNextPoint(*b)
        lines.InsertNextCell(2, [ia, ib])
    source.SetPoints(vtk_points)
    source.SetLines(lines)
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputData(source)
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*color)
    actor.GetProperty().SetOpacity(opacity)
    actor.GetProperty().SetLineWidth(width)
    return actor


def sphere_actor(center, radius, color) -> vtk.vtkActor:
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*center)
    sphere.SetRadius(radius)
    sphere.SetThetaResolution(24)
    sphere.SetPhiResolution(24)
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(sphere.GetOutputPort())
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*color)
    return actor


def label_3d(renderer, message, position, color=(1, 0.85, 0.2), size=18):
    actor = vtk.vtkBillboardTextActor3D()
    actor.SetInput(message)
    actor.SetPosition(*position)
    actor.GetTextProperty().SetFontSize(size)
    actor.GetTextProperty().SetColor(*color)
    actor.GetTextProperty().SetBold(True)
    renderer.AddActor(actor)


def model_actor(model_node, moved: bool, ghost=False) -> vtk.vtkActor:
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputData(model_node.GetPolyData())
    mapper.ScalarVisibilityOff()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    if moved and model_node.GetParentTransformNode() is not None:
        matrix = vtk.vtkMatrix4x4()
        model_node.GetParentTransformNode().GetMatrixTransformToWorld(matrix)
        actor.SetUserMatrix(matrix)
    prop = actor.GetProperty()
    if ghost:
        prop.SetColor(0.75, 0.75, 0.78)
        prop.SetOpacity(0.3)
        # Pushed back in depth: where it (nearly) coincides with the moved surface, the moved one wins.
        mapper.SetResolveCoincidentTopologyToPolygonOffset()
        mapper.SetRelativeCoincidentTopologyPolygonOffsetParameters(4.0, 400.0)
    else:
        prop.SetColor(*model_node.GetDisplayNode().GetColor())
        prop.SetSpecular(0.3)
        prop.SetSpecularPower(20)
    return actor


def roi_actor(roi_node) -> vtk.vtkActor:
    cube = vtk.vtkCubeSource()
    size = roi_node.GetSize()
    cube.SetXLength(size[0])
    cube.SetYLength(size[1])
    cube.SetZLength(size[2])
    edges = vtk.vtkOutlineFilter()
    edges.SetInputConnection(cube.GetOutputPort())
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(edges.GetOutputPort())
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.SetUserMatrix(roi_node.GetObjectToWorldMatrix())
    color = roi_node.GetDisplayNode().GetSelectedColor() if roi_node.GetDisplayNode() else (1, 1, 0)
    actor.GetProperty().SetColor(*color)
    actor.GetProperty().SetLineWidth(2.0)
    return actor


def render_3d(nodes, made, out: Path) -> None:
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(*BACKGROUND)
    renderer.SetBackground2(0.28, 0.3, 0.36)
    renderer.GradientBackgroundOn()
    centers = []
    for view in logic.VIEWS:
        node = nodes[view]
        drr_node = logic.drr_node_of(node)
        layer = drr_rgba(slicer.util.arrayFromVolume(drr_node)[0], drr_node.GetDisplayNode(), DRR_OPACITY)
        renderer.AddActor(detector_quad(node, composite(grey_rgba(node), layer)))
        source_node = logic.source_node_of(node)
        source = np.array(source_node.GetNthControlPointPositionWorld(0))
        geometry = logic.geometry_of(node)
        cols, rows = geometry.size
        corners = [geometry.pixel_to_ras(i, j) for i, j in ((-0.5, -0.5), (cols - 0.5, -0.5),
                                                           (cols - 0.5, rows - 0.5), (-0.5, rows - 0.5))]
        renderer.AddActor(sphere_actor(source, 12.0, (1.0, 0.85, 0.2)))
        renderer.AddActor(line_actor([(source, c) for c in corners], (1.0, 0.85, 0.2), 0.35, 1.0))
        renderer.AddActor(line_actor([(source, geometry.center_ras)], (1.0, 0.6, 0.1), 0.8, 2.0))
        label_3d(renderer, f"{view} source", source + np.array([0, 0, 30.0]))
        label_3d(renderer, f"{view} X-ray", geometry.pixel_to_ras(cols / 2, -40), (0.9, 0.9, 0.9))
        centers.append(geometry.center_ras)
    for model in made["models"].values():
        renderer.AddActor(model_actor(model, moved=True))
    spine = np.mean([m.GetPolyData().GetCenter() for m in made["models"].values()], axis=0)
    window = render_window(1400, 1000)
    window.AddRenderer(renderer)
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(*(spine + np.array([-40.0, 60.0, -10.0])))
    camera.SetPosition(*(spine + np.array([1150.0, -1450.0, 700.0])))
    camera.SetViewUp(0, 0, 1)
    camera.SetViewAngle(30)
    renderer.ResetCameraClippingRange()
    text(renderer, "3D view: X-rays on their detector planes (DRR blended in green), focal spots, "
                   "registered vertebrae", (0.01, 0.965), 18, bold=True)
    save(window, out / "scene_3d.png")

    # Close-up: moved vertebrae over their CT pose, with the vertebra boxes.
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(*BACKGROUND)
    renderer.SetBackground2(0.28, 0.3, 0.36)
    renderer.GradientBackgroundOn()
    renderer.UseDepthPeelingOn()
    renderer.SetMaximumNumberOfPeels(8)
    for model in made["models"].values():
        renderer.AddActor(model_actor(model, moved=True))
        renderer.AddActor(model_actor(model, moved=False, ghost=True))
    for name, roi in nodes["rois"].items():
        renderer.AddActor(roi_actor(roi))
        label_3d(renderer, name, np.array(roi.GetCenter()) + np.array([roi.GetSize()[0] / 2 + 12, 0, 0]), (1, 1, 1), 20)
    window = render_window(1000, 1000)
    window.AddRenderer(renderer)
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(*spine)
    camera.SetPosition(*(spine + np.array([330.0, -260.0, 120.0])))
    camera.SetViewUp(0, 0, 1)
    renderer.ResetCamera()
    camera.Zoom(1.25)
    renderer.ResetCameraClippingRange()
    text(renderer, "Registered vertebrae (colour) over their CT pose (grey), with the vertebra boxes",
         (0.01, 0.965), 18, bold=True)
    save(window, out / "vertebrae_3d.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="sample-data folder (spinereg phantom output); default: make one")
    parser.add_argument("--result", default=None, help="truth | register | a spinereg register output folder "
                        "(default: register when the command exists, else truth)")
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Screenshots", help="folder for the PNGs")
    args = parser.parse_args(argv)
    result = args.result or ("register" if "register" in logic.available_commands() else "truth")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spinereg-render-") as work:
        work = Path(work)
        data = args.data or make_phantom(work / "data")
        scene, nodes, made = build_scene(data, result, work)
        print(f"scene: {scene.GetNumberOfNodes()} nodes; result: {result}")
        from SpineRegistrationLib.io import read_labelmap, read_volume

        ct, labelmap = read_volume(data / "ct.nii.gz"), read_labelmap(data / "seg.nii.gz")
        before = {view: drr_of_vertebrae(ct, labelmap, {n: np.eye(4) for n in made["transforms"]},
                                         logic.geometry_of(nodes[view])) for view in logic.VIEWS}
        render_overlays(nodes, before, args.out)
        render_3d(nodes, made, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
