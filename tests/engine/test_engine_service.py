"""The Engine end to end on tiny real models: a CT-CLIP bundle with 512-wide tokens, SmolLM2 behind a random
projector in the supervised llama.cpp child, a case library in tmp_path. Jobs, supersession, cancel, crash restart,
transcripts, the guardrail path without a study, similar cases, report draft, quiz, status and shutdown."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from builders import block_volume, smollm2_chat_bundle, tiny_bundle_512

pytest.importorskip("llama_cpp")

from engine.case_library import CaseLibrary, NewCase  # noqa: E402
from engine.errors import Cancelled  # noqa: E402
from engine.jobs import Job, JobState  # noqa: E402
from engine.model_store import ModelStore  # noqa: E402
from engine.resources import ct_rate_labels  # noqa: E402
from engine.service import (  # noqa: E402
    Engine,
    EngineConfig,
    FindingMap,
    ReportDraft,
    SimilarCase,
    link_sentences,
)
from engine.volume import Volume  # noqa: E402

WAIT = 180


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return tiny_bundle_512(root / "clip", seed=1), smollm2_chat_bundle(root / "chat")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine")


@pytest.fixture(scope="module")
def engine(models: tuple[Path, Path], root: Path) -> Iterator[Engine]:
    clip, chat = models
    config = EngineConfig(ctclip=str(clip), chat=str(chat), library=root / "library", device="cpu", top_k=2,
                          transcripts=root / "transcripts", max_new_tokens=24, n_ctx=2048)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CTDESK_LLM_THREADS", "1")
        eng = Engine(config, store=ModelStore(root / "store"))
        yield eng
        eng.shutdown()


@pytest.fixture(scope="module")
def study() -> Volume:
    return block_volume()


def status_of(engine: Engine, role: str):  # type: ignore[no-untyped-def]
    return next(s for s in engine.status() if s.role == role)


def first_token_then(job: Job, action) -> threading.Event:  # type: ignore[no-untyped-def]
    """Run `action()` (from the worker thread) when the job streams its first token."""
    fired = threading.Event()

    def on_stream(_job: Job, _text: str) -> None:
        if not fired.is_set():
            fired.set()
            action()

    job.on_stream(on_stream)
    return fired


# --- loading and status ------------------------------------------------------------------------------------------
def test_models_load_in_the_background_and_report_their_state(engine: Engine) -> None:
    assert [s.state for s in engine.status()] == ["idle", "idle", "idle"]
    job = engine.load_models()
    statuses = job.result(WAIT)
    by_role = {s.role: s for s in statuses}
    assert by_role["ctclip"].state == "ready" and by_role["ctclip"].name == "tiny-ctclip512-1"
    assert by_role["ctclip"].device == "cpu"
    assert by_role["chat"].state == "ready" and by_role["chat"].demo and "SmolLM2" in by_role["chat"].name
    assert by_role["library"].state == "missing" and "ctdesk library add" in by_role["library"].message
    assert engine.NOTICE == "Research use only — not for diagnostic use."


def test_missing_models_fail_jobs_with_advice(tmp_path: Path, study: Volume) -> None:
    config = EngineConfig(ctclip=str(tmp_path / "no-such-model"), chat=str(tmp_path / "no-chat"),
                          library=tmp_path / "no-library", transcripts=tmp_path / "t")
    with Engine(config, store=ModelStore(tmp_path / "store")) as eng:
        no_study = eng.findings()
        assert no_study.wait(WAIT) and no_study.error_message == "Open a study first."
        statuses = eng.load_models().result(WAIT)
        assert [s.state for s in statuses] == ["missing", "missing", "missing"]
        assert all("ctdesk models" in s.message for s in statuses[:2])
        eng.set_study(study, key="s")
        job = eng.findings()
        assert job.wait(WAIT) and job.state is JobState.FAILED and "does not exist" in job.error_message
        similar = eng.similar()
        assert similar.wait(WAIT) and similar.error_message.startswith("No case library at")
        answer = eng.ask("Hello?")
        assert answer.wait(WAIT) and answer.state is JobState.FAILED and "does not exist" in answer.error_message


# --- CT-CLIP: findings, map, quiz --------------------------------------------------------------------------------
def test_findings_and_map_for_the_open_study(engine: Engine, study: Volume) -> None:
    opened = engine.set_study(study, key="study-1")
    assert opened is not None and opened.result(WAIT) == "study-1"
    job = engine.findings(["Pneumothorax"])
    progress: list[float] = []
    job.on_progress(lambda j, f, m: progress.append(f))
    result = job.result(WAIT)
    assert list(result.probabilities) == [*ct_rate_labels(), "Pneumothorax"]
    assert all(0.0 < p < 1.0 for p in result.probabilities.values())
    assert result.encoded.tokens.shape == (16, 16, 16, 512)
    fmap = engine.finding_map("Pleural effusion").result(WAIT)
    assert isinstance(fmap, FindingMap) and fmap.values.shape == study.shape
    assert fmap.values.dtype == np.float32 and 0.0 <= fmap.values.min() and fmap.values.max() <= 1.0
    assert "occlusion" in fmap.method_note


def test_quiz_answer_key_is_the_models_findings(engine: Engine, study: Volume) -> None:
    engine.set_study(study, key="study-1")
    result = engine.findings().result(WAIT)
    questions = engine.quiz(4).result(WAIT)
    assert len(questions) == 4 and len({q.finding for q in questions}) == 4
    for q in questions:
        p = result.probabilities[q.finding]
        correct = q.options[q.answer_index]
        if correct in ("Present", "Absent"):
            assert (correct == "Present") == (p >= 0.5)
        else:
            assert correct == q.finding and (("present" in q.question) == (p >= 0.5))
        assert "AI model" in q.explanation and f"{p:.2f}" in q.explanation


def test_quiz_prefers_confident_calls_and_falls_back_to_present_or_absent() -> None:
    from engine.quiz import make_quiz

    probs = {"A": 0.92, "B": 0.81, "C": 0.03, "D": 0.10, "E": 0.20, "F": 0.35, "G": 0.45}
    questions = make_quiz(probs, {}, 4, model_name="m", seed="study")
    assert [q.finding for q in questions] == ["A", "B", "C", "D"]
    first = questions[0]
    assert first.question.endswith("consider present in this study?") and first.options[first.answer_index] == "A"
    assert sorted(first.options) == ["A", "C", "D", "E"]  # the distractors: the most confident absent calls
    assert questions[1].options[questions[1].answer_index] == "B"  # too few present calls to ask "which is absent"
    assert questions[2].options == ("Present", "Absent") and questions[2].answer_index == 1  # C: P = 0.03
    assert "AI model m" in first.explanation and "not from a radiologist" in first.explanation
    assert make_quiz(probs, {}, 4, model_name="m", seed="study") == questions  # reproducible for one study
    strict = make_quiz(probs, {"A": 0.95}, 1, model_name="m", seed="study")  # A is below its own threshold
    assert strict[0].options[strict[0].answer_index] == "B"
    assert make_quiz(probs, {}, 0, model_name="m") == []


def test_gpu_out_of_memory_falls_back_to_the_cpu_with_a_message(engine: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import torch

    model = engine._ensure_ctclip()  # the engine's loaded CT-CLIP, as a running engine holds it
    real = model._encode_on

    def encode_on(x: np.ndarray, device: torch.device):  # type: ignore[no-untyped-def]
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(x, device)

    monkeypatch.setattr(model, "_encode_on", encode_on)
    monkeypatch.setattr(model, "device", torch.device("cuda"))  # as if it had been loaded on a GPU
    other = block_volume(shape=(40, 64, 72))  # not encoded yet
    engine.set_study(other, key="study-oom")
    result = engine.findings().result(WAIT)
    assert len(result.probabilities) == 18 and model.device == torch.device("cpu")
    status = status_of(engine, "ctclip")
    assert status.device == "cpu" and "GPU ran out of memory" in status.message


# --- similar cases -----------------------------------------------------------------------------------------------
def build_library(folder: Path, clip: Path, study: Volume, latent: np.ndarray, studies: Path) -> None:
    """Case 0 is the study itself, case 1 a near copy with every finding, case 2 far away with none."""
    import torch

    from engine.findings import FindingsModel, volume_content_hash
    from engine.io.image_files import write_image_file
    from engine.library_import import LibraryEncoder
    from engine.models.loading import load_ctclip, resolve_spec

    cpu = torch.device("cpu")
    identity = LibraryEncoder(FindingsModel(load_ctclip(resolve_spec(clip), device=cpu), cpu)).identity
    rng = np.random.default_rng(3)
    near = latent + 0.05 * rng.standard_normal(latent.shape).astype(np.float32)
    far = -latent + 0.3 * rng.standard_normal(latent.shape).astype(np.float32)
    paths = [write_image_file(study, studies / f"case{i}.nii.gz") for i in range(3)]
    hashes = [volume_content_hash(study), "hash-near", "hash-far"]
    rows = [latent, near / np.linalg.norm(near), far / np.linalg.norm(far)]
    labels = [np.zeros(18, np.int8), np.ones(18, np.int8), np.zeros(18, np.int8)]
    thumbs = [np.full((2, 8, 8), i * 50, np.uint8) for i in range(3)]
    cases = [NewCase(str(paths[i]), hashes[i], rows[i], str(paths[i]), paths[i].name, meta={},
                     findings_text=f"Findings of case {i}.",
                     impression_text=("Right pleural effusion. " * 30) if i == 1 else None,
                     labels=labels[i], thumbnail=thumbs[i]) for i in range(3)]
    with CaseLibrary(folder) as library:
        library.adopt(identity)
        library.add_cases(cases)


def test_similar_cases_and_text_search_come_from_the_library(engine: Engine, models, root: Path,  # type: ignore[no-untyped-def]
                                                             study: Volume, tmp_path: Path) -> None:
    engine.set_study(study, key="study-1")
    missing = engine.similar()
    assert missing.wait(WAIT) and "No case library at" in missing.error_message
    assert status_of(engine, "library").state == "missing"
    result = engine.findings().result(WAIT)
    build_library(root / "library", models[0], study, result.encoded.image_latent, tmp_path)

    cases = engine.similar().result(WAIT)
    assert [c.case_id for c in cases] == [1, 2]  # the study's own case is left out; the near copy first
    near = cases[0]
    assert isinstance(near, SimilarCase) and near.similarity > 0.9 > cases[1].similarity
    assert near.findings == ct_rate_labels() and cases[1].findings == ()
    positives = tuple(f for f in ct_rate_labels() if result.probabilities[f] >= 0.5)
    assert near.shared_findings == positives
    assert near.thumbnail is not None and near.thumbnail.shape == (8, 8) and near.thumbnail.dtype == np.uint8
    assert near.report_excerpt.startswith("Right pleural effusion.") and len(near.report_excerpt) < 260
    assert cases[1].report_excerpt == "Findings of case 2." and near.source.endswith("case1.nii.gz")
    assert status_of(engine, "library").state == "ready"

    texts = engine.search_text("Right pleural effusion", k=3).result(WAIT)
    assert sorted(c.case_id for c in texts) == [0, 1, 2]
    assert [c.similarity for c in texts] == sorted((c.similarity for c in texts), reverse=True)

    opened = engine.open_case(1).result(WAIT)
    assert opened.shape == study.shape and np.array_equal(opened.hu, study.hu)


# --- chat --------------------------------------------------------------------------------------------------------
def test_without_a_study_the_prompt_has_no_image(engine: Engine, study: Volume) -> None:
    engine.set_study(None)
    blind = engine.ask("Is there a pleural effusion?", "short").result(WAIT)
    engine.set_study(study, key="study-prompt")
    seeing = engine.ask("Is there a pleural effusion?", "short").result(WAIT)
    # same question, both first turns: the study adds 256 image rows (and "<provided>"); the guardrail is in both
    assert seeing.n_prompt_tokens - blind.n_prompt_tokens >= 256
    assert blind.mode == seeing.mode == "short_answer"


def test_tokens_stream_in_order_and_the_turn_is_saved(engine: Engine, study: Volume, root: Path) -> None:
    engine.set_study(study, key="study-chat").result(WAIT)
    assert engine.chat_history() == []
    job = engine.ask("Describe the lungs.")
    tokens: list[str] = []
    job.on_stream(lambda j, t: tokens.append(t))
    answer = job.result(WAIT)
    assert tokens and "".join(tokens) == answer.text and answer.mode == "long_answer"
    history = engine.chat_history()
    assert history[-2:] == [{"role": "user", "content": "Describe the lungs."},
                            {"role": "assistant", "content": answer.text}]
    saved = engine.transcripts.load("study-chat")
    assert saved.history() == history and saved.problem is None
    # the same study opened again (later, or in another session) brings its conversation back
    engine.set_study(block_volume(shape=(40, 64, 80)), key="study-other").result(WAIT)
    assert engine.chat_history() == []
    engine.set_study(study, key="study-chat").result(WAIT)
    assert engine.chat_history() == history
    follow_up = engine.ask("And the heart?", "short").result(WAIT)
    assert follow_up.n_reused_tokens > 256  # the first turn (image included) was still in the model's cache
    assert len(engine.chat_history()) == len(history) + 2


def test_a_new_question_supersedes_the_unfinished_answer(engine: Engine, study: Volume) -> None:
    engine.set_study(study, key="study-supersede").result(WAIT)
    first = engine.ask("Describe every organ in detail.")
    second_job: list[Job] = []
    first_token_then(first, lambda: second_job.append(engine.ask("Is there a nodule?", "short")))
    assert first.wait(WAIT) and first.state is JobState.CANCELLED
    second = second_job[0].result(WAIT)
    history = engine.chat_history()
    assert [m["content"] for m in history[::2]] == ["Describe every organ in detail.", "Is there a nodule?"]
    assert history[-1]["content"] == second.text
    saved = engine.transcripts.load("study-supersede").messages
    assert saved[1]["stopped"] is True and saved[3]["stopped"] is False


def test_stop_cancels_a_running_answer_within_200_ms(engine: Engine, study: Volume) -> None:
    engine.set_study(study, key="study-stop").result(WAIT)
    job = engine.ask("Describe the mediastinum in detail.")
    stopped_at: list[float] = []
    first_token_then(job, lambda: (job.cancel(), stopped_at.append(time.perf_counter())))
    assert job.wait(WAIT)
    assert job.state is JobState.CANCELLED and time.perf_counter() - stopped_at[0] < 0.2
    with pytest.raises(Cancelled):
        job.result(0)


def test_a_new_study_cancels_the_previous_studys_work(engine: Engine, study: Volume) -> None:
    engine.set_study(study, key="study-A").result(WAIT)
    answer = engine.ask("Describe the lungs in detail.")
    queued = engine.findings(["Rib fracture"])
    ran: list[bool] = []
    queued.on_progress(lambda j, f, m: ran.append(True))
    started = threading.Event()
    answer.on_stream(lambda j, t: started.set())
    assert started.wait(WAIT)
    opened = engine.set_study(block_volume(shape=(40, 64, 80)), key="study-B")
    assert answer.wait(5) and answer.state is JobState.CANCELLED
    assert queued.wait(5) and queued.state is JobState.CANCELLED and ran == []
    assert opened.result(WAIT) == "study-B" and engine.chat_history() == []
    previous = engine.transcripts.load("study-A").messages  # what was shown of the stopped answer stays with A
    assert [m["content"] for m in previous[::2]] == ["Describe the lungs in detail."] and previous[1]["stopped"]


def test_a_killed_llm_fails_one_answer_then_the_next_question_restarts_it(engine: Engine, study: Volume) -> None:
    engine.set_study(study, key="study-crash").result(WAIT)
    engine.ask("Hello.", "short").result(WAIT)
    chat = engine._chat
    assert chat is not None and chat.process is not None and chat.process.pid is not None
    pid = chat.process.pid
    job = engine.ask("Describe the heart in detail.")
    first_token_then(job, lambda: os.kill(pid, 9))
    assert job.wait(WAIT) and job.state is JobState.FAILED
    assert "stopped unexpectedly" in job.error_message and "SIGKILL" in job.error_message
    assert "\n" not in job.error_message and status_of(engine, "chat").state == "error"
    again = engine.ask("Is there an effusion?", "short").result(WAIT)
    assert chat.process.pid != pid and again.timings["load_llm_s"] > 0
    assert status_of(engine, "chat").state == "ready"
    assert [m["content"] for m in engine.chat_history()[::2]] == ["Hello.", "Is there an effusion?"]


def test_report_draft_sentences_are_linked_to_findings(engine: Engine, study: Volume) -> None:
    engine.set_study(study, key="study-report").result(WAIT)
    job = engine.report_draft()
    streamed: list[str] = []
    job.on_stream(lambda j, t: streamed.append(t))
    draft = job.result(WAIT)
    assert isinstance(draft, ReportDraft) and draft.demo and draft.model_name == "SmolLM2-135M-Instruct"
    assert draft.text == "".join(streamed).strip()
    assert draft.sentences == link_sentences(draft.text)
    assert engine.chat_history() == []  # the draft is not a chat turn


def test_sentences_name_the_findings_they_mention() -> None:
    sentences = link_sentences("Findings: There is a small right pleural effusion. No pneumothorax.\n"
                               "Heart size is normal; 8 mm nodule in the left upper lobe.")
    assert [s.text for s in sentences] == ["There is a small right pleural effusion.", "No pneumothorax.",
                                           "Heart size is normal; 8 mm nodule in the left upper lobe."]
    assert sentences[0].findings == ("Pleural effusion",) and sentences[0].absent == ()
    assert sentences[1].findings == ()
    assert sentences[2].findings == ("Cardiomegaly", "Lung nodule") and sentences[2].absent == ("Cardiomegaly",)


# --- lifetime ----------------------------------------------------------------------------------------------------
def test_shutdown_joins_and_closes_the_chat_process(engine: Engine, study: Volume) -> None:
    engine.set_study(study, key="study-end").result(WAIT)
    engine.ask("Hello.", "short").result(WAIT)
    assert engine._chat is not None and engine._chat.process is not None
    process = engine._chat.process
    running = engine.ask("Describe everything in detail.")
    started = threading.Event()
    running.on_stream(lambda j, t: started.set())
    assert started.wait(WAIT)
    t0 = time.perf_counter()
    engine.shutdown()
    assert time.perf_counter() - t0 < 5.0
    assert running.state is JobState.CANCELLED and not engine.queue.thread.is_alive()
    assert not process.alive
    late = engine.findings()
    assert late.done and late.error_message == "The engine has shut down."
