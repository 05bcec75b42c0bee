"""Read an SR's content tree with plain pydicom (no highdicom), for assertions in the tests."""
from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset


@dataclass
class Item:
    relationship: str | None
    value_type: str
    name: tuple[str, str]                       # (CodeValue, CodingSchemeDesignator) of the concept name
    value: object                                # code tuple, text, number, UID or (SOP Class, SOP Instance)
    children: list["Item"] = field(default_factory=list)

    def find(self, name: tuple[str, str]) -> list["Item"]:
        return [c for c in self.children if c.name == name]

    def one(self, name: tuple[str, str]) -> "Item":
        found = self.find(name)
        assert len(found) == 1, f"{name}: {len(found)} items"
        return found[0]

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


def _code(item: Dataset, keyword: str) -> tuple[str, str]:
    code = item[keyword][0]
    return (str(code.get("CodeValue") or code.get("LongCodeValue")), str(code.CodingSchemeDesignator))


def _item(ds: Dataset) -> Item:
    value_type = str(ds.ValueType)
    value: object = None
    if value_type == "CODE":
        value = _code(ds, "ConceptCodeSequence")
    elif value_type == "TEXT":
        value = str(ds.TextValue)
    elif value_type == "UIDREF":
        value = str(ds.UID)
    elif value_type == "NUM":
        measured = ds.MeasuredValueSequence[0]
        value = (float(measured.NumericValue), _code(measured, "MeasurementUnitsCodeSequence"))
    elif value_type == "IMAGE":
        ref = ds.ReferencedSOPSequence[0]
        value = (str(ref.ReferencedSOPClassUID), str(ref.ReferencedSOPInstanceUID))
    name = _code(ds, "ConceptNameCodeSequence") if "ConceptNameCodeSequence" in ds else ("", "")
    return Item(relationship=ds.get("RelationshipType"), value_type=value_type, name=name, value=value,
                children=[_item(child) for child in ds.get("ContentSequence") or []])


def tree(sr: Dataset) -> Item:
    """The root CONTAINER of an SR dataset as :class:`Item` s."""
    return _item(sr)


MEASUREMENT_GROUP = ("125007", "DCM")
IMAGING_MEASUREMENTS = ("126010", "DCM")
FINDING = ("121071", "DCM")


def groups(sr: Dataset) -> dict[str, Item]:
    """TID 1501 measurement groups by tracking identifier (our finding names)."""
    root = tree(sr)
    out = {}
    for group in root.one(IMAGING_MEASUREMENTS).find(MEASUREMENT_GROUP):
        out[str(group.one(("112039", "DCM")).value)] = group     # Tracking Identifier
    return out
