"""Report draft export: JSON and PDF files hold every sentence with its linked findings, the model and demo label,
the research-use notice and the three MPR key images grabbed from the real main window; writes are atomic.

The PDF is read back with a small reader for what QPdfWriter writes (Flate streams, Type0 fonts with ToUnicode
maps): QtPdf and pypdf are not installed here."""

from __future__ import annotations

import json
import re
import unicodedata
import zlib
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from windows import show_window

import app.report_export as report_export
from app.panels.report_draft import ReportDraftView
from app.report_export import chip_text, export_report_json, export_report_pdf
from engine.service import Engine, ReportDraft, link_sentences

REPORT = ("There is a small right pleural effusion. Heart size is normal. A 12 mm nodule in the left upper lobe "
          "with surrounding ground-glass opacity. Mild centrilobular emphysema. No pericardial effusion.")


# --- reading back what QPdfWriter wrote ------------------------------------------------------------------------------
def pdf_objects(data: bytes) -> dict[int, tuple[bytes, bytes | None]]:
    objects = {}
    for match in re.finditer(rb"(\d+) 0 obj(.*?)endobj", data, re.S):
        head, sep, rest = match.group(2).partition(b"stream")
        stream = rest.lstrip(b"\r\n").rsplit(b"endstream", 1)[0] if sep else None
        if stream is not None and b"/FlateDecode" in head:
            stream = zlib.decompress(stream)
        objects[int(match.group(1))] = (head, stream)
    return objects


def to_unicode(cmap: bytes) -> dict[int, str]:
    out: dict[int, str] = {}

    def text(hex_digits: bytes) -> str:
        return bytes.fromhex(hex_digits.decode()).decode("utf-16-be")

    for block in re.findall(rb"beginbfchar(.*?)endbfchar", cmap, re.S):
        for src, dst in re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block):
            out[int(src, 16)] = text(dst)
    for block in re.findall(rb"beginbfrange(.*?)endbfrange", cmap, re.S):
        for lo, hi, dst in re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*(<[0-9A-Fa-f]+>|\[[^\]]*\])", block):
            codes = range(int(lo, 16), int(hi, 16) + 1)
            if dst.startswith(b"["):
                out.update(zip(codes, map(text, re.findall(rb"<([0-9A-Fa-f]+)>", dst)), strict=False))
            else:
                first = text(dst[1:-1])
                out.update((code, first[:-1] + chr(ord(first[-1]) + n)) for n, code in enumerate(codes))
    return out


def pdf_pages_text(data: bytes) -> list[str]:
    """Each page's drawn characters in drawing order, NFKC-normalised, without whitespace (Qt places words rather
    than drawing spaces)."""
    objects = pdf_objects(data)
    pages = []
    for head, _ in objects.values():
        if not re.search(rb"/Type\s*/Page\b", head):
            continue
        resources = objects[int(re.search(rb"/Resources (\d+) 0 R", head).group(1))][0]
        font_refs = re.findall(rb"/(F\d+) (\d+) 0 R", resources.split(b"/Font", 1)[1].split(b">>", 1)[0])
        fonts = {name: to_unicode(objects[int(re.search(rb"/ToUnicode (\d+) 0 R", objects[int(ref)][0]).group(1))][1])
                 for name, ref in font_refs}
        content = objects[int(re.search(rb"/Contents (\d+) 0 R", head).group(1))][1]
        chars, font = [], {}
        for name, glyphs in re.findall(rb"/(F\d+) [\d.]+ Tf|<([0-9A-Fa-f]+)> Tj", content):
            if name:
                font = fonts[name]
            else:
                chars += [font.get(int(glyphs[i:i + 4], 16), "?") for i in range(0, len(glyphs), 4)]
        pages.append(squash("".join(chars)))
    return pages


def squash(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).split())


# --- tests ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def draft() -> ReportDraft:
    return ReportDraft(REPORT, link_sentences(REPORT), "tiny-chat", True, "demo model trained on synthetic phantoms")


@pytest.fixture
def key_images(qtbot, phantom):  # type: ignore[no-untyped-def]
    """The three MPR views of the real main window, grabbed as the chat panel's key-image provider does."""
    window = show_window(qtbot, phantom, (900, 700))
    return {name: view.grab().toImage() for name, view in window.views.items()}


def test_json_holds_sentences_findings_model_and_notice(draft: ReportDraft, tmp_path: Path) -> None:
    assert [s.findings for s in draft.sentences][:3] == [("Pleural effusion",), ("Cardiomegaly",),
                                                         ("Lung nodule", "Lung opacity")]
    path = export_report_json(draft, tmp_path / "out" / "report.json", study="phantom.nii.gz")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["notice"] == Engine.NOTICE and data["study"] == "phantom.nii.gz"
    assert data["model"] == {"name": "tiny-chat", "demo": True, "label": "demo model trained on synthetic phantoms"}
    assert [(s["text"], s["findings"], s["absent"]) for s in data["sentences"]] == [
        (s.text, list(s.findings), list(s.absent)) for s in draft.sentences]
    assert data["sentences"][1]["absent"] == ["Cardiomegaly"]  # "Heart size is normal."
    assert data["findings_reported"] == ["Emphysema", "Lung nodule", "Lung opacity", "Pleural effusion"]
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_pdf_holds_sentences_chips_key_images_and_notice(draft: ReportDraft, key_images, tmp_path: Path) -> None:
    path = export_report_pdf(draft, tmp_path / "report.pdf", key_images, study="phantom.nii.gz")
    data = path.read_bytes()
    assert data.startswith(b"%PDF-1.") and data.rstrip().endswith(b"%%EOF")
    (page,) = pdf_pages_text(data)  # one A4 page
    for sentence in draft.sentences:
        assert squash(sentence.text) in page
        for finding in sentence.findings:
            assert squash(chip_text(finding, finding in sentence.absent)) in page
    assert squash("no Pericardial effusion") in page and squash(Engine.NOTICE) in page
    assert page.count(squash(Engine.NOTICE)) == 2  # under the title and at the end
    assert squash("tiny-chat DEMO — demo model trained on synthetic phantoms") in page
    assert squash("Study: phantom.nii.gz") in page and squash("Axial Coronal Sagittal") in page
    images = re.findall(rb"/Subtype /Image\s*/Width (\d+)\s*/Height (\d+)", data)
    grabbed = [(img.width(), img.height()) for img in key_images.values()]
    assert sorted((int(w), int(h)) for w, h in images) == sorted(grabbed)  # all three, at full resolution
    assert [p.name for p in tmp_path.iterdir()] == ["report.pdf"]


def test_a_long_report_flows_onto_more_pages(draft: ReportDraft, tmp_path: Path) -> None:
    text = " ".join(f"Sentence number {n} notes a small right pleural effusion." for n in range(80))
    long_draft = ReportDraft(text, link_sentences(text), "tiny-chat", False, "")
    pages = pdf_pages_text(export_report_pdf(long_draft, tmp_path / "long.pdf").read_bytes())
    assert len(pages) >= 2 and all(squash(Engine.NOTICE) not in p for p in pages[1:-1])
    every_page = "".join(pages)
    assert all(squash(f"Sentence number {n} notes") in every_page for n in range(80))
    assert "DEMO" not in every_page and squash(Engine.NOTICE) in pages[-1]


def test_a_failed_export_keeps_the_previous_file(draft: ReportDraft, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    target = export_report_pdf(draft, tmp_path / "report.pdf")
    before = target.read_bytes()

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("layout failed")

    monkeypatch.setattr(report_export, "report_html", broken)
    with pytest.raises(RuntimeError, match="layout failed"):
        export_report_pdf(draft, target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["report.pdf"]
    monkeypatch.undo()

    def rename_fails(src: str, dst: object) -> None:  # e.g. the disk filled up after the data was written
        raise OSError("no space left on device")

    monkeypatch.setattr(report_export.os, "replace", rename_fails)
    for export in (export_report_json, export_report_pdf):
        with pytest.raises(OSError, match="no space left"):
            export(draft, target)
        assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["report.pdf"]


def test_draft_view_chips_and_exports(qtbot, draft: ReportDraft, key_images, tmp_path: Path) -> None:
    view = ReportDraftView(key_images=lambda: key_images, study_label=lambda: "phantom.nii.gz", dialogs=False)
    qtbot.addWidget(view)
    view.show()
    assert not view.pdf_button.isEnabled()
    view.set_draft(draft)
    assert view.pdf_button.isEnabled() and "tiny-chat" in view.title_label.text() and "demo" in view.title_label.text()
    assert [r.text_label.text() for r in view.rows] == [s.text for s in draft.sentences]
    assert all(r.isVisible() for r in view.rows)
    qtbot.waitUntil(lambda: all(c.height() > 0 for r in view.rows for c in r.chips))  # laid out
    nodule = view.rows[2]
    assert [c.text() for c in nodule.chips] == ["Lung nodule", "Lung opacity"]
    assert [c.text() for c in view.rows[1].chips] == ["no Cardiomegaly"]
    with qtbot.waitSignal(view.finding_clicked) as clicked:
        qtbot.mouseClick(nodule.chips[1], Qt.MouseButton.LeftButton)
    assert clicked.args == ["Lung opacity"]
    with qtbot.waitSignal(view.exported) as exported:
        view.export_pdf(tmp_path / "view.pdf")
    assert exported.args == [tmp_path / "view.pdf"] and squash("Study: phantom.nii.gz") in pdf_pages_text(
        (tmp_path / "view.pdf").read_bytes())[0]
    assert json.loads(view.export_json(tmp_path / "view.json").read_text())["study"] == "phantom.nii.gz"
