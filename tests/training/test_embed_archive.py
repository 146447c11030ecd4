"""Embedding an archive in shards (as `accelerate launch -m training.embed_archive` ranks do) and merging them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import tiny_bundle

from engine.case_library import CaseLibrary
from engine.library_shards import shard_folder, shard_folders
from training.embed_archive import embed_shard, main
from training.phantoms import make_phantom, write_phantom

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("archive")
    studies = []
    for n, findings in enumerate([["pleural effusion"], [], ["cardiomegaly"]]):
        write_phantom(make_phantom(findings, seed=70 + n, shape=(32, 64, 64)), root / f"study{n}")
        studies.append(root / f"study{n}" / "phantom.nii.gz")
    return tiny_bundle(root / "model", seed=4), studies


def test_ranks_split_the_archive_and_the_merge_joins_it_once(archive: tuple[Path, list[Path]],
                                                             tmp_path: Path) -> None:
    bundle, studies = archive
    main_dir = tmp_path / "main"
    CaseLibrary(main_dir).close()
    reports = [embed_shard(main_dir, studies, rank=r, world=2, model=str(bundle), device="cpu", quiet=True)
               for r in range(2)]
    assert [r.added for r in reports] == [2, 1]  # positions 0, 2 → rank 0; position 1 → rank 1
    with CaseLibrary(shard_folder(main_dir, 1, 2), readonly=True) as shard:
        assert shard.case(0).study_path == str(studies[1])
    assert embed_shard(main_dir, studies, rank=0, world=2, model=str(bundle), device="cpu", quiet=True).added == 0

    merged = subprocess.run([sys.executable, "-m", "app.cli", "library", "merge", "--library", str(main_dir)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert merged.returncode == 0, merged.stderr
    assert "3 cases added" in merged.stdout
    with CaseLibrary(main_dir) as lib:
        assert sorted(c.study_path for chunk in lib.iter_cases() for c in chunk) == sorted(map(str, studies))
        assert lib.model is not None and lib.model.name == "tiny-ctclip-4"
        for shard_dir in shard_folders(main_dir):
            with CaseLibrary(shard_dir, readonly=True) as shard:
                for chunk in shard.iter_cases():
                    for case in chunk:
                        target = lib.find_hash(case.content_hash)
                        np.testing.assert_array_equal(lib.latent(target), shard.latent(case.case_id))
    hits = subprocess.run([sys.executable, "-m", "app.cli", "similar", str(studies[2]), "--library", str(main_dir),
                           "--json", "-k", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert json.loads(hits.stdout)[0]["case"]["study_path"] == str(studies[2])


def test_the_script_runs_as_one_process_and_merges(archive: tuple[Path, list[Path]], tmp_path: Path) -> None:
    bundle, studies = archive
    assert main([*map(str, studies), "--library", str(tmp_path / "main"), "--model", str(bundle),
                 "--device", "cpu", "--merge"]) == 0
    with CaseLibrary(tmp_path / "main", readonly=True) as lib:
        assert len(lib) == 3
    assert shard_folders(tmp_path / "main") == [shard_folder(tmp_path / "main", 0, 1)]
