"""The engine as the viewer sees it: one `Engine` owns the models, the case library and one worker thread, and every
request (findings, finding map, similar cases, a chat turn, a report draft, a quiz) comes back at once as a `Job`.

Models load lazily on the worker (`load_models` after the window shows, or the first request that needs them), so
the viewer starts without importing torch. A new study cancels the unfinished work of the previous one; a new
question supersedes the answer still being written. The LLM runs in a supervised child (engine.chat.service): if it
dies, that job fails with a clear message and the next question starts a fresh one. CUDA out-of-memory falls back to
the CPU and says so in `status()`. Chat transcripts are saved per study after every turn (engine.chat.transcripts).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from engine.chat.transcripts import Transcript, TranscriptStore
from engine.errors import Cancelled, ChatBackendCrashed, EngineError, LibraryError
from engine.jobs import Job, JobContext, JobQueue
from engine.quiz import QuizQuestion, make_quiz
from engine.saliency import FindingMap
from engine.volume import Volume

if TYPE_CHECKING:
    import torch

    from engine.case_library import CaseLibrary
    from engine.chat.service import ChatAnswer, ChatModel
    from engine.findings import FindingsModel, FindingsResult
    from engine.library_import import LibraryEncoder
    from engine.model_store import ModelStore
    from engine.retrieval import CaseSearch, Hit

__all__ = ["Engine", "EngineConfig", "FindingMap", "ModelStatus", "NoStudy", "QuizQuestion", "ReportDraft",
           "ReportSentence", "SimilarCase"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# ask() modes: the app's short names and upstream's task names
ASK_MODES: dict[str | None, str] = {None: "long_answer", "long": "long_answer", "short": "short_answer",
                                    "multiple_choice": "multiple_choice", "report": "report_generation",
                                    "long_answer": "long_answer", "short_answer": "short_answer",
                                    "report_generation": "report_generation"}
STUDY_GROUPS = ("study", "findings", "finding map", "similar", "report", "quiz", "chat")
MODELS_ADVICE = "run `ctdesk models` to see what is missing and where to put it"


class NoStudy(EngineError):
    """A request needs an open study and there is none."""


@dataclass(frozen=True)
class EngineConfig:
    ctclip: str | None = None  # None → the model store's CT-CLIP, else the demo pack ("demo"); or a bundle/.pt path
    chat: str | None = None  # None → the model store's CT-CHAT, else the demo pack; or a chat bundle folder
    library: Path | None = None  # case library folder (None → $CTDESK_LIBRARY, else the user's data dir)
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    top_k: int = 8
    transcripts: Path | None = None  # chat transcripts folder (None → $CTDESK_TRANSCRIPTS, else the user's data dir)
    max_new_tokens: int = 512  # per chat answer / report draft
    n_ctx: int = 4096  # the LLM's context window (tokens)


@dataclass(frozen=True)
class ModelStatus:
    role: str  # "ctclip" | "chat" | "library"
    state: str  # "idle" | "loading" | "ready" | "missing" | "error"
    name: str
    device: str
    demo: bool
    label: str  # e.g. "demo model trained on synthetic phantoms"
    message: str  # advice when missing/error, e.g. "run `ctdesk models` …"; warnings such as a CPU fallback


@dataclass(frozen=True)
class SimilarCase:
    case_id: int
    similarity: float
    title: str
    thumbnail: np.ndarray | None  # uint8 2-D (the central axial slice, lung window)
    findings: tuple[str, ...]  # positive labels of the case
    shared_findings: tuple[str, ...]  # positive in both the case and the current study (study: P ≥ threshold/0.5)
    report_excerpt: str
    source: str | None  # path the viewer can open for "compare"


@dataclass(frozen=True)
class ReportSentence:
    text: str
    findings: tuple[str, ...]  # the CT-RATE labels this sentence mentions
    absent: tuple[str, ...] = ()  # those of `findings` it mentions as absent or normal ("No pleural effusion.")


@dataclass(frozen=True)
class ReportDraft:
    text: str
    sentences: tuple[ReportSentence, ...]
    model_name: str
    demo: bool
    label: str


def default_library_dir() -> Path:
    """$CTDESK_LIBRARY, else `library/` in the user's ctdesk data folder, else the demo pack's phantom library.

    The demo library (built by the setup command from phantoms with the demo CT-CLIP) is only a fallback when the
    user has no library of their own, so similar cases work out of the box with the demo model.
    """
    override = os.environ.get("CTDESK_LIBRARY")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_data_dir

    from engine.case_library import CATALOGUE
    from engine.resources import resources_dir

    own = Path(user_data_dir("ctdesk")) / "library"
    demo = resources_dir() / "models" / "demo" / "library"
    return demo if not (own / CATALOGUE).is_file() and (demo / CATALOGUE).is_file() else own


@dataclass
class _Study:
    """One opened study (or none) and what the engine learnt about it; jobs keep the one they were asked about."""

    volume: Volume | None
    key: str | None
    transcript: Transcript
    persistent: bool  # False without a study: that conversation is not saved
    findings: FindingsResult | None = None
    ready: threading.Event = field(default_factory=threading.Event)  # key resolved, transcript loaded


class Engine:
    """Models, case library and the worker thread behind the viewer; every request returns a `Job`."""

    NOTICE = "Research use only — not for diagnostic use."

    def __init__(self, config: EngineConfig | None = None, *, store: ModelStore | None = None) -> None:
        self.config = config or EngineConfig()
        self._store = store
        self.queue = JobQueue()
        self.transcripts = TranscriptStore(self.config.transcripts)
        self._lock = threading.Lock()
        self._status = {role: ModelStatus(role, "idle", "", "", False, "", "Loads in the background when needed.")
                        for role in ("ctclip", "chat", "library")}
        self._study = self._no_study()
        # worker-thread state
        self._findings_model: FindingsModel | None = None
        self._chat: ChatModel | None = None
        self._library: CaseLibrary | None = None
        self._search: CaseSearch | None = None
        self._encoder: LibraryEncoder | None = None

    # --- status -------------------------------------------------------------------------------------------------
    def status(self) -> list[ModelStatus]:
        with self._lock:
            return [self._status[r] for r in ("ctclip", "chat", "library")]

    def _set_status(self, role: str, state: str, message: str = "", **fields: Any) -> None:
        with self._lock:
            old = self._status[role]
            self._status[role] = ModelStatus(role, state, fields.get("name", old.name),
                                             fields.get("device", old.device), fields.get("demo", old.demo),
                                             fields.get("label", old.label), message)

    @property
    def store(self) -> ModelStore:
        if self._store is None:
            from engine.model_store import ModelStore

            self._store = ModelStore()
        return self._store

    def load_models(self) -> Job[list[ModelStatus]]:
        """Load CT-CLIP, the chat model and the case library in the background; the job returns their status
        (missing or broken ones are reported there, not as a failure)."""

        def work(ctx: JobContext) -> list[ModelStatus]:
            steps: tuple[tuple[str, Callable[[JobContext], Any]], ...] = (
                ("Loading CT-CLIP", self._ensure_ctclip), ("Loading the chat model", lambda c: self._ensure_chat()),
                ("Opening the case library", lambda c: self._ensure_library()))
            for n, (message, step) in enumerate(steps):
                ctx.progress(n / len(steps), message)
                try:
                    step(ctx)
                except Cancelled:
                    raise
                except EngineError:
                    pass  # already in status()
            return self.status()

        return self.queue.submit("loading models", work, group="models")

    # --- the study ----------------------------------------------------------------------------------------------
    @property
    def study(self) -> Volume | None:
        return self._study.volume

    def set_study(self, volume: Volume | None, key: str | None = None) -> Job[str] | None:
        """Make `volume` the current study: cancels the previous study's unfinished work and switches the chat to
        this study's saved conversation. `key` names the study across sessions (default: its content hash).

        Returns the job that resolves the key and loads the transcript (None without a study); requests made
        afterwards run after it.
        """
        for group in STUDY_GROUPS:
            self.queue.cancel_group(group)
        if volume is None:
            with self._lock:
                self._study = self._no_study()
            return None
        study = _Study(volume, key, Transcript(key or ""), persistent=True)
        with self._lock:
            self._study = study

        def work(ctx: JobContext) -> str:
            try:
                if study.key is None:
                    from engine.findings import volume_content_hash

                    study.key = volume_content_hash(volume)
                study.transcript = self.transcripts.load(study.key)
            except BaseException:
                study.persistent = False  # chat still works, it is just not saved
                raise
            finally:
                study.ready.set()
            return study.key

        return self.queue.submit("opening the study", work, group="study")

    @staticmethod
    def _no_study() -> _Study:
        study = _Study(None, None, Transcript(""), persistent=False)
        study.ready.set()
        return study

    def chat_history(self) -> list[dict[str, str]]:
        """The current study's conversation: [{"role": "user"|"assistant", "content": str}, …]."""
        with self._lock:
            study = self._study
        return study.transcript.history() if study.ready.is_set() else []

    @property
    def transcript_problem(self) -> str | None:
        """Why the current study's saved chat could not be used (it was set aside), else None."""
        return self._study.transcript.problem

    def _current(self) -> _Study:
        with self._lock:
            return self._study

    def _submit(self, kind: str, group: str | None, work: Callable[[JobContext], T]) -> Job[T]:
        return self.queue.submit(kind, work, group=group)

    # --- CT-CLIP ------------------------------------------------------------------------------------------------
    def findings(self, extra: Sequence[str] = ()) -> Job[FindingsResult]:
        """P(present) for the 18 CT-RATE findings plus `extra` typed ones (engine.findings.FindingsResult)."""
        study = self._current()
        extra = tuple(extra)

        def work(ctx: JobContext) -> FindingsResult:
            volume = _volume(study)
            model = self._ensure_ctclip(ctx)
            try:
                result = model.run(volume, extra, progress=ctx.progress)
            finally:
                self._note_ctclip_warnings(model)
            study.findings = result
            return result

        return self._submit("findings", "findings", work)

    def finding_map(self, finding: str) -> Job[FindingMap]:
        """Where `finding` is most likely, on the study's voxel grid (engine.saliency: exact token attribution)."""
        study = self._current()

        def work(ctx: JobContext) -> FindingMap:
            from engine.saliency import finding_map

            _volume(study)
            model = self._ensure_ctclip(ctx)
            encoded = self._encode(ctx, model, study)
            ctx.progress(0.95, f"Locating {finding}")
            result = finding_map(model.clip, encoded.tokens, model.prompt_latents(finding), _volume(study), finding)
            if model.loaded.kind == "classfine":  # the bar comes from the ClassFine head; the map cannot
                note = (result.method_note + " This model's bars come from its ClassFine classifier, which is not "
                        "linear in the tokens; the map uses its CT-CLIP tower's zero-shot prompts instead.")
                result = FindingMap(result.finding, result.method, note, result.values)
            return result

        return self._submit(f"the map of {finding}", "finding map", work)

    def _encode(self, ctx: JobContext, model: FindingsModel, study: _Study) -> Any:
        volume = _volume(study)
        try:
            return model.encode(volume, progress=ctx.progress)
        finally:
            self._note_ctclip_warnings(model)

    def _study_findings(self, ctx: JobContext, model: FindingsModel, study: _Study) -> FindingsResult:
        if study.findings is None:
            volume = _volume(study)
            try:
                study.findings = model.run(volume, progress=ctx.progress)
            finally:
                self._note_ctclip_warnings(model)
        return study.findings

    def _ensure_ctclip(self, ctx: JobContext | None = None) -> FindingsModel:
        """The loaded CT-CLIP (loading it on first use); missing or broken models raise with advice."""
        if self._findings_model is not None:
            return self._findings_model
        from engine.device import pick_device
        from engine.findings import FindingsModel
        from engine.models.loading import load_ctclip, resolve_spec

        self._set_status("ctclip", "loading", "Loading CT-CLIP…")
        try:
            spec = resolve_spec(self.config.ctclip, self.store)
        except EngineError as exc:
            state = "missing" if self._ctclip_missing() else "error"
            self._set_status("ctclip", state, f"{exc} ({MODELS_ADVICE})" if state == "missing" else str(exc))
            raise
        device = pick_device(None if self.config.device == "auto" else self.config.device)
        cache = self.store.cache_dir if spec.weights.suffix != ".safetensors" else None
        note = ""
        try:
            try:
                loaded = load_ctclip(spec, device=device, cache_dir=cache)
            except Exception as exc:
                if not _is_cuda_oom(exc):
                    raise
                import torch

                torch.cuda.empty_cache()
                note = "The GPU ran out of memory loading CT-CLIP; it runs on the CPU instead (slower)."
                device = torch.device("cpu")
                loaded = load_ctclip(spec, device=device, cache_dir=cache)
        except EngineError as exc:
            self._set_status("ctclip", "error", str(exc), name=spec.name)
            raise
        except Exception as exc:
            message = f"CT-CLIP {spec.name} could not be loaded ({type(exc).__name__}: {exc})."
            self._set_status("ctclip", "error", message, name=spec.name)
            raise EngineError(message) from exc
        self._findings_model = FindingsModel(loaded, device)
        if note:
            self._findings_model.warnings.append(note)
        self._set_status("ctclip", "ready", note, name=spec.name, device=str(device), demo=spec.demo,
                         label=spec.label)
        return self._findings_model

    def _ctclip_missing(self) -> bool:
        """True when no CT-CLIP is there at all (as opposed to one that is there but broken)."""
        from engine.models.loading import BUNDLE_MANIFEST, demo_bundle_dir

        choice = self.config.ctclip
        if choice is None:
            if any(self.store.has(k) for k in ("ctclip", "vocabfine", "classfine")):
                return not self.store.has("cxr-bert")
            return not (demo_bundle_dir() / BUNDLE_MANIFEST).is_file()
        if choice == "demo":
            return not (demo_bundle_dir() / BUNDLE_MANIFEST).is_file()
        return not Path(choice).expanduser().exists()

    def _note_ctclip_warnings(self, model: FindingsModel) -> None:
        """Surface a GPU → CPU fallback (engine.device.run_with_oom_fallback) in status()."""
        if model.warnings:
            self._set_status("ctclip", "ready", model.warnings[-1], device=str(model.device))

    # --- case library -------------------------------------------------------------------------------------------
    def _ensure_library(self) -> tuple[CaseLibrary, CaseSearch]:
        if self._library is not None and self._search is not None:
            return self._library, self._search
        from engine.case_library import CATALOGUE, CaseLibrary
        from engine.retrieval import CaseSearch

        folder = Path(self.config.library).expanduser() if self.config.library else default_library_dir()
        if not (folder / CATALOGUE).is_file():
            message = (f"No case library at {folder}: build one with `ctdesk library add --library {folder} "
                       "STUDIES…` or choose a library folder; similar cases are unavailable until then.")
            self._set_status("library", "missing", message, name=folder.name)
            raise LibraryError(message)
        try:
            library = CaseLibrary(folder, create=False, readonly=True)
        except LibraryError as exc:
            self._set_status("library", "error", str(exc), name=folder.name)
            raise
        if len(library) == 0:
            library.close()
            message = f"The case library {folder} holds no cases yet: add some with `ctdesk library add`."
            self._set_status("library", "missing", message, name=folder.name)
            raise LibraryError(message)
        model = library.model
        demo = model is not None and model.source == "demo"
        self._library, self._search = library, CaseSearch(library)
        self._set_status("library", "ready", f"{len(library)} cases", name=folder.name, demo=demo,
                         label="filled by the demo model" if demo else "")
        return library, self._search

    def _library_encoder(self, model: FindingsModel, library: CaseLibrary) -> LibraryEncoder:
        """The loaded CT-CLIP as the library sees it; refuses a library filled by another model."""
        from engine.library_import import LibraryEncoder

        if self._encoder is None or self._encoder.model is not model:
            self._encoder = LibraryEncoder(model)
        self._encoder.check(library)
        return self._encoder

    def similar(self, k: int | None = None) -> Job[list[SimilarCase]]:
        """The library's cases most like the current study (cosine similarity of CT-CLIP image latents)."""
        study = self._current()
        k = k or self.config.top_k

        def work(ctx: JobContext) -> list[SimilarCase]:
            _volume(study)
            library, search = self._ensure_library()
            model = self._ensure_ctclip(ctx)
            self._library_encoder(model, library)
            result = self._study_findings(ctx, model, study)
            own = library.find_hash(result.encoded.content_hash)  # the study itself is in the library: skip it
            hits = search.by_latent(result.encoded.image_latent, k, exclude_case_ids=() if own is None else (own,))
            return self._similar_cases(library, hits, _positives(result))

        return self._submit("similar cases", "similar", work)

    def search_text(self, text: str, k: int | None = None) -> Job[list[SimilarCase]]:
        """The library's cases whose images best match `text` (a report or phrase, through CT-CLIP's text tower)."""
        study = self._current()
        k = k or self.config.top_k
        query = text.strip()

        def work(ctx: JobContext) -> list[SimilarCase]:
            if not query:
                raise EngineError("Type a description to search for.")
            library, search = self._ensure_library()
            model = self._ensure_ctclip(ctx)
            encoder = self._library_encoder(model, library)
            hits = search.by_text(query, encoder, k)
            positives = _positives(study.findings) if study.findings is not None else frozenset()
            return self._similar_cases(library, hits, positives)

        return self._submit("text search", "search", work)

    @staticmethod
    def _similar_cases(library: CaseLibrary, hits: Sequence[Hit], study_positives: frozenset[str]) -> list[SimilarCase]:
        from engine.resources import ct_rate_labels

        labels = ct_rate_labels()
        out = []
        for hit in hits:
            case = hit.case
            positive = tuple(lab for lab, v in zip(labels, case.labels, strict=False) if v > 0) if (
                case.labels is not None) else ()
            thumb = library.thumbnail(case.case_id)
            out.append(SimilarCase(
                case_id=case.case_id, similarity=float(hit.score), title=case.name,
                thumbnail=None if thumb is None else np.ascontiguousarray(thumb[0]),
                findings=positive, shared_findings=tuple(f for f in positive if f in study_positives),
                report_excerpt=_excerpt(case.impression_text or case.findings_text or ""),
                source=case.study_path or None))
        return out

    def open_case(self, case_id: int) -> Job[Volume]:
        """Open a library case's study (for "compare"), the same series it was imported from."""

        def work(ctx: JobContext) -> Volume:
            from engine.io import open_volume

            library, _ = self._ensure_library()
            case = library.case(case_id)
            series = None
            for key in library.sources_of([case_id]).get(case_id, []):
                path, sep, uid = key.rpartition("#")
                if sep and path == case.study_path:
                    series = uid
                    break
            if not Path(case.study_path).exists():
                raise LibraryError(f"Case {case_id}'s study is no longer at {case.study_path}.")
            return open_volume(case.study_path, series=series, progress=ctx.progress)

        return self._submit(f"opening case {case_id}", "open case", work)

    # --- chat ---------------------------------------------------------------------------------------------------
    def _ensure_chat(self) -> ChatModel:
        if self._chat is not None:
            return self._chat
        from engine.chat.service import ChatModel, resolve_chat_model

        self._set_status("chat", "loading", "Loading the chat model…")
        try:
            spec = resolve_chat_model(self.config.chat, store=self.store)
        except EngineError as exc:
            missing = self._chat_missing()
            self._set_status("chat", "missing" if missing else "error",
                             f"{exc} ({MODELS_ADVICE})" if missing else str(exc))
            raise
        device = None if self.config.device == "auto" else self.config.device
        try:
            chat = ChatModel(spec, device, n_ctx=self.config.n_ctx)
        except EngineError as exc:
            self._set_status("chat", "error", str(exc), name=spec.name)
            raise
        except Exception as exc:
            message = f"The chat model {spec.name} could not be loaded ({type(exc).__name__}: {exc})."
            self._set_status("chat", "error", message, name=spec.name)
            raise EngineError(message) from exc
        self._chat = chat
        self._set_status("chat", "ready", "", name=spec.name, device=_device_name(getattr(chat, "_device", None)),
                         demo=spec.demo,
                         label=spec.label)
        return chat

    def _chat_missing(self) -> bool:
        """True when no chat model is there at all (as opposed to one that is there but broken)."""
        from engine.chat.bundle import CHAT_MANIFEST
        from engine.chat.service import demo_chat_dir

        choice = self.config.chat
        demo_there = (demo_chat_dir() / CHAT_MANIFEST).is_file()
        if choice is None:
            root = self.store.root
            return not demo_there and not (root.is_dir() and any(root.glob(f"*/{CHAT_MANIFEST}")))
        if choice == "demo":
            return not demo_there
        return not Path(choice).expanduser().exists()

    def _chat_call(self, call: Callable[[ChatModel], T]) -> T:
        """Run one request on the chat model; a crashed LLM process shows in status() until the next one works."""
        chat = self._ensure_chat()
        try:
            result = call(chat)
        except ChatBackendCrashed as exc:
            self._set_status("chat", "error", f"{exc}")
            raise
        if self._status["chat"].state != "ready":
            self._set_status("chat", "ready", "")
        return result

    def ask(self, question: str, mode: str | None = None) -> Job[ChatAnswer]:
        """One chat turn about the current study (or none: then the model gets no image, and CT-CHAT's guardrail
        declines study-specific questions). Tokens stream through `Job.on_stream`; a new question cancels this one."""
        task = ASK_MODES.get(mode)
        text = question.strip()
        study = self._current()

        def work(ctx: JobContext) -> ChatAnswer:
            if task is None:
                raise EngineError(f"Unknown answer mode {mode!r}; expected long, short, multiple_choice or report.")
            if not text:
                raise EngineError("Type a question first.")
            if not study.ready.is_set():  # its opening job never ran: a newer study replaced it
                raise Cancelled()
            tokens = None
            if study.volume is not None:  # without a study the prompt has no image: the guardrail applies
                model = self._ensure_ctclip(ctx)
                tokens = self._encode(ctx, model, study)
            turns: list[dict[str, Any]] = [{"role": m["role"], "content": m["content"], "mode": m.get("mode")}
                                           for m in study.transcript.messages]
            for turn in turns:
                if turn["role"] == "assistant":
                    turn.pop("mode")
            turns.append({"role": "user", "content": text, "mode": task})
            ctx.progress(0.97, "Writing the answer")
            reply = self._chat_call(lambda chat: chat.answer(
                tokens, turns, None, on_token=ctx.stream, cancel_event=ctx.cancel_event,
                max_new_tokens=self.config.max_new_tokens))
            stopped = reply.stop_reason == "cancelled"
            study.transcript.add_turn(text, reply.text, task, stopped=stopped)
            if study.persistent:
                try:
                    self.transcripts.save(study.transcript)
                except EngineError as exc:
                    log.warning("%s", exc)
                    self._set_status("chat", self._status["chat"].state, str(exc))
            if stopped:
                raise Cancelled()
            return reply

        return self._submit("the chat answer", "chat", work)

    def report_draft(self) -> Job[ReportDraft]:
        """A draft report from CT-CHAT's report task, split into sentences linked to the findings they mention."""
        study = self._current()

        def work(ctx: JobContext) -> ReportDraft:
            _volume(study)
            model = self._ensure_ctclip(ctx)
            encoded = self._encode(ctx, model, study)
            ctx.progress(0.97, "Writing the report draft")
            reply = self._chat_call(lambda chat: chat.report(
                encoded, on_token=ctx.stream, cancel_event=ctx.cancel_event, max_new_tokens=self.config.max_new_tokens))
            if reply.stop_reason == "cancelled":
                raise Cancelled()
            assert self._chat is not None
            spec = self._chat.spec
            text = reply.text.strip()
            return ReportDraft(text, link_sentences(text), spec.name, spec.demo, spec.label)

        return self._submit("the report draft", "report", work)

    # --- teaching -----------------------------------------------------------------------------------------------
    def quiz(self, n: int = 3) -> Job[list[QuizQuestion]]:
        """Multiple-choice questions about the current study; the answer key is the AI model's findings."""
        study = self._current()

        def work(ctx: JobContext) -> list[QuizQuestion]:
            from engine.resources import ct_rate_labels

            _volume(study)
            model = self._ensure_ctclip(ctx)
            result = self._study_findings(ctx, model, study)
            return make_quiz(result.probabilities, result.thresholds, n, model_name=result.model_name,
                             demo=result.demo, labels=ct_rate_labels(), seed=result.encoded.content_hash)

        return self._submit("the quiz", "quiz", work)

    # --- lifetime -----------------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Cancel all work, join the worker thread, stop the chat process and close the library. Idempotent."""
        self.queue.shutdown(wait=True)
        if self._chat is not None:
            self._chat.close()
            self._chat = None
        if self._library is not None:
            self._library.close()
            self._library, self._search = None, None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def link_sentences(text: str) -> tuple[ReportSentence, ...]:
    """Split a report into sentences and name the CT-RATE findings each mentions, in upstream order
    (engine.report_labeller: keyword + negation rules)."""
    from engine.report_labeller import label_sentence, split_sentences
    from engine.resources import ct_rate_labels

    out = []
    for sentence in split_sentences(text):
        labels = label_sentence(sentence)  # finding → True (present) / False (negated or normal)
        mentioned = tuple(f for f in ct_rate_labels() if f in labels)
        out.append(ReportSentence(sentence, mentioned, tuple(f for f in mentioned if not labels[f])))
    return tuple(out)



def _volume(study: _Study) -> Volume:
    """The study's volume, or the one-line error a request without a study gets (raised on the worker)."""
    if study.volume is None:
        raise NoStudy("Open a study first.")
    return study.volume


def _positives(result: FindingsResult) -> frozenset[str]:
    """The study's findings the model calls present: P ≥ the model's threshold, else 0.5."""
    return frozenset(f for f, p in result.probabilities.items() if p >= result.thresholds.get(f, 0.5))


def _excerpt(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " …"


def _is_cuda_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


def _device_name(device: torch.device | str | None) -> str:
    return str(device) if device is not None else "cpu"
