"""Ontology mapping CSVs (``other_methods.md`` §2.2) and prior-constrained pseudo-labels (§2.3), on hand-made
files and score maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from config.errors import DataError
from data.ontology import VOID_ROW, constrain, corrected_distribution, read_labels_csv, read_mapping

LABELS = """name,id,trainId,category,categoryId,hasInstances,ignoreInEval,color
unlabeled,0,255,void,0,False,True,"(0,0,0)"
asphalt,7,0,flat,1,False,False,"(128,64,128)"
curbstone,9,1,flat,1,False,False,"(196,196,196)"
grass,21,2,nature,4,False,False,"(0,192,0)"
car,26,3,vehicle,7,True,False,"(0,0,142)"
sky,23,4,sky,5,False,False,"(70,130,180)"
"""
# master: road, sidewalk, vegetation, vehicle; curbstone is many-to-many (sidewalk or void), sky maps nowhere
MAPPING = """id,name,extra classes
0,road,asphalt,,
1,sidewalk,curbstone
2,vegetation,grass
3,vehicle,car
255,void,unlabeled,curbstone
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "labels.csv").write_text(LABELS)
    (tmp_path / "master_labels_demo.csv").write_text(MAPPING)
    return tmp_path / "master_labels_demo.csv"


def test_the_mapping_is_many_to_many_with_a_void_row(files: Path) -> None:
    with pytest.warns(UserWarning, match="become void: sky$"):
        m = read_mapping(files, master=["road", "sidewalk", "vegetation", "vehicle"])
    assert m.master == ["road", "sidewalk", "vegetation", "vehicle"] and m.unmapped == ["sky"]
    assert [c.name for c in m.extra] == ["unlabeled", "asphalt", "curbstone", "grass", "car", "sky"]
    want = np.zeros((5, 6), bool)
    want[0, 1] = want[1, 2] = want[2, 3] = want[3, 4] = True
    want[4, [0, 2, 5]] = True  # void: unlabeled, curbstone (also sidewalk), and the unmapped sky
    assert np.array_equal(m.matrix, want)
    ids = np.array([[7, 9], [23, 200]])  # asphalt, curbstone / sky, an id labels.csv does not know
    c = m.candidates(ids)
    assert c.shape == (5, 2, 2) and c[:, 0, 0].tolist() == [True, False, False, False, False]
    assert c[:, 0, 1].tolist() == [False, True, False, False, True]
    assert c[:, 1, 0].tolist() == c[:, 1, 1].tolist() == [False, False, False, False, True]


def test_bad_files_are_one_line_errors(files: Path, tmp_path: Path) -> None:
    files.write_text(MAPPING.replace("2,vegetation,grass", "2,vegetation,grss"))
    with pytest.raises(DataError, match=r"master_labels_demo.csv:4: 'grss' is not a class of labels.csv \(did you mean 'grass'\?\)"):  # fmt: skip
        read_mapping(files)
    (tmp_path / "labels.csv").unlink()
    with pytest.raises(DataError, match="labels.csv is missing"):
        read_mapping(files)
    with pytest.raises(DataError, match="mapping CSV is missing"):
        read_mapping(tmp_path / "nothing.csv")
    (tmp_path / "labels.csv").write_text("name,id\nroad,1\n")
    with pytest.raises(DataError, match="lacks the column"):
        read_labels_csv(tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text(LABELS)
    files.write_text(MAPPING.replace("3,vehicle", "5,vehicle"))
    with pytest.raises(DataError, match="0..N-1 without gaps"):
        read_mapping(files)
    files.write_text(MAPPING)
    with pytest.raises(DataError, match="not the source taxonomy"):
        read_mapping(files, master=["road", "sidewalk", "grass", "vehicle"])


def test_constrain_chooses_among_the_allowed_classes_only(files: Path) -> None:
    with pytest.warns(UserWarning):
        m = read_mapping(files)
    ids = np.array([[7, 9, 9, 0]])  # asphalt, curbstone, curbstone, unlabeled
    cand = m.candidates(ids)
    # the teacher prefers vegetation everywhere, sidewalk over road second
    scores = torch.tensor([0.1, 0.3, 0.5, 0.1]).view(4, 1, 1).expand(4, 1, 4).clone()
    assert constrain(scores, None).tolist() == [[2, 2, 2, 2]]  # no priors: the teacher's own choice
    # asphalt allows road only; curbstone sidewalk (or void, which a teacher without a void channel never picks);
    # unlabeled only void
    assert constrain(scores, cand).tolist() == [[0, 1, 1, VOID_ROW]]
    with_void = torch.cat([scores, torch.tensor([0.0, 0.0, 0.9, 0.0]).view(1, 1, 4)])  # a no-object channel
    assert constrain(with_void, cand).tolist() == [[0, 1, VOID_ROW, VOID_ROW]]
    assert constrain(with_void, None, num_classes=4).tolist() == [
        [2, 2, 2, 2]
    ]  # no priors: the void channel is dropped
    soft = corrected_distribution(scores, cand)
    assert torch.allclose(soft[:, 0, :3].sum(0), torch.ones(3)) and soft[:, 0, 3].eq(0).all()
    assert soft[1, 0, 1] == 1.0 and soft[0, 0, 1] == 0.0
