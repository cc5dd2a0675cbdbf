"""docs/dicom-conformance.md lists exactly the SOP classes and transfer syntaxes the node and
``pull`` use: a UID in the document that the code does not use, or the reverse, fails."""

from __future__ import annotations

import re
from pathlib import Path

from pydicom.uid import ComprehensiveSRStorage, GrayscaleSoftcopyPresentationStateStorage, SegmentationStorage

from pneumolens.integration import dicom_node, dicom_pull, dicom_qr

DOC = Path(__file__).parents[1] / "docs" / "dicom-conformance.md"


def table_uids(text: str) -> set[str]:
    """The DICOM UIDs in the document's table rows."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return set(re.findall(r"\b1\.2\.840\.10008(?:\.\d+)+\b", "\n".join(rows)))


def test_the_conformance_statement_lists_what_the_code_speaks():
    used = {
        dicom_node.VERIFICATION,
        *dicom_node.ACCEPTED,
        *map(str, dicom_node.TRANSFER_SYNTAXES),
        dicom_node.SECONDARY_CAPTURE,
        *dicom_node.RESULT_CLASSES,  # served to C-GET and C-MOVE with --qr
        str(ComprehensiveSRStorage),  # what highdicom's ComprehensiveSR, GSPS and Segmentation write
        str(GrayscaleSoftcopyPresentationStateStorage),
        str(SegmentationStorage),
        dicom_pull.FIND,
        dicom_pull.MOVE,
        dicom_pull.GET,
        *dicom_qr.PATIENT_ROOT,  # served with --qr beside Study Root
    }
    listed = table_uids(DOC.read_text())
    assert listed - used == set(), "listed but not used"
    assert used - listed == set(), "used but not listed"


def test_the_created_objects_are_of_the_listed_classes(trained_run, tmp_path):
    """The node's picture, SR, presentation state and segmentation of a real film are of the classes
    the document names."""
    import numpy as np
    import pydicom

    from conftest import make_dicom, real_images
    from pneumolens.data.images import read_image
    from pneumolens.integration.dicom_node import result_objects
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    gray = read_image(real_images("test", "PNEUMONIA", 1)[0])
    original = pydicom.dcmread(make_dicom(tmp_path / "x.dcm", np.round(gray * 255).astype(np.uint8)))
    result = Engine(Settings(model=str(trained_run))).analyse(gray, explain=True)
    series: dict = {}

    def series_for(study: str, modality: str = "OT") -> str:
        return series.setdefault(modality, pydicom.uid.generate_uid())

    made = result_objects(original, result, series_for, sr=True, gsps=True, seg=True)
    classes = {str(m.SOPClassUID) for m in made}
    assert len(classes) == len(made) >= 3 and classes <= table_uids(DOC.read_text())
