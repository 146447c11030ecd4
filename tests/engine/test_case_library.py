"""The case library's storage: atomic batches, no duplicates, the latent file kept in step with the catalogue,
schema versions, model identity, and merging shards."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from engine.case_library import LATENTS, SCHEMA_VERSION, CaseLibrary, ModelIdentity, NewCase
from engine.errors import LibraryError, LibraryModelMismatch
from engine.library_shards import merge_libraries, open_shard, parse_shard, shard_folder, shard_folders

MODEL = ModelIdentity("test-model", "ab" * 16, 16, "/models/test")


def unit_rows(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def new_cases(latents: np.ndarray, prefix: str = "c", patient: str | None = None) -> list[NewCase]:
    return [NewCase(f"{prefix}{i}", f"hash-{prefix}{i}", v, f"/studies/{prefix}{i}.nii.gz", f"{prefix}{i}.nii.gz",
                    patient_key=patient, meta={"shape": [4, 5, 6]}, findings_text=f"finding {i}",
                    labels=np.eye(18, dtype=np.int8)[i % 18], thumbnail=np.full((2, 3, 4), i, np.uint8))
            for i, v in enumerate(latents)]


@pytest.fixture
def library(tmp_path: Path) -> CaseLibrary:
    lib = CaseLibrary(tmp_path / "lib")
    lib.adopt(MODEL)
    yield lib
    lib.close()


def test_cases_round_trip_with_latents_thumbnails_and_labels(library: CaseLibrary) -> None:
    rows = unit_rows(5)
    assert library.add_cases(new_cases(rows)) == [(i, True) for i in range(5)]
    assert len(library) == 5 and library.latents().shape == (5, 16)
    np.testing.assert_array_equal(library.latents(), rows)
    case = library.case(3)
    assert case.content_hash == "hash-c3" and case.findings_text == "finding 3" and case.labels[3] == 1
    assert case.as_json()["labels"]["Pericardial effusion"] == 1
    np.testing.assert_array_equal(library.thumbnail(3), np.full((2, 3, 4), 3, np.uint8))
    assert library.stats()["with_labels"] == 5 and library.stats()["latents_bytes"] == 5 * 16 * 4


def test_same_content_is_stored_once_and_its_new_source_remembered(library: CaseLibrary) -> None:
    rows = unit_rows(3)
    library.add_cases(new_cases(rows))
    again = new_cases(rows[:1], prefix="other")[0]
    again.content_hash = "hash-c0"
    dup_in_batch = new_cases(unit_rows(1, seed=5), prefix="x")[0]
    twin = new_cases(unit_rows(1, seed=5), prefix="y")[0]
    twin.content_hash = dup_in_batch.content_hash
    assert library.add_cases([again, dup_in_batch, twin]) == [(0, False), (3, True), (3, False)]
    assert len(library) == 4 and library.has_source("other0") and library.has_source("y0")
    assert library.latents().shape == (4, 16)


def test_vectors_past_the_committed_rows_are_cut_on_reopen(tmp_path: Path, library: CaseLibrary) -> None:
    library.add_cases(new_cases(unit_rows(2)))
    with open(library.folder / LATENTS, "ab") as f:  # what a writer killed between fsync and commit leaves
        f.write(np.ones(16, np.float32).tobytes() * 3)
    with CaseLibrary(library.folder, readonly=True) as reader:  # a reader just ignores them
        assert reader.latents().shape == (2, 16)
    library.close()
    with CaseLibrary(library.folder) as reopened:
        assert (library.folder / LATENTS).stat().st_size == 2 * 16 * 4
        reopened.add_cases(new_cases(unit_rows(1, seed=9), prefix="n"))
        np.testing.assert_array_equal(reopened.latent(2), unit_rows(1, seed=9)[0])


def test_a_failed_batch_leaves_nothing_behind(library: CaseLibrary) -> None:
    library.add_cases(new_cases(unit_rows(2)))
    bad = new_cases(unit_rows(2, seed=3), prefix="b")
    bad[1].latent = np.full(16, np.nan, np.float32)
    with pytest.raises(LibraryError, match="does not fit"):
        library.add_cases(bad)
    assert len(library) == 2 and not library.has_source("b0")
    library.add_cases(new_cases(unit_rows(1, seed=4), prefix="ok"))
    np.testing.assert_array_equal(library.latent(2), unit_rows(1, seed=4)[0])


def test_a_shorter_latent_file_is_reported_not_guessed(library: CaseLibrary) -> None:
    library.add_cases(new_cases(unit_rows(3)))
    library.close()
    with open(library.folder / LATENTS, "r+b") as f:
        f.truncate(16 * 4)
    with pytest.raises(LibraryError, match="holds 1 latents but the catalogue lists 3"):
        CaseLibrary(library.folder)


def test_a_different_model_is_refused_once_cases_exist(library: CaseLibrary) -> None:
    library.adopt(ModelIdentity("test-model", "ab" * 16, 16, "/moved/test"))  # same weights elsewhere: fine
    library.add_cases(new_cases(unit_rows(1)))
    with pytest.raises(LibraryModelMismatch, match="incomparable latents"):
        library.adopt(ModelIdentity("other", "cd" * 16, 16, "/models/other"))


def test_schema_is_versioned_and_a_newer_one_refused(tmp_path: Path) -> None:
    CaseLibrary(tmp_path / "lib").close()
    db = sqlite3.connect(tmp_path / "lib" / "library.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(LibraryError, match="newer ctdesk"):
        CaseLibrary(tmp_path / "lib")
    with pytest.raises(LibraryError, match="not a case library"):
        CaseLibrary(tmp_path / "missing", create=False)


def test_shards_merge_without_duplicates_and_merging_twice_adds_nothing(tmp_path: Path) -> None:
    main = tmp_path / "main"
    CaseLibrary(main).close()
    rows = unit_rows(7)
    cases = new_cases(rows, patient="ctrate:train_1")
    for index in range(2):
        with open_shard(main, index, 2) as shard:
            shard.adopt(MODEL)
            shard.add_cases([c for i, c in enumerate(cases) if i % 2 == index])
            shard.add_cases([cases[0]])  # overlap: every shard saw case 0
            shard.record_problem("bad.nii.gz", "damaged")
    assert shard_folders(main) == [shard_folder(main, 0, 2), shard_folder(main, 1, 2)]
    with CaseLibrary(main) as lib:
        report = merge_libraries(lib, shard_folders(main))
        assert (report.added, len(lib)) == (7, 7)
        assert merge_libraries(lib, shard_folders(main)).added == 0 and len(lib) == 7
        by_hash = {c.content_hash: c.case_id for chunk in lib.iter_cases() for c in chunk}
        for i, c in enumerate(cases):
            np.testing.assert_array_equal(lib.latent(by_hash[c.content_hash]), rows[i])
            assert lib.has_source(c.source_key)
        np.testing.assert_array_equal(lib.thumbnail(by_hash["hash-c5"]), np.full((2, 3, 4), 5, np.uint8))
        assert lib.case_ids_of_patient("ctrate:train_1") and len(lib.problems()) == 2
        assert lib.model == MODEL


def test_merging_latents_of_another_model_is_refused(tmp_path: Path, library: CaseLibrary) -> None:
    library.add_cases(new_cases(unit_rows(2)))
    with CaseLibrary(tmp_path / "other") as other:
        other.adopt(ModelIdentity("other", "cd" * 16, 16))
        other.add_cases(new_cases(unit_rows(2, seed=1), prefix="o"))
    with pytest.raises(LibraryModelMismatch, match="cannot be merged"):
        merge_libraries(library, [tmp_path / "other"])
    assert len(library) == 2


def test_shards_share_the_main_librarys_patient_salt(tmp_path: Path) -> None:
    with CaseLibrary(tmp_path / "main") as main:
        salt = main.patient_salt
    assert len(salt) == 32
    with open_shard(tmp_path / "main", 1, 3) as shard:
        assert shard.patient_salt == salt and shard.folder.name == "shard-0001-of-0003"
    assert parse_shard("2/4") == (2, 4)
    with pytest.raises(LibraryError, match="I/N"):
        parse_shard("4/4")
