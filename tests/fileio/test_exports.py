"""Viewer exports (midog_d2.fileio.exports): QuPath GeoJSON and ASAP XML field by field as
midog.md §5 says they must be to import, the CSV, and atomic writes."""

import csv
import io
import json
import os
import uuid
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from midog_d2.fileio.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from midog_d2.fileio.exports import (
    CLASS_COLORS,
    detections_to_asap_xml,
    detections_to_csv,
    detections_to_geojson,
    write_asap_xml,
    write_detections_csv,
    write_geojson,
)

XY = np.array([[10.5, 20.25], [300.0, 40.0], [7.0, 8.0]])
SCORES = np.array([0.9, 0.3, 0.64])
THR = 0.64


def test_geojson_follows_qupaths_rules():
    fc = detections_to_geojson(XY, SCORES, THR)
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 3
    ids = set()
    for f, (x, y), s in zip(fc["features"], XY, SCORES):
        assert f["type"] == "Feature"
        assert str(uuid.UUID(f["id"])) == f["id"]  # a UUID, else QuPath drops it
        ids.add(f["id"])
        assert "objectType" not in f  # Feature-level objectType would make an annotation
        assert f["geometry"] == {"type": "Point", "coordinates": [x, y]}  # level-0 px
        p = f["properties"]
        assert p["objectType"] == "detection"
        name = "mitotic figure" if s >= THR else "non-mitotic figure"
        assert p["classification"] == {"name": name, "color": list(CLASS_COLORS[name])}
        assert p["measurements"] == {"score": s}
    assert len(ids) == 3
    assert json.loads(json.dumps(fc)) == fc
    assert "origin at the image's top left" in fc["midog_d2"]["frame"]


def test_geojson_ids_repeat_for_the_same_slide_weights_and_point():
    """QuPath knows an object by its id alone: a rerun's file must carry the same ids, so
    that importing it again replaces the points instead of adding each a second time."""
    a = detections_to_geojson(XY, SCORES, THR, id_key="slide:weights")
    assert a == detections_to_geojson(XY, SCORES, THR, id_key="slide:weights")
    ids = [f["id"] for f in a["features"]]
    assert len(set(ids)) == 3 and all(uuid.UUID(i).version == 5 for i in ids)
    for other in ("other slide:weights", "slide:other weights"):
        b = detections_to_geojson(XY, SCORES, THR, id_key=other)
        assert not set(ids) & {f["id"] for f in b["features"]}
    # one point moved: only its id changes; a repeated point still gets an id of its own
    moved = XY.copy()
    moved[0, 0] += 1
    c = [
        f["id"]
        for f in detections_to_geojson(moved, SCORES, THR, id_key="slide:weights")["features"]
    ]
    assert c[0] != ids[0] and c[1:] == ids[1:]
    twice = detections_to_geojson(np.repeat(XY[:1], 2, 0), [0.9, 0.9], THR, id_key="k")
    assert len({f["id"] for f in twice["features"]}) == 2


def test_geojson_is_in_qupaths_frame_of_a_slide_with_bounds():
    fc = detections_to_geojson(XY, SCORES, THR, offset=(1000, 250))
    for f, (x, y) in zip(fc["features"], XY):
        assert f["geometry"]["coordinates"] == [x - 1000, y - 250]
    assert "x - 1000, y - 250" in fc["midog_d2"]["frame"]


def test_asap_xml_declares_every_group_it_uses():
    root = ET.fromstring(detections_to_asap_xml(XY, SCORES, THR))
    assert root.tag == "ASAP_Annotations"
    anns = root.find("Annotations").findall("Annotation")
    groups = {g.get("Name"): g for g in root.find("AnnotationGroups").findall("Group")}
    assert len(anns) == 3
    for a, (x, y), s in zip(anns, XY, SCORES):
        name = "mitotic figure" if s >= THR else "non-mitotic figure"
        assert a.get("Type") == "Dot" and a.get("PartOfGroup") == name
        assert a.get("Color") == groups[name].get("Color")
        assert f"{s:.3f}" in a.get("Name")  # no score field: the score is in the name
        (c,) = a.find("Coordinates").findall("Coordinate")
        assert c.get("Order") == "0"
        assert float(c.get("X")) == pytest.approx(x, abs=0.01)
        assert float(c.get("Y")) == pytest.approx(y, abs=0.01)
    assert {a.get("PartOfGroup") for a in anns} <= set(groups)
    for g in groups.values():
        assert g.get("PartOfGroup") == "None" and g.find("Attributes") is not None


def test_csv_rows_and_bad_detections():
    rows = list(csv.DictReader(io.StringIO(detections_to_csv(XY, SCORES, THR))))
    assert [r["label"] for r in rows] == ["mitotic figure", "non-mitotic figure", "mitotic figure"]
    assert float(rows[0]["x"]) == 10.5 and float(rows[1]["score"]) == 0.3
    with pytest.raises(ValueError, match="not finite"):
        detections_to_csv([[1.0, np.nan]], [0.5], THR)
    with pytest.raises(ValueError, match="2 points but 1 scores"):
        detections_to_geojson(XY[:2], SCORES[:1], THR)
    assert detections_to_geojson(np.zeros((0, 2)), [], THR)["features"] == []


def test_writers_are_atomic(tmp_path):
    write_geojson(str(tmp_path / "a.geojson"), XY, SCORES, THR)
    write_asap_xml(str(tmp_path / "a.xml"), XY, SCORES, THR)
    write_detections_csv(str(tmp_path / "a.csv"), XY, SCORES, THR)
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "a.geojson", "a.xml"]  # no temp left
    target = tmp_path / "keep.txt"
    target.write_text("old")

    with pytest.raises(TypeError):
        atomic_write_text(str(target), 123)
    with pytest.raises(TypeError):
        atomic_write_bytes(str(target), 123)  # fails mid-write: the old file stays whole
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "a.geojson", "a.xml", "keep.txt"]


def test_the_atomic_writer_keeps_the_old_file_on_a_failed_write_and_names_it(tmp_path):
    target = tmp_path / "sub" / "model.pth"
    atomic_write(str(target), lambda f: f.write(b"old"))  # the folder is made
    assert target.read_bytes() == b"old"

    def full_disk(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=r"could not save .*model\.pth .*previous file is intact"):
        atomic_write(str(target), full_disk)
    assert target.read_bytes() == b"old" and os.listdir(target.parent) == ["model.pth"]
    atomic_write(str(target), lambda f: f.write("text, in UTF-8: µm"), "w")
    assert target.read_text(encoding="utf-8") == "text, in UTF-8: µm"
    with pytest.raises(ValueError, match="mode must be"):
        atomic_write(str(target), lambda f: None, "a")
