"""Teaching mode: AI outputs hidden until Reveal (chat, similar cases, any wrapped widget), and the quiz built by the
real engine from a tiny CT-CLIP's findings on a phantom — the learner picks, sees right/wrong, and the score."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import block_volume, tiny_bundle
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel

from app.engine_bridge import EngineBridge
from app.panels.chat_panel import ChatPanel
from app.panels.similar_panel import SimilarCasesPanel
from app.panels.teaching import OPTION_LETTERS, HiddenUntilRevealed, QuizWidget, TeachingBar, TeachingMode
from engine.service import Engine, EngineConfig


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    folder = tmp_path_factory.mktemp("teaching")
    config = EngineConfig(ctclip=str(tiny_bundle(folder / "clip", seed=3)), chat=str(folder / "no-chat"),
                          library=folder / "no-library", device="cpu", transcripts=folder / "transcripts")
    with Engine(config) as engine:
        yield engine


def test_ai_outputs_are_hidden_until_revealed(qtbot, engine: Engine) -> None:
    teaching = TeachingMode()
    bridge = EngineBridge(engine)
    chat = ChatPanel(bridge, teaching=teaching)
    similar = SimilarCasesPanel(bridge, teaching=teaching)
    findings = HiddenUntilRevealed(teaching, QLabel("Pleural effusion 0.91"), "findings")
    bar = TeachingBar(teaching)
    for widget in (chat, similar, findings, bar):
        qtbot.addWidget(widget)
        widget.show()
    covers = [chat.output, similar.output, findings]
    assert all(c.content_shown for c in covers) and not bar.reveal_button.isVisible()

    with qtbot.waitSignal(teaching.ai_visible_changed) as blocker:
        qtbot.mouseClick(bar.toggle, Qt.MouseButton.LeftButton)
    assert blocker.args == [False] and teaching.enabled and not teaching.revealed
    assert not any(c.content_shown for c in covers)
    assert not chat.transcript.isVisible() and not similar.results.isVisible()
    assert bar.reveal_button.isVisible() and "hidden" in findings.cover_label.text()

    qtbot.mouseClick(similar.output.reveal_button, Qt.MouseButton.LeftButton)  # any cover's Reveal reveals all
    assert teaching.revealed and all(c.content_shown for c in covers) and chat.transcript.isVisible()
    assert bar.hide_button.isVisible() and not bar.reveal_button.isVisible()

    teaching.conceal()  # the next case starts hidden again
    assert not any(c.content_shown for c in covers)
    qtbot.mouseClick(bar.toggle, Qt.MouseButton.LeftButton)  # teaching mode off: everything visible
    assert not teaching.enabled and all(c.content_shown for c in covers)


def test_quiz_from_the_engine_scores_the_learners_picks(qtbot, engine: Engine) -> None:
    engine.set_study(block_volume())
    bridge = EngineBridge(engine)
    quiz = QuizWidget(bridge)
    qtbot.addWidget(quiz)
    quiz.show()
    quiz.count_spin.setValue(3)
    with qtbot.waitSignal(quiz.quiz_ready, timeout=120_000) as blocker:
        qtbot.mouseClick(quiz.new_button, Qt.MouseButton.LeftButton)
    expected = engine.quiz(3).result(timeout=60)  # the same study: the same questions, same option order
    assert blocker.args == [3] and [c.question for c in quiz.cards] == expected
    assert all(c.isVisible() and len(c.option_buttons) == len(c.question.options) for c in quiz.cards)
    qtbot.waitUntil(lambda: all(b.height() > 0 for c in quiz.cards for b in c.option_buttons))  # laid out
    assert quiz.score_label.text() == "Score: 0 / 3  (0 answered)"

    first, second = quiz.cards[0], quiz.cards[1]
    right = first.question.answer_index
    qtbot.mouseClick(first.option_buttons[right], Qt.MouseButton.LeftButton)
    assert first.correct is True and first.result_label.text().startswith("<b>Correct.</b>")
    assert first.question.explanation.split(":")[0] in first.result_label.text()
    assert not any(b.isEnabled() for b in first.option_buttons)  # the first pick counts

    wrong = (second.question.answer_index + 1) % len(second.question.options)
    qtbot.mouseClick(second.option_buttons[wrong], Qt.MouseButton.LeftButton)
    assert second.correct is False
    answer = OPTION_LETTERS[second.question.answer_index]
    assert f"the answer is {answer}." in second.result_label.text()
    assert quiz.score == (1, 2, 3) and quiz.score_label.text() == "Score: 1 / 3  (2 answered)"
    qtbot.mouseClick(quiz.cards[2].option_buttons[quiz.cards[2].question.answer_index], Qt.MouseButton.LeftButton)
    assert quiz.score == (2, 3, 3) and quiz.score_label.text() == "Score: 2 / 3"


def test_quiz_without_a_study_says_why(qtbot, tmp_path: Path) -> None:
    with Engine(EngineConfig(ctclip=str(tmp_path / "none"), device="cpu", transcripts=tmp_path)) as engine:
        quiz = QuizWidget(EngineBridge(engine))
        qtbot.addWidget(quiz)
        job = quiz.new_quiz()
        with qtbot.waitSignal(job.failed, timeout=30_000):
            pass
        assert quiz.status_label.text() == "No quiz: Open a study first." and quiz.new_button.isEnabled()
