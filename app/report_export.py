"""Writing an AI draft report (JSON, PDF) and other exports to disk, atomically.

Mounting: nothing to mount — ReportDraftView's Export buttons and ChatPanel's transcript export call these. The PDF
is laid out by QTextDocument and written by QPdfWriter (no extra dependency): the draft's sentences with the
findings each mentions, the key images (the three MPR views, passed in as QImages), the model's name with its demo
label, and the research-use notice at top and bottom. Every file is written to a temporary name beside the target,
fsynced and renamed over it, so a crash never leaves a half-written report.
"""

from __future__ import annotations

import colorsys
import hashlib
import html
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QMarginsF, QSizeF, QUrl
from PySide6.QtGui import QColor, QImage, QPageLayout, QPageSize, QPdfWriter, QTextDocument

if TYPE_CHECKING:
    from engine.service import ReportDraft, ReportSentence

REPORT_FORMAT = "ctdesk-report-draft/1"
KEY_IMAGE_ORDER = ("axial", "coronal", "sagittal")
PDF_DPI = 300
KEY_IMAGE_WIDTH_PT = 160.0  # three across an A4 page inside 15 mm margins


def notice_text() -> str:
    """Engine.NOTICE: the sentence every AI output carries."""
    from engine.service import Engine

    return Engine.NOTICE


# --- findings as chips (the view, the PDF and the similar-cases list colour them alike) ---------------------------
def finding_color(finding: str) -> QColor:
    """A stable, readable colour per finding: the 18 CT-RATE labels spread round the hue circle, others hashed."""
    from engine.resources import ct_rate_labels

    labels = [label.lower() for label in ct_rate_labels()]
    name = finding.strip().lower()
    if name in labels:
        hue = (labels.index(name) * 7 % 18) / 18.0  # neighbours in the list get distant hues
    else:
        hue = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=2).digest(), "big") / 65536.0
    r, g, b = colorsys.hls_to_rgb(hue, 0.36, 0.62)
    return QColor(round(r * 255), round(g * 255), round(b * 255))


def chip_text(finding: str, absent: bool = False) -> str:
    return f"no {finding}" if absent else finding


def absent_findings(sentence: ReportSentence) -> tuple[str, ...]:
    return tuple(getattr(sentence, "absent", ()))


# --- atomic files ---------------------------------------------------------------------------------------------------
def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same folder, fsync, rename (folders created)."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


# --- JSON -----------------------------------------------------------------------------------------------------------
def report_to_dict(draft: ReportDraft, *, study: str | None = None, key_images: tuple[str, ...] = (),
                   created: str | None = None) -> dict[str, Any]:
    """The draft as plain data: sentences with their findings, the model that wrote it, the notice."""
    mentioned = sorted({f for s in draft.sentences for f in s.findings if f not in absent_findings(s)})
    return {
        "format": REPORT_FORMAT,
        "notice": notice_text(),
        "created": created or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "study": study,
        "model": {"name": draft.model_name, "demo": draft.demo, "label": draft.label},
        "text": draft.text,
        "sentences": [{"text": s.text, "findings": list(s.findings), "absent": list(absent_findings(s))}
                      for s in draft.sentences],
        "findings_reported": mentioned,  # mentioned as present in at least one sentence
        "key_images": list(key_images),
    }


def export_report_json(draft: ReportDraft, path: str | os.PathLike[str], *, study: str | None = None) -> Path:
    data = report_to_dict(draft, study=study)
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# --- PDF ------------------------------------------------------------------------------------------------------------
def _chip(finding: str, absent: bool = False) -> str:
    color = finding_color(finding).name()
    style = f"color:{color};" if absent else f"background-color:{color}; color:#ffffff;"
    return (f'<span style="{style}">&nbsp;' + html.escape(chip_text(finding, absent)).replace(" ", "&nbsp;")
            + "&nbsp;</span>")


def report_html(draft: ReportDraft, image_names: tuple[str, ...] = (), *, study: str | None = None,
                created: str | None = None) -> str:
    """The PDF's content as Qt rich text; images are `keyimage:<name>` resources of the document."""
    notice = html.escape(notice_text())
    model = html.escape(draft.model_name)
    if draft.demo:
        model += f' <b style="color:#a05000;">DEMO</b> — {html.escape(draft.label or "demo model")}'
    parts = [
        "<h2>Draft radiology report (AI-generated)</h2>",
        f'<p style="color:#b00000;"><b>{notice}</b></p>',
        f"<p>Model: {model}<br/>Created: {html.escape(created or time.strftime('%Y-%m-%d %H:%M'))}"
        + (f"<br/>Study: {html.escape(study)}" if study else "") + "</p>",
        "<h3>Draft</h3>",
        '<table cellspacing="0" cellpadding="3" width="100%">',
    ]
    for n, sentence in enumerate(draft.sentences, 1):
        absent = absent_findings(sentence)
        chips = " ".join(_chip(f, f in absent) for f in sentence.findings) or '<span style="color:#777777;">—</span>'
        parts.append(f'<tr><td width="4%" valign="top">{n}.</td><td width="66%" valign="top">'
                     f'{html.escape(sentence.text)}</td><td width="30%" valign="top">{chips}</td></tr>')
    parts.append("</table>")
    reported = sorted({f for s in draft.sentences for f in s.findings if f not in absent_findings(s)})
    parts.append("<h3>Findings reported</h3>")
    parts.append("<p>" + (" ".join(_chip(f) for f in reported) if reported else "None of the 18 findings.")
                 + "</p>")
    if image_names:
        parts.append("<h3>Key images</h3>")
        cells = "".join(f'<td align="center"><img src="keyimage:{name}" width="{KEY_IMAGE_WIDTH_PT:.0f}"/><br/>'
                        f"{html.escape(name.capitalize())}</td>" for name in image_names)
        parts.append(f'<table cellspacing="4"><tr>{cells}</tr></table>')
    parts.append(f'<p style="color:#b00000;"><b>{notice}</b> Generated by an AI model; every sentence must be '
                 "checked against the images by a qualified reader.</p>")
    return "\n".join(parts)


def _ordered(images: Mapping[str, QImage]) -> list[tuple[str, QImage]]:
    names = [n for n in KEY_IMAGE_ORDER if n in images] + [n for n in images if n not in KEY_IMAGE_ORDER]
    return [(n, images[n]) for n in names if images[n] is not None and not images[n].isNull()]


def export_report_pdf(draft: ReportDraft, path: str | os.PathLike[str], key_images: Mapping[str, QImage] | None = None,
                      *, study: str | None = None) -> Path:
    """An A4 PDF of the draft; `key_images` maps a view name to its screenshot (any number, any size)."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    images = _ordered(key_images or {})
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        writer = QPdfWriter(tmp)
        writer.setResolution(PDF_DPI)
        writer.setPageLayout(QPageLayout(QPageSize(QPageSize.PageSizeId.A4), QPageLayout.Orientation.Portrait,
                                         QMarginsF(15, 15, 15, 15), QPageLayout.Unit.Millimeter))
        writer.setTitle(f"Draft report — {draft.model_name}")
        writer.setCreator("ctdesk")
        document = QTextDocument()
        document.setDefaultStyleSheet("body { font-size: 10pt; }")
        for name, image in images:
            document.addResource(QTextDocument.ResourceType.ImageResource, QUrl(f"keyimage:{name}"), image)
        document.setHtml(report_html(draft, tuple(n for n, _ in images), study=study))
        # Lay out in points on the page's printable area; print_() scales points to the writer's resolution.
        rect = writer.pageLayout().paintRect(QPageLayout.Unit.Point)
        document.setPageSize(QSizeF(rect.width(), rect.height()))
        document.print_(writer)
        del writer  # finishes the file
        with open(tmp, "rb") as f:
            head = f.read(5)
            os.fsync(f.fileno())
        if head != b"%PDF-":
            raise OSError(f"Could not write the PDF report to {target}")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
