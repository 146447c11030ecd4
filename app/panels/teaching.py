"""Teaching mode for educators: AI outputs stay hidden until "Reveal"; a multiple-choice quiz about the open study.

Mounting (main window):
    teaching = TeachingMode(window)                      # one per window, shared by every AI panel
    toolbar.addWidget(TeachingBar(teaching))             # the toggle and the Reveal / Hide buttons
    ChatPanel(bridge, teaching=teaching) · SimilarCasesPanel(bridge, teaching=teaching)
    any other AI output:  HiddenUntilRevealed(teaching, widget, "findings")  in place of `widget`
    quiz dock:            QuizWidget(bridge)             # engine.quiz() for the current study
    on a new study:       teaching.conceal()             # the next case starts hidden again
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from app.engine_bridge import EngineBridge, QtJob
    from engine.service import QuizQuestion

RIGHT_STYLE = "background: #1f6f3a; color: white;"
WRONG_STYLE = "background: #8a2424; color: white;"
OPTION_LETTERS = "ABCDEFGH"


class TeachingMode(QObject):
    """Whether AI outputs may be seen: hidden while teaching mode is on and the learner has not pressed Reveal."""

    enabled_changed = Signal(bool)
    revealed_changed = Signal(bool)
    ai_visible_changed = Signal(bool)  # what panels follow: False while outputs must stay hidden

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._enabled = False
        self._revealed = False

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def revealed(self) -> bool:
        return self._revealed

    @property
    def ai_visible(self) -> bool:
        return not self._enabled or self._revealed

    def set_enabled(self, on: bool) -> None:
        """Turning teaching mode on hides the AI outputs (again); turning it off shows them."""
        if on == self._enabled:
            return
        before = self.ai_visible
        self._enabled = on
        self._set_revealed(False, before)
        self.enabled_changed.emit(on)
        self._emit_visibility(before)

    def reveal(self) -> None:
        self._set_revealed(True, self.ai_visible)

    def conceal(self) -> None:
        """Hide again (a new case): the learner commits to a reading before seeing the AI's."""
        self._set_revealed(False, self.ai_visible)

    def _set_revealed(self, revealed: bool, before: bool) -> None:
        if revealed != self._revealed:
            self._revealed = revealed
            self.revealed_changed.emit(revealed)
        self._emit_visibility(before)

    def _emit_visibility(self, before: bool) -> None:
        if self.ai_visible != before:
            self.ai_visible_changed.emit(self.ai_visible)


class HiddenUntilRevealed(QStackedWidget):
    """Shows `content`, or a cover with a Reveal button while `teaching` hides AI outputs."""

    def __init__(self, teaching: TeachingMode, content: QWidget, what: str = "output",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.teaching = teaching
        self.content = content
        cover = QWidget()
        layout = QVBoxLayout(cover)
        layout.addStretch(1)
        self.cover_label = QLabel(f"Teaching mode: the AI {what} is hidden.\nMake your own reading, then reveal it.")
        self.cover_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.cover_label.setWordWrap(True)
        self.reveal_button = QPushButton("Reveal")
        self.reveal_button.setToolTip("Show the AI outputs for this study")
        self.reveal_button.clicked.connect(teaching.reveal)
        layout.addWidget(self.cover_label)
        layout.addWidget(self.reveal_button, 0, Qt.AlignmentFlag.AlignHCenter)
        layout.addStretch(1)
        self.cover = cover
        self.addWidget(content)
        self.addWidget(cover)
        teaching.ai_visible_changed.connect(self._on_ai_visible_changed)
        self._on_ai_visible_changed(teaching.ai_visible)

    @property
    def content_shown(self) -> bool:
        return self.currentWidget() is self.content

    def _on_ai_visible_changed(self, visible: bool) -> None:
        self.setCurrentWidget(self.content if visible else self.cover)


class TeachingBar(QWidget):
    """The teaching-mode switch and Reveal / Hide buttons, for a toolbar or a panel header."""

    def __init__(self, teaching: TeachingMode, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.teaching = teaching
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 0, 4, 0)
        self.toggle = QToolButton()
        self.toggle.setText("Teaching mode")
        self.toggle.setCheckable(True)
        self.toggle.setToolTip("Hide AI findings, chat answers and similar cases until you press Reveal")
        self.reveal_button = QPushButton("Reveal AI")
        self.hide_button = QPushButton("Hide AI")
        for widget in (self.toggle, self.reveal_button, self.hide_button):
            layout.addWidget(widget)
        self.toggle.toggled.connect(teaching.set_enabled)
        self.reveal_button.clicked.connect(teaching.reveal)
        self.hide_button.clicked.connect(teaching.conceal)
        teaching.enabled_changed.connect(self._sync)
        teaching.revealed_changed.connect(self._sync)
        self._sync()

    def _sync(self, *_: object) -> None:
        self.toggle.setChecked(self.teaching.enabled)
        self.reveal_button.setVisible(self.teaching.enabled and not self.teaching.revealed)
        self.hide_button.setVisible(self.teaching.enabled and self.teaching.revealed)


class QuestionCard(QWidget):
    """One multiple-choice question: pick an option, see right/wrong, the answer and why."""

    answered = Signal(bool)  # correct?

    def __init__(self, number: int, question: QuizQuestion, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.question = question
        self.choice: int | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 6, 4, 6)
        title = QLabel(f"<b>{number}.</b> {_escape(question.question)}")
        title.setWordWrap(True)
        layout.addWidget(title)
        self.option_buttons: list[QPushButton] = []
        for index, option in enumerate(question.options):
            button = QPushButton(f"{OPTION_LETTERS[index]}. {option}")
            button.setStyleSheet("text-align: left; padding: 3px 6px;")
            button.clicked.connect(lambda _=False, index=index: self.choose(index))
            layout.addWidget(button)
            self.option_buttons.append(button)
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.hide()
        layout.addWidget(self.result_label)

    @property
    def correct(self) -> bool | None:
        return None if self.choice is None else self.choice == self.question.answer_index

    def choose(self, index: int) -> None:
        """Lock in `index` (a second pick is ignored: the score counts first answers)."""
        if self.choice is not None:
            return
        self.choice = index
        right = self.question.answer_index
        for i, button in enumerate(self.option_buttons):
            button.setEnabled(False)
            if i == right:
                button.setStyleSheet(f"text-align: left; padding: 3px 6px; {RIGHT_STYLE}")
            elif i == index:
                button.setStyleSheet(f"text-align: left; padding: 3px 6px; {WRONG_STYLE}")
        verdict = ("Correct." if index == right else
                   f"Not quite — the answer is {OPTION_LETTERS[right]}. {_escape(self.question.options[right])}.")
        self.result_label.setText(f"<b>{verdict}</b> {_escape(self.question.explanation)}")
        self.result_label.show()
        self.answered.emit(index == right)


class QuizWidget(QWidget):
    """Generates a quiz for the current study (engine.quiz) and keeps the score."""

    quiz_ready = Signal(int)  # number of questions

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.cards: list[QuestionCard] = []
        self._job: QtJob | None = None
        layout = QVBoxLayout(self)
        header = QHBoxLayout()
        self.count_spin = QSpinBox()
        self.count_spin.setRange(1, 10)
        self.count_spin.setValue(3)
        self.count_spin.setSuffix(" questions")
        self.new_button = QPushButton("New quiz")
        self.new_button.setToolTip("Multiple-choice questions about the open study, made from the AI's findings")
        self.new_button.clicked.connect(self.new_quiz)
        header.addWidget(self.count_spin)
        header.addWidget(self.new_button)
        header.addStretch(1)
        layout.addLayout(header)
        self.status_label = QLabel("Open a study, then press New quiz.")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.score_label = QLabel()
        layout.addWidget(self.score_label)
        self._cards_host = QWidget()
        self._cards_layout = QVBoxLayout(self._cards_host)
        self._cards_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self._cards_host)
        layout.addWidget(scroll, 1)

    @property
    def score(self) -> tuple[int, int, int]:
        """(correct, answered, questions)."""
        answered = [c for c in self.cards if c.choice is not None]
        return sum(1 for c in answered if c.correct), len(answered), len(self.cards)

    def new_quiz(self) -> QtJob:
        if self._job is not None:
            self._job.cancel()
        self.new_button.setEnabled(False)
        self.status_label.setText("Writing questions…")
        job = self.bridge.track(self.bridge.engine.quiz(self.count_spin.value()))
        job.finished.connect(self._on_finished)
        job.failed.connect(self._on_failed)
        job.cancelled.connect(self._on_cancelled)
        self._job = job
        return job

    def _on_finished(self, questions: list[QuizQuestion]) -> None:
        self._job = None
        self.new_button.setEnabled(True)
        self.set_questions(questions)

    def set_questions(self, questions: list[QuizQuestion]) -> None:
        for card in self.cards:
            card.deleteLater()
        self.cards = []
        for n, question in enumerate(questions, 1):
            card = QuestionCard(n, question)
            card.answered.connect(self._update_score)
            self._cards_layout.insertWidget(self._cards_layout.count() - 1, card)
            card.show()  # now, not when the layout next runs: the quiz is usable as soon as quiz_ready is emitted
            self.cards.append(card)
        self.status_label.setText(f"{len(questions)} questions about this study. Pick one answer each."
                                  if questions else "No questions could be made for this study.")
        self._update_score()
        self.quiz_ready.emit(len(questions))

    def _update_score(self, *_: object) -> None:
        correct, answered, total = self.score
        text = f"Score: {correct} / {total}" if total else ""
        if total and answered < total:
            text += f"  ({answered} answered)"
        self.score_label.setText(text)

    def _on_failed(self, message: str) -> None:
        self._job = None
        self.new_button.setEnabled(True)
        self.status_label.setText(f"No quiz: {message}")

    def _on_cancelled(self) -> None:
        self._job = None
        self.new_button.setEnabled(True)
        self.status_label.setText("Quiz cancelled.")


def _escape(text: str) -> str:
    return html.escape(text)
