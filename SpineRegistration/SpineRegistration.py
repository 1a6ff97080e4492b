"""SpineRegistration: per-vertebra 2D/3D registration of a spine CT to AP and LAT X-rays.

The Slicer module (scripted-module template: Module / Widget / Logic / Test). The Widget
only moves values between the .ui and the parameter node and calls the Logic; the Logic
turns nodes into library calls through the helper package SpineRegistrationModuleLib (MRML
only, tested headless with slicer-core) and runs long work out of process through its
``process`` module (the ``spinereg`` command in PythonSlicer), as SlicerMONAIAuto3DSeg
does. The algorithms live in the SpineRegistrationLib Python package, which the built
extension carries beside this file (a source checkout: ../SpineRegistrationLib) with its
model files; only its third-party packages are installed on first use, after asking.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Union

import qt
import vtk

import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: The Python package that holds the algorithms (shipped with the extension, not on a package index).
LIBRARY_PACKAGE = "SpineRegistrationLib"

#: The third-party packages the library needs, as (pip requirement, import name): pyproject's
#: dependencies and its dicom extra (a test keeps them equal). Slicer has numpy and SimpleITK.
PYTHON_REQUIREMENTS = (
    ("torch>=2.2", "torch"),
    ("numpy>=1.24", "numpy"),
    ("SimpleITK>=2.3", "SimpleITK"),
    ("tqdm>=4.60", "tqdm"),
    ("cmaes>=0.10", "cmaes"),
    ("monai>=1.4", "monai"),
    ("scipy>=1.10", "scipy"),
    ("pydicom>=3.0", "pydicom"),
)


def libraryFolder() -> Path | None:
    """The folder holding SpineRegistrationLib: this file's folder in a built extension (CMake
    installs the library beside the module), the repository root in a source checkout."""
    here = Path(__file__).resolve().parent
    return next((folder for folder in (here, here.parent) if (folder / LIBRARY_PACKAGE / "__init__.py").is_file()), None)


if libraryFolder() is not None and str(libraryFolder()) not in sys.path:
    sys.path.insert(0, str(libraryFolder()))  # before any SpineRegistrationLib in site-packages

#: Small sample: the phantom the SampleData entry and the self-test generate.
SAMPLE_NAME = "SpineRegistrationPhantom"
SAMPLE_VERTEBRAE = ("L1", "L2", "L3")
SAMPLE_SPACING_MM = 1.5

#: Milliseconds between two looks at the background process's output.
POLL_INTERVAL_MS = 200

#: Slice views that show the AP and LAT X-rays (their planes also appear in 3D).
XRAY_SLICE_VIEWS = {"AP": "Red", "LAT": "Yellow"}


#
# SpineRegistration
#


class SpineRegistration(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Spine Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["SpineRegistration developers"]
        self.parent.helpText = _("""
Registers a spine CT and its vertebra segmentation to intraoperative AP and LAT X-rays,
one vertebra at a time: a learned dual-view pose estimate refined by matching digitally
reconstructed radiographs (DRRs), in one background run (progress bar, Cancel; the vertebrae
done before a Cancel are kept, and Register on the same inputs goes on from them). A rigid
transform above the CT and its segmentation (e.g. a rough manual alignment) is the starting
pose. Each X-ray is shown on its detector plane (a DICOM X-ray, whose tags do not place the
patient, centred on the vertebrae to register), the DRR of the registered vertebrae is
blended over it, and the moved vertebrae are shown in 3D.
The shipped pose network was trained on phantoms; before surgery, "Train on this CT" trains it
on the patient's own CT and segmentation (one background run, progress bar; Cancel keeps its
checkpoint and Train goes on from it), and Register then uses that network ("Pose network").
Deform then turns the registration into one smooth spine-wide deformation, in one
background run (progress bar, Cancel). From the vertebra poses: the poses that are not
settled (those whose registration said doubt, started from their neighbours, and every pose
of the network alone) are first refined jointly against the AP and LAT X-rays, the others
held as registered (uncheck "Refine poses against the X-rays" to keep them all), then the
field is built rigid inside each vertebra (the vertebrae not registered follow their
neighbours). A pose you moved after Register is yours: it is held (when every pose says
doubt, Deform asks for one you trust first). With a second CT
chosen (e.g. taken in the operating room), Deform instead registers the CT and its
segmentation to that CT (rigid, then every vertebra rigidly on its own, the poses blended
into one field rigid inside each vertebra). Either way the field
appears as a grid transform, the warped segmentation is shown in 3D and, from the poses,
the DRR of every vertebra at its final pose over the X-rays; the status line reports the
Jacobian folding and the rigid residual and how far the refinement moved the poses (or,
CT to CT, the stages and the Dice deform.json has).
Vertebra boxes: a box per vertebra around it in the CT, and, for annotators, a box per
vertebra on each X-ray (detected, projected from the CT at the registered poses, or drawn;
accepted one by one; imported and exported as JSON with COCO beside it). The shipped detector
was trained on phantoms; "Train detector on this CT" trains one on the patient's CT before
surgery, and Detect then uses it ("Detector"); the chosen CT helps Detect name the levels.
See <a href="https://github.com/SpineRegistration/SpineRegistration">the documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer, PyTorch, SimpleITK and MONAI. Module layout after the Slicer
scripted-module template and SlicerMONAIAuto3DSeg.
""")
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data
#


def registerSampleData():
    """Add the spine phantom to the Sample Data module (generated on demand, nothing downloaded)."""
    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="SpineRegistration",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(iconsPath, "SpineRegistration.png"),
        # Nothing is downloaded (customDownloader generates the data), but SampleDataSource
        # needs one entry per file to list the sample.
        uris=f"generated://{SAMPLE_NAME}",
        fileNames=SAMPLE_NAME,
        nodeNames="Phantom CT",
        customDownloader=_loadSamplePhantom,
    )


def _loadSamplePhantom(source=None):
    """SampleData custom downloader: generate (once, cached) and load the phantom."""
    logic = SpineRegistrationLogic()
    if not SpineRegistrationWidget.ensureDependencies(logic):
        return []
    folder = os.path.join(slicer.app.temporaryPath, SAMPLE_NAME)
    with slicer.util.WaitCursor():
        if not os.path.isfile(os.path.join(folder, "truth.json")):
            logic.writeSamplePhantom(folder)
        nodes = logic.loadSampleData(folder)
    logic.showXrays(nodes["AP"], nodes["LAT"])
    return list(nodes.values())


#
# Parameter node
#


@parameterNodeWrapper
class SpineRegistrationParameterNode:
    """The module's choices, saved with the scene.

    ctVolume - the preoperative CT.
    segmentation - its vertebra segmentation (segmentation node or labelmap).
    apXray, latXray - the intraoperative X-rays (single-slice volumes with attached geometry).
    vertebrae - vertebrae to register; empty: every vertebra both X-rays see.
    method - auto (learned, then intensity refinement), learned or intensity.
    device - auto (the GPU when there is one), cpu or cuda.
    drrOpacity - opacity of the DRR blended over each X-ray.
    showSegmentation3D - show the moved segmentation in 3D (the warped one once Deform ran).
    showXrayPlanes3D - show the X-ray planes and their sources in 3D.
    secondCtVolume - optional second CT (operating room): Deform registers the CT to it instead.
    refinePoses - Deform refines the registered poses against the X-rays first.
    poseModel - the pose network's model file for auto/learned (e.g. from Train on this CT); "": the shipped one.
    detectorModel - the vertebra detector's model file for Detect (e.g. from Train detector); "": the shipped one.
    """

    ctVolume: vtkMRMLScalarVolumeNode
    segmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]
    apXray: vtkMRMLScalarVolumeNode
    latXray: vtkMRMLScalarVolumeNode
    vertebrae: list[str]
    method: Annotated[str, Choice(["auto", "learned", "intensity"])] = "auto"
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    drrOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    showSegmentation3D: bool = True
    showXrayPlanes3D: bool = True
    secondCtVolume: vtkMRMLScalarVolumeNode
    refinePoses: bool = True
    poseModel: str = ""
    detectorModel: str = ""


#
# SpineRegistrationWidget
#


class SpineRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._runKind = None  # "register", "deform" or "train"
        self._updatingVertebrae = False
        self._shownSegmentation = None  # (node ID, packages there) the check list was made for; None: none yet
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollRun)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SpineRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SpineRegistrationLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.loadXraysButton.connect("clicked(bool)", self.onLoadXrays)
        self.ui.createBoxesButton.connect("clicked(bool)", self.onCreateBoxes)
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.deformButton.connect("clicked(bool)", self.onDeform)
        self.ui.resetButton.connect("clicked(bool)", self.onReset)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.trainPoseModelButton.connect("clicked(bool)", self.onTrainPoseModel)
        self.ui.trainDetectorButton.connect("clicked(bool)", self.onTrainDetector)
        self.ui.apXraySelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node: self.showGeometryPath("AP", node))
        self.ui.latXraySelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node: self.showGeometryPath("LAT", node))
        self.ui.vertebraListWidget.connect("itemChanged(QListWidgetItem*)", self.onVertebraChecked)
        self.ui.progressBar.setVisible(False)
        self.setupBoxes()

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._pollTimer.stop()
        self._boxesRefresh.stop()
        if self._run is not None:
            self._run.cancel()
            self._run = None
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.updateBoxesTable()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.ctVolume:
            self._parameterNode.ctVolume = self.logic.guessNode("ct")
        if not self._parameterNode.segmentation:
            self._parameterNode.segmentation = self.logic.guessNode("segmentation")
        if not self._parameterNode.apXray:
            self._parameterNode.apXray = self.logic.guessNode("AP")
        if not self._parameterNode.latXray:
            self._parameterNode.latXray = self.logic.guessNode("LAT")

    def setParameterNode(self, inputParameterNode: SpineRegistrationParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with the "SlicerParameterName" dynamic property in the .ui are bound here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self._shownSegmentation = None
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Enable the actions that make sense now, show the chosen segmentation's vertebrae and
        apply the display settings (the parameter node holds the selectors' new values here)."""
        p = self._parameterNode
        if p is None:
            return
        self.updateVertebraList()
        running = self._run is not None
        ready = bool(p.ctVolume and p.segmentation and p.apXray and p.latXray)
        self.ui.registerButton.enabled = ready and not running
        self.ui.registerButton.toolTip = (
            _("Register the checked vertebrae to the AP and LAT X-rays (runs in the background).")
            if ready else _("Select the CT, its segmentation and both X-rays first.")
        )
        self.ui.cancelButton.enabled = running
        self.ui.trainPoseModelButton.enabled = bool(p.ctVolume and p.segmentation) and not running
        self.ui.trainDetectorButton.enabled = bool(p.ctVolume and p.segmentation) and not running
        self.ui.resetButton.enabled = not running
        self.ui.loadXraysButton.enabled = not running
        canDeform, why = self.logic.deformationAvailable(p)
        self.ui.deformButton.enabled = canDeform and not running
        self.ui.deformButton.toolTip = why
        self.ui.refinePosesCheckBox.enabled = p.secondCtVolume is None  # CT to CT uses no X-ray
        self.logic.applyDisplaySettings(p.drrOpacity, p.showSegmentation3D, p.showXrayPlanes3D)

    # ------------------------------------------------------------------ inputs
    def showGeometryPath(self, view: str, node) -> None:
        """Show the geometry file attached to the selected X-ray (if any) in its path box."""
        edit = self.ui.apGeometryPathLineEdit if view == "AP" else self.ui.latGeometryPathLineEdit
        path = node.GetAttribute("SpineRegistration.GeometryFile") if node else None
        if path:
            edit.currentPath = path

    def onLoadXrays(self) -> None:
        """Load the X-ray files given (or use the selected volumes) and attach their geometry."""
        if not self.ensureDependencies(self.logic):
            return
        with slicer.util.tryWithErrorDisplay(_("Could not place the X-rays."), waitCursor=True):
            for view, imageEdit, geometryEdit in (
                ("AP", self.ui.apImagePathLineEdit, self.ui.apGeometryPathLineEdit),
                ("LAT", self.ui.latImagePathLineEdit, self.ui.latGeometryPathLineEdit),
            ):
                imagePath, geometryPath = imageEdit.currentPath, geometryEdit.currentPath
                selected = self._parameterNode.apXray if view == "AP" else self._parameterNode.latXray
                node = self.logic.loadOrAttachXray(view, imagePath or None, geometryPath or None, selected, self._parameterNode)
                if node is None:
                    continue
                if view == "AP":
                    self._parameterNode.apXray = node
                else:
                    self._parameterNode.latXray = node
                imageEdit.currentPath = ""
            if self._parameterNode.apXray and self._parameterNode.latXray:
                self.logic.showXrays(self._parameterNode.apXray, self._parameterNode.latXray, self._parameterNode.drrOpacity)

    def updateVertebraList(self) -> None:
        """Refill the check list (checked: to register) when the parameter node holds another
        segmentation than the list shows (a labelmap's names cost a pass over its voxels)."""
        segmentation = self._parameterNode.segmentation
        shown = (segmentation.GetID() if segmentation else "", not self.logic.missingDependencies())
        if shown == self._shownSegmentation:
            return
        rows = self.logic.vertebraChecklist(self._parameterNode)
        self._updatingVertebrae = True
        try:
            self.ui.vertebraListWidget.clear()
            for name, checked in rows:
                item = qt.QListWidgetItem(name)
                item.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled)
                item.setCheckState(qt.Qt.Checked if checked else qt.Qt.Unchecked)
                self.ui.vertebraListWidget.addItem(item)
            self._shownSegmentation = shown
        finally:
            self._updatingVertebrae = False

    def onVertebraChecked(self, item) -> None:
        if self._updatingVertebrae or self._parameterNode is None:
            return
        items = [self.ui.vertebraListWidget.item(i) for i in range(self.ui.vertebraListWidget.count)]
        checked = [it.text() for it in items if it.checkState() == qt.Qt.Checked]
        # All checked is stored as "all" (empty), so new vertebrae of the segmentation are included.
        self._parameterNode.vertebrae = [] if len(checked) == len(items) else checked

    def onCreateBoxes(self) -> None:
        if not self.ensureDependencies(self.logic):
            return
        with slicer.util.tryWithErrorDisplay(_("Could not make the vertebra boxes."), waitCursor=True):
            self.logic.createVertebraBoxes(self._parameterNode)

    # ------------------------------------------------------------------ registration
    def onRegister(self) -> None:
        self._parameterNode.poseModel = self.ui.poseModelPathLineEdit.currentPath.strip()
        self._startRun("register", _("Registration could not start."),
                       lambda: self.logic.startRegistration(self._parameterNode),
                       lambda run: _("Registering (going on from the cancelled run's vertebrae) ...") if run.resumed
                       else _("Registering ..."))

    def _startRun(self, kind: str, failure: str, start, text) -> None:
        """Start a background run (``start()`` returns it; errors shown as ``failure``, nothing
        started) and follow it; ``text(run)`` is the status line while it runs."""
        if not self.ensureDependencies(self.logic):
            return
        with slicer.util.tryWithErrorDisplay(failure, waitCursor=True):
            self._run = start()
            self._startPolling(kind, text(self._run))
        self.onParameterNodeModified()

    def _startPolling(self, kind: str, text: str) -> None:
        self._runKind = kind
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = text
        self._pollTimer.start()

    def onPollRun(self) -> None:
        """GUI timer: show the background run's progress; apply its result when it ends."""
        run = self._run
        if run is None:
            self._pollTimer.stop()
            return
        for event in run.poll():
            if event.fraction is not None:
                self.ui.progressBar.value = int(round(100 * event.fraction))
            self.ui.statusLabel.text = event.message
            logging.info(event.line)
        if run.running:
            return
        self._pollTimer.stop()
        self._run = None
        if self._runKind in ("train", "train-detect"):
            self.finishTraining(run, self._runKind)
            return
        deforming = self._runKind == "deform"
        self.ui.progressBar.value = 0
        try:
            with slicer.util.tryWithErrorDisplay(
                _("Deformation failed.") if deforming else _("Registration failed."), waitCursor=True
            ):
                made = self.logic.finishRun(run, self._parameterNode)
                if deforming:
                    self.ui.statusLabel.text = made["summary"]
                else:
                    self.ui.resultsTableView.setMRMLTableNode(made["table"])
                    self.ui.statusLabel.text = _("Registered {count} vertebrae in {seconds:.0f} s.").format(
                        count=len(made["transforms"]), seconds=run.process.elapsed_s
                    )
                self.ui.progressBar.value = 100
        finally:
            if self.ui.progressBar.value != 100:
                self.ui.statusLabel.text = (
                    _("Deformation failed; the scene is unchanged.") if deforming
                    else _("Registration failed; the scene is unchanged.")
                )
            self._runKind = None
            self.ui.progressBar.setVisible(False)
            self.onParameterNodeModified()

    def finishTraining(self, run, kind: str) -> None:
        """A finished Train run: point the pose network (or, ``kind`` "train-detect", the detector) at its
        model, or say why it failed."""
        try:
            with slicer.util.tryWithErrorDisplay(_("Training failed."), waitCursor=True):
                model = run.finish()
                if kind == "train-detect":
                    self.ui.detectorModelPathLineEdit.currentPath = str(model)
                    self._parameterNode.detectorModel = str(model)
                    self.ui.statusLabel.text = _("Detector trained on this CT; Detect uses it: {path}").format(path=model)
                else:
                    self.ui.poseModelPathLineEdit.currentPath = str(model)
                    self._parameterNode.poseModel = str(model)
                    self.ui.statusLabel.text = _("Pose network trained on this CT; Register uses it: {path}").format(path=model)
                self.ui.progressBar.value = 100
        finally:
            if self.ui.progressBar.value != 100:
                self.ui.statusLabel.text = _("Training failed; Train goes on from its last checkpoint.")
            self._runKind = None
            self.ui.progressBar.setVisible(False)
            self.onParameterNodeModified()

    def onCancel(self) -> None:
        if self._run is None:
            return
        self._pollTimer.stop()
        with slicer.util.WaitCursor():
            self._run.cancel()
        training = self._runKind in ("train", "train-detect")
        kept = getattr(self._run, "kept", False)  # Register kept the vertebrae it had done
        self._run = None
        self._runKind = None
        self.ui.progressBar.setVisible(False)
        self.ui.statusLabel.text = (_("Cancelled; Train goes on from its checkpoint.") if training
                                    else _("Cancelled; the scene is unchanged. Register on the same inputs goes on "
                                           "from the vertebrae done.") if kept
                                    else _("Cancelled; the scene is unchanged."))
        self.onParameterNodeModified()

    def onTrainPoseModel(self) -> None:
        self._startRun("train", _("Training could not start."),
                       lambda: self.logic.startPatientModel(self._parameterNode, int(self.ui.trainStepsSpinBox.value)),
                       lambda run: _("Training the pose network on this CT (resumed) ...") if run.resumed
                       else _("Training the pose network on this CT ..."))

    def onTrainDetector(self) -> None:
        self._startRun("train-detect", _("Training could not start."),
                       lambda: self.logic.startPatientModel(self._parameterNode, None, kind="detector"),
                       lambda run: _("Training the vertebra detector on this CT (resumed) ...") if run.resumed
                       else _("Training the vertebra detector on this CT ..."))

    def onDeform(self) -> None:
        self._startRun("deform", _("Deformation could not start."),
                       lambda: self.logic.startDeformation(self._parameterNode), lambda run: _("Deforming ..."))

    def onReset(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Reset failed."), waitCursor=True):
            self.logic.reset()
            self.ui.resultsTableView.setMRMLTableNode(None)
            self.ui.statusLabel.text = _("Results removed.")

    # ------------------------------------------------------------------ vertebra boxes
    def setupBoxes(self) -> None:
        self._boxNodeIds = []  # table row -> box node ID
        self._updatingBoxes = False
        for button, handler in (
            (self.ui.detectBoxesButton, self.onDetectBoxes),
            (self.ui.projectBoxesButton, self.onProjectBoxes),
            (self.ui.acceptSelectedBoxesButton, lambda: self.onAcceptBoxes(True)),
            (self.ui.unacceptSelectedBoxesButton, lambda: self.onAcceptBoxes(False)),
            (self.ui.acceptAllBoxesButton, self.onAcceptAllBoxes),
            (self.ui.addBoxButton, self.onAddBox),
            (self.ui.deleteBoxesButton, self.onDeleteBoxes),
            (self.ui.importBoxesButton, self.onImportBoxes),
            (self.ui.exportBoxesButton, self.onExportBoxes),
        ):
            button.connect("clicked(bool)", lambda checked=False, handler=handler: handler())
        self.ui.boxesTableWidget.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        self.ui.boxesTableWidget.connect("itemChanged(QTableWidgetItem*)", self.onBoxRenamed)
        # Boxes added or deleted elsewhere (Data module, scene loading): refresh once the event burst is over.
        self._boxesRefresh = qt.QTimer()
        self._boxesRefresh.setSingleShot(True)
        self._boxesRefresh.connect("timeout()", self.updateBoxesTable)
        for event in (slicer.mrmlScene.NodeAddedEvent, slicer.mrmlScene.NodeRemovedEvent):
            self.addObserver(slicer.mrmlScene, event, lambda caller, event: self._boxesRefresh.start(0))

    def updateBoxesTable(self, message: str | None = None) -> None:
        """Fill the table (view, vertebra, score, accepted) from the box nodes; show ``message``."""
        if message is not None:
            self.ui.boxesStatusLabel.text = message
        rows = self.logic.boxRows()
        table = self.ui.boxesTableWidget
        self._updatingBoxes = True
        try:
            table.setRowCount(len(rows))
            self._boxNodeIds = [row[-1].GetID() for row in rows]
            for row, (view, name, score, accepted, _node) in enumerate(rows):
                for column, text in enumerate((view, name, f"{score:.2f}", _("yes") if accepted else _("no"))):
                    item = qt.QTableWidgetItem(text)
                    if column != 1:  # only the vertebra is edited here (renames the box)
                        item.setFlags(item.flags() & ~qt.Qt.ItemIsEditable)
                    table.setItem(row, column, item)
        finally:
            self._updatingBoxes = False

    def selectedBoxes(self) -> list:
        rows = sorted({index.row() for index in self.ui.boxesTableWidget.selectionModel().selectedRows()})
        nodes = [slicer.mrmlScene.GetNodeByID(self._boxNodeIds[row]) for row in rows if row < len(self._boxNodeIds)]
        return [node for node in nodes if node is not None]

    def _boxAction(self, errorText: str, action) -> None:
        """Run ``action`` (returns the status message) showing errors; refresh the table."""
        if not self.ensureDependencies(self.logic):
            return
        message = None
        with slicer.util.tryWithErrorDisplay(errorText, waitCursor=True):
            message = action()
        self.updateBoxesTable(message)

    def onDetectBoxes(self) -> None:
        self._parameterNode.detectorModel = self.ui.detectorModelPathLineEdit.currentPath.strip()

        def progress(event):
            self.ui.boxesStatusLabel.text = event.message
            slicer.app.processEvents()

        self._boxAction(_("Detection failed; the boxes are unchanged."),
                        lambda: self.logic.detectBoxes(self._parameterNode, callback=progress))

    def onProjectBoxes(self) -> None:
        self._boxAction(_("Could not project the vertebrae."), lambda: self.logic.projectBoxes(self._parameterNode))

    def onAcceptBoxes(self, accepted: bool) -> None:
        self._boxAction(_("Could not change the boxes."), lambda: self.logic.acceptBoxes(self._parameterNode, self.selectedBoxes(), accepted))

    def onAcceptAllBoxes(self) -> None:
        self._boxAction(_("Could not change the boxes."), lambda: self.logic.acceptBoxes(self._parameterNode, None, True))

    def onAddBox(self) -> None:
        self._boxAction(_("Could not add the box."), lambda: self.logic.addBox(
            self._parameterNode, self.ui.addBoxViewComboBox.currentText, self.ui.addBoxNameLineEdit.text.strip() or "L1"))

    def onDeleteBoxes(self) -> None:
        self._boxAction(_("Could not delete the boxes."), lambda: self.logic.deleteBoxes(self.selectedBoxes()))

    def onBoxRenamed(self, item) -> None:
        if self._updatingBoxes or item.column() != 1 or item.row() >= len(self._boxNodeIds):
            return
        node = slicer.mrmlScene.GetNodeByID(self._boxNodeIds[item.row()])
        if node is not None:
            node.SetName(item.text().strip())
        self.updateBoxesTable()

    def onImportBoxes(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Import vertebra boxes"), "",
                                              _("Vertebra boxes (*.json);;All files (*)"))
        if path:
            self._boxAction(_("Import failed; the boxes are unchanged."), lambda: self.logic.importBoxes(self._parameterNode, path))

    def onExportBoxes(self) -> None:
        path = qt.QFileDialog.getSaveFileName(self.parent, _("Export vertebra boxes"), "boxes.json",
                                              _("Vertebra boxes (*.json)"))
        if path:
            self._boxAction(_("Export failed; nothing was written."), lambda: self.logic.exportBoxes(self._parameterNode, path))

    # ------------------------------------------------------------------ dependencies
    @staticmethod
    def ensureDependencies(logic) -> bool:
        """Install the library's missing third-party packages on first use, after asking."""
        if libraryFolder() is None:
            raise RuntimeError(f"{LIBRARY_PACKAGE} is missing beside the module: reinstall the extension")
        missing = logic.missingDependencies()
        if not missing:
            return True
        if slicer.app.testingEnabled():
            raise RuntimeError(f"Python packages missing in Slicer (needed by the test): {', '.join(missing)}")
        with slicer.util.tryWithErrorDisplay(_("Installing the dependencies failed."), waitCursor=True):
            logic.installDependencies(missing)
            return not logic.missingDependencies()
        return False


#
# SpineRegistrationLogic
#


class SpineRegistrationLogic(ScriptedLoadableModuleLogic):
    """The module's work on ``slicer.mrmlScene``, usable without the widget (Python console,
    scripts, the self-test). Node handling is in SpineRegistrationModuleLib; this class adds
    what needs the application: the scene singleton, slice views, PythonSlicer, pip."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return SpineRegistrationParameterNode(super().getParameterNode())

    @staticmethod
    def scene():
        """The scene-building helper package (imported on use: it needs the installed library)."""
        import SpineRegistrationModuleLib

        return SpineRegistrationModuleLib

    # ------------------------------------------------------------------ dependencies
    @staticmethod
    def missingDependencies() -> list[str]:
        """The pip requirements of PYTHON_REQUIREMENTS whose package Slicer's Python lacks."""
        return [requirement for requirement, name in PYTHON_REQUIREMENTS if importlib.util.find_spec(name) is None]

    def installDependencies(self, requirements: list[str]) -> None:
        """Install ``requirements`` (pip strings), each step asking the user first: torch
        through the SlicerPyTorch extension when it is there (it picks the build that fits the
        GPU), the rest with ``slicer.packaging.pip_ensure`` where this Slicer has it, else
        ``slicer.util.pip_install`` after a confirmation."""
        rest = [r for r in requirements if not r.startswith("torch")]
        torch = [r for r in requirements if r.startswith("torch")]
        if torch:
            try:
                import PyTorchUtils  # the SlicerPyTorch extension
            except ImportError:
                rest = torch + rest
            else:
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=True, torchVersionRequirement=torch[0][len("torch"):]
                ) is None:
                    return  # declined
        if not rest:
            return
        if hasattr(getattr(slicer, "packaging", None), "pip_ensure"):
            from packaging.requirements import Requirement

            slicer.packaging.pip_ensure([Requirement(r) for r in rest], prompt_install=True, requester="Spine Registration")
        elif slicer.util.confirmOkCancelDisplay(
            _("Spine Registration needs Python packages that are not installed yet: {missing}.\n\n"
              "Install them now? PyTorch alone is several hundred MB.").format(missing=", ".join(rest)),
            windowTitle=_("Install dependencies"),
        ):
            slicer.util.pip_install(rest)
        importlib.invalidate_caches()

    def pythonExecutable(self) -> str:
        """PythonSlicer, which runs ``spinereg``; ValueError (one line) when it is not found."""
        return self.scene().find_python_slicer()

    # ------------------------------------------------------------------ inputs
    def guessNode(self, kind: str):
        """A sensible default node for an empty selector (tagged X-rays, else the first fitting node)."""
        scene = slicer.mrmlScene
        if kind in ("AP", "LAT"):
            for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
                if node.GetAttribute("SpineRegistration.Role") == "xray" and node.GetAttribute("SpineRegistration.View") == kind:
                    return node
            return None
        if kind == "segmentation":
            return scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetAttribute("SpineRegistration.Role"):
                continue
            image = node.GetImageData()
            if image is not None and min(image.GetDimensions()) > 1:
                return node
        return None

    def vertebraChecklist(self, parameterNode) -> list[tuple[str, bool]]:
        """(vertebra, checked) rows of the parameter node's segmentation (see vertebra_checklist)."""
        if parameterNode is None or self.missingDependencies():
            return []
        return self.scene().vertebra_checklist(parameterNode.segmentation, parameterNode.vertebrae)

    def loadOrAttachXray(self, view: str, imagePath: str | None, geometryPath: str | None, selectedNode, parameterNode):
        """Load an X-ray file with its geometry, or attach a geometry file to the selected
        X-ray volume (a DICOM one centred on the parameter node's vertebrae, as the CLI
        centres it). Returns the X-ray node, or None when there was nothing to do."""
        scene = self.scene()
        isocenter = None
        if not str(geometryPath or imagePath or ".json").lower().endswith(".json") and parameterNode.segmentation:
            isocenter = scene.dicom_isocenter(parameterNode.segmentation, parameterNode.ctVolume, list(parameterNode.vertebrae))
        if imagePath:
            return scene.load_xray(slicer.mrmlScene, imagePath, geometryPath, view, isocenter_ras=isocenter)
        if geometryPath:
            if selectedNode is None:
                raise ValueError(f"select the {view} X-ray volume, or give its image file, before its geometry")
            geometry = scene.read_geometry_file(geometryPath, isocenter)
            scene.attach_geometry(slicer.mrmlScene, selectedNode, geometry, view, geometryPath)
            return selectedNode
        return None

    def createVertebraBoxes(self, parameterNode) -> dict:
        return self.scene().create_vertebra_rois(
            slicer.mrmlScene, parameterNode.segmentation, parameterNode.ctVolume, list(parameterNode.vertebrae) or None
        )

    def writeSamplePhantom(self, folder: str) -> dict:
        """Write the sample phantom (CT, segmentation, AP/LAT X-rays + geometry, truth.json)."""
        from SpineRegistrationLib.synthetic.phantom import PhantomConfig
        from SpineRegistrationLib.synthetic.sample_data import SampleConfig, make_sample, write_sample

        os.makedirs(folder, exist_ok=True)
        config = SampleConfig(phantom=PhantomConfig(spacing_mm=SAMPLE_SPACING_MM, vertebrae=SAMPLE_VERTEBRAE))
        return write_sample(folder, *make_sample(config))

    def loadSampleData(self, folder: str) -> dict:
        """Load a sample-data folder (as ``spinereg phantom`` writes it) into the scene and
        select it in the parameter node. Returns {"ct", "segmentation", "AP", "LAT"} -> node."""
        scene = self.scene()
        nodes = {
            "ct": scene.load_ct(slicer.mrmlScene, os.path.join(folder, "ct.nii.gz"), "Phantom CT"),
            "segmentation": scene.load_segmentation(slicer.mrmlScene, os.path.join(folder, "seg.nii.gz"), "Phantom vertebrae"),
        }
        for view in scene.VIEWS:
            nodes[view] = scene.load_xray(
                slicer.mrmlScene, os.path.join(folder, f"{view}.png"), os.path.join(folder, f"{view}.json"), view
            )
        parameterNode = self.getParameterNode()
        parameterNode.ctVolume = nodes["ct"]
        parameterNode.segmentation = nodes["segmentation"]
        parameterNode.apXray = nodes["AP"]
        parameterNode.latXray = nodes["LAT"]
        return nodes

    # ------------------------------------------------------------------ registration
    def registrationInputs(self, parameterNode):
        """What Register sends: the selected nodes and choices, and the accepted vertebra boxes on the X-rays."""
        xrays = {"AP": parameterNode.apXray, "LAT": parameterNode.latXray}
        return self.scene().RegistrationInputs(
            ct_node=parameterNode.ctVolume,
            segmentation_node=parameterNode.segmentation,
            xrays=xrays,
            vertebrae=list(parameterNode.vertebrae),
            method=parameterNode.method,
            device=parameterNode.device,
            boxes=self.scene().collect_boxes(slicer.mrmlScene, xrays, accepted_only=True)[0],
            model=parameterNode.poseModel or None,
        )

    def startRegistration(self, parameterNode):
        """Check the inputs, write them out and start ``spinereg register`` in the background.
        Raises ValueError (nothing started, scene unchanged) for bad inputs."""
        scene = self.scene()
        if "register" not in scene.available_commands():
            raise ValueError("the installed SpineRegistration library has no 'spinereg register' command; update it")
        return scene.RegistrationRun(
            self.registrationInputs(parameterNode), python=self.pythonExecutable(), work_dir=slicer.app.temporaryPath
        ).start()

    def startPatientModel(self, parameterNode, steps: int | None, kind: str = "pose"):
        """Write the CT and segmentation out and start ``spinereg train`` (``kind`` "detector": ``spinereg
        train-detect``) on them in the background (``--resume`` when an earlier run on this CT left a
        checkpoint); ``steps`` None: the command's default for one CT. Raises ValueError (nothing
        started) for bad inputs."""
        scene = self.scene()
        training = scene.DETECTOR if kind == "detector" else scene.POSE
        if training.command not in scene.available_commands():
            raise ValueError(f"the installed SpineRegistration library has no 'spinereg {training.command}' command; "
                             "update it")
        if parameterNode.ctVolume is None:
            raise ValueError("select the CT first")
        # Slicer's cache, one folder per CT and segmentation (training them again there resumes).
        folder = scene.patient_model_folder(Path(slicer.app.cachePath) / "SpineRegistration" / training.folders,
                                            parameterNode.ctVolume, parameterNode.segmentation)
        inputs = scene.PatientModelInputs(parameterNode.ctVolume, parameterNode.segmentation, folder,
                                          training.steps if steps is None else steps, parameterNode.device,
                                          kind=training)
        return scene.PatientModelRun(inputs, python=self.pythonExecutable()).start()

    def finishRun(self, run, parameterNode) -> dict:
        """Apply a finished Register or Deform run's result to the scene and show it; ValueError if
        it failed. Returns what the run made (a Deform run: {"transform", "segmentation", "drrs",
        "summary", "document"})."""
        made = run.finish(slicer.mrmlScene)
        self.showXrays(parameterNode.apXray, parameterNode.latXray, parameterNode.drrOpacity)
        self.applyDisplaySettings(parameterNode.drrOpacity, parameterNode.showSegmentation3D, parameterNode.showXrayPlanes3D)
        return made

    def register(self, parameterNode, callback=None, timeoutSeconds: float | None = None) -> dict:
        """Blocking registration (scripts, the self-test): start, wait, apply."""
        run = self.startRegistration(parameterNode)
        self.scene().wait_or_cancel(run, timeoutSeconds, callback)
        return self.finishRun(run, parameterNode)

    def deformationAvailable(self, parameterNode=None) -> tuple[bool, str]:
        """(whether Deform can run, a tooltip saying what it will do or why it cannot)."""
        if self.missingDependencies():
            return False, _("Install the SpineRegistration library first (Register asks).")
        if "deform" not in self.scene().available_commands():
            return False, _("Deformable registration is not in the installed SpineRegistration library yet.")
        if parameterNode is not None and parameterNode.secondCtVolume is not None:
            return True, _(
                "Deform the CT and its segmentation onto the second CT (rigid, then the learned deformable "
                "network; runs in the background): grid transform, warped segmentation in 3D."
            )
        if not self.scene().nodes_with(slicer.mrmlScene, self.scene().ROLE_TRANSFORM):
            return False, _("Register first (or choose a second CT): the deformation starts from the rigid result.")
        return True, _(
            "Turn the registered vertebra poses, refined against the X-rays unless unchecked, into one smooth "
            "deformation of the whole spine (runs in the background): grid transform, warped segmentation in 3D, "
            "the DRR of every vertebra at its final pose over the X-rays."
        )

    def deformationInputs(self, parameterNode):
        return self.scene().DeformationInputs(
            ct_node=parameterNode.ctVolume,
            segmentation_node=parameterNode.segmentation,
            xrays={"AP": parameterNode.apXray, "LAT": parameterNode.latXray},
            refine=parameterNode.refinePoses,
            second_ct_node=parameterNode.secondCtVolume,
            device=parameterNode.device,
        )

    def startDeformation(self, parameterNode):
        """Write the scene's registration result, CT, segmentation and X-rays (or, with a
        second CT chosen, both CTs and the segmentation) out and start ``spinereg deform`` in
        the background. Raises ValueError (nothing started, scene unchanged) when it cannot run."""
        available, why = self.deformationAvailable(parameterNode)
        if not available:
            raise ValueError(why)
        return self.scene().DeformationRun(
            slicer.mrmlScene, self.deformationInputs(parameterNode), python=self.pythonExecutable(),
            work_dir=slicer.app.temporaryPath,
        ).start()

    def deform(self, parameterNode, callback=None, timeoutSeconds: float | None = None) -> dict:
        """Blocking Deform (scripts, the self-test): start, wait, apply."""
        run = self.startDeformation(parameterNode)
        run.wait(timeout_s=timeoutSeconds, callback=callback)
        return self.finishRun(run, parameterNode)

    def reset(self) -> int:
        return self.scene().reset_results(slicer.mrmlScene)

    # ------------------------------------------------------------------ vertebra boxes
    def boxXrays(self, parameterNode) -> dict:
        """The selected X-rays that have a geometry, by view; ValueError when there is none."""
        xrays = {view: node for view, node in (("AP", parameterNode.apXray), ("LAT", parameterNode.latXray))
                 if node is not None and self.scene().geometry_of(node) is not None}
        if not xrays:
            raise ValueError("select the X-rays and load their geometry first (Inputs)")
        return xrays

    def boxRows(self) -> list[tuple]:
        return [] if self.missingDependencies() else self.scene().box_rows(slicer.mrmlScene)

    def boxMessage(self, parameterNode, done: str) -> str:
        """``done``, then a warning per box that does not hold its registered vertebra's projection."""
        warnings = []
        if parameterNode.ctVolume and parameterNode.segmentation:
            warnings = self.scene().projection_warnings(
                slicer.mrmlScene, parameterNode.ctVolume, parameterNode.segmentation, self.boxXrays(parameterNode))
        return "\n".join([done, *(_("Warning: {text}").format(text=text) for text in warnings)])

    def detectBoxes(self, parameterNode, callback=None) -> str:
        """Boxes from ``spinereg detect`` on the selected X-rays (accepted boxes stay); the status message."""
        scene = self.scene()
        if "detect" not in scene.available_commands():
            raise ValueError("the installed SpineRegistration library has no 'spinereg detect' command yet")
        made = scene.detect_boxes(
            slicer.mrmlScene, self.boxXrays(parameterNode), python=self.pythonExecutable(), device=parameterNode.device,
            work_dir=slicer.app.temporaryPath, callback=callback, ct_node=parameterNode.ctVolume,
            segmentation_node=parameterNode.segmentation, model=parameterNode.detectorModel or None)
        done = _("Detected {count} boxes.").format(count=sum(map(len, made.values())))
        if not parameterNode.detectorModel:  # mAP 0.03 on a real CT's X-rays, 0.98 for one trained on that CT
            done += " " + _("(The shipped detector knows phantoms only: for a patient, \"Train detector on this CT\".)")
        return self.boxMessage(parameterNode, done)

    def projectBoxes(self, parameterNode) -> str:
        """Boxes of the segmentation's vertebrae at their registered poses (accepted boxes stay)."""
        made = self.scene().project_boxes(
            slicer.mrmlScene, parameterNode.ctVolume, parameterNode.segmentation, self.boxXrays(parameterNode))
        return self.boxMessage(parameterNode, _("Projected {count} boxes from the CT.").format(count=sum(map(len, made.values()))))

    def acceptBoxes(self, parameterNode, nodes, accepted: bool) -> str:
        """Accept (or not) the given box nodes; None: every box."""
        if nodes is None:
            count = self.scene().accept_all(slicer.mrmlScene, accepted=accepted)
        else:
            for node in nodes:
                self.scene().set_accepted(node, accepted)
            count = len(nodes)
        done = _("{count} boxes accepted.") if accepted else _("{count} boxes no longer accepted.")
        return self.boxMessage(parameterNode, done.format(count=count))

    def addBox(self, parameterNode, view: str, vertebra: str) -> str:
        xray = self.boxXrays(parameterNode).get(view)
        if xray is None:
            raise ValueError(f"no {view} X-ray with a geometry is selected")
        node = self.scene().add_box(slicer.mrmlScene, xray, vertebra)
        return _("Added {name} on the {view} X-ray: drag it into place.").format(name=node.GetName(), view=view)

    def deleteBoxes(self, nodes) -> str:
        for node in nodes:
            self.scene().remove_node(slicer.mrmlScene, node)
        return _("Deleted {count} boxes.").format(count=len(nodes))

    def importBoxes(self, parameterNode, path: str) -> str:
        made = self.scene().import_boxes(slicer.mrmlScene, path, self.boxXrays(parameterNode))
        return self.boxMessage(parameterNode, _("Imported {count} boxes.").format(count=sum(map(len, made.values()))))

    def exportBoxes(self, parameterNode, path: str) -> str:
        jsonPath, cocoPath = self.scene().export_boxes(slicer.mrmlScene, path, self.boxXrays(parameterNode))
        return self.boxMessage(parameterNode, _("Wrote {json} and {coco}.").format(json=jsonPath, coco=cocoPath))

    # ------------------------------------------------------------------ display
    def showXrays(self, apNode, latNode, opacity: float = 0.5) -> None:
        """Four-up layout: AP X-ray in Red, LAT in Yellow (each in its detector plane, DRR
        blended over it, plane shown in 3D), the CT in Green, the 3D view."""
        if slicer.app.layoutManager() is None:
            return
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        scene = self.scene()
        for view, node in (("AP", apNode), ("LAT", latNode)):
            if node is None or scene.geometry_of(node) is None:
                continue
            layoutName = XRAY_SLICE_VIEWS[view]
            scene.show_xray_in_slice_view(slicer.mrmlScene, layoutName, node, opacity)
            sliceWidget = slicer.app.layoutManager().sliceWidget(layoutName)
            if sliceWidget is not None:
                sliceWidget.sliceLogic().FitSliceToAll()
        slicer.app.layoutManager().threeDWidget(0).threeDView().resetFocalPoint()

    def applyDisplaySettings(self, drrOpacity: float, showSegmentation3D: bool, showXrayPlanes3D: bool) -> None:
        if self.missingDependencies():
            return
        scene = self.scene()
        scene.set_drr_opacity(slicer.mrmlScene, drrOpacity)
        scene.set_results_visibility(slicer.mrmlScene, moved_segmentation=showSegmentation3D, xray_planes=showXrayPlanes3D)


#
# SpineRegistrationTest
#


class SpineRegistrationTest(ScriptedLoadableModuleTest):
    """End to end in Slicer: generate the phantom, load it through the module, box its vertebrae
    on the X-rays (projected from the CT, exported, imported back from the COCO file), register it
    with ``spinereg register`` in the background and compare each vertebra's pose with
    truth.json (mean target registration error over the vertebra's voxels < 2 mm); then
    Deform (poses refined against the X-rays): a grid transform, the warped segmentation, a
    DRR per view, no folding, the refinement within its trust region.
    """

    MAX_MTRE_MM = 2.0
    MAX_FOLDING_PERCENT = 0.05

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PhantomRegistration()

    def test_PhantomRegistration(self):
        import json

        import numpy as np

        logic = SpineRegistrationLogic()
        self.assertEqual(logic.missingDependencies(), [], "install the Python packages the module asks for first")
        scene = logic.scene()

        self.delayDisplay("Generating the phantom")
        folder = tempfile.mkdtemp(prefix="SpineRegistrationTest-", dir=slicer.app.temporaryPath)
        try:
            logic.writeSamplePhantom(folder)
            nodes = logic.loadSampleData(folder)
            self.assertEqual(scene.vertebra_names(nodes["segmentation"]), list(SAMPLE_VERTEBRAE))

            self.delayDisplay("Vertebra boxes: projected from the CT, exported, imported from COCO")
            parameterNode = logic.getParameterNode()
            logic.projectBoxes(parameterNode)
            logic.exportBoxes(parameterNode, os.path.join(folder, "boxes.json"))
            logic.importBoxes(parameterNode, os.path.join(folder, "boxes.coco.json"))
            self.assertEqual(sorted(row[1] for row in logic.boxRows()), sorted(2 * list(SAMPLE_VERTEBRAE)))
            self.assertFalse(any(row[3] for row in logic.boxRows()))  # none accepted: Register gets no --boxes

            self.delayDisplay("Registering")
            parameterNode.vertebrae = []
            parameterNode.method = "auto"
            parameterNode.refinePoses = True
            parameterNode.secondCtVolume = None
            made = logic.register(parameterNode, callback=lambda event: logging.info(event.line), timeoutSeconds=1800)

            truth = json.loads(Path(folder, "truth.json").read_text())["vertebrae"]
            labelmap = scene.vertebra_labelmap(nodes["segmentation"], nodes["ct"])
            self.assertEqual(sorted(made["transforms"]), sorted(truth))
            for name, entry in truth.items():
                mask = labelmap.volume.array == labelmap.labels[name]
                k, j, i = np.nonzero(mask)
                points = labelmap.volume.ijk_to_ras_points(np.stack([i, j, k], axis=1).astype(float))
                difference = scene.transform_to_parent_of(made["transforms"][name]) - np.array(entry["matrix_ras"])
                mtre = np.linalg.norm(points @ difference[:3, :3].T + difference[:3, 3], axis=1).mean()
                self.delayDisplay(f"{name}: mTRE {mtre:.2f} mm")
                self.assertLess(mtre, self.MAX_MTRE_MM, f"{name}: mean target registration error {mtre:.2f} mm")
            for view in scene.VIEWS:
                drr = scene.drr_node_of(nodes[view])
                self.assertIsNotNone(drr)
                self.assertEqual(drr.GetImageData().GetDimensions(), nodes[view].GetImageData().GetDimensions())

            self.delayDisplay("Deforming")
            deformed = logic.deform(parameterNode, callback=lambda event: logging.info(event.line), timeoutSeconds=1800)
            self.delayDisplay(deformed["summary"])
            self.assertTrue(deformed["transform"].IsA("vtkMRMLGridTransformNode"))
            self.assertEqual(deformed["segmentation"].GetSegmentation().GetNumberOfSegments(), len(SAMPLE_VERTEBRAE))
            self.assertLess(deformed["document"]["jacobian"]["folding_percent"], self.MAX_FOLDING_PERCENT)
            self.assertTrue(deformed["document"]["refined"])
            self.assertIn("poses refined against the X-rays", deformed["summary"])
            for view in scene.VIEWS:
                self.assertIs(scene.shown_drr_node_of(nodes[view]), deformed["drrs"][view])
            self.delayDisplay("Test passed")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
