"""Embed an archive into a case library with every GPU of one or more machines, then merge.

    accelerate launch -m training.embed_archive --library MAIN --model BUNDLE_OR_PT PATH... [--merge]
    accelerate launch -m training.embed_archive --library MAIN --model … --ctrate DATASET_DIR [--merge]

Process r of n (accelerate's global rank and world size; plain `python -m training.embed_archive` is rank 0 of 1)
encodes the inputs at sorted positions ≡ r (mod n) on its own device into the shard library
`MAIN/shards/shard-r-of-n/`, which shares MAIN's patient-key salt. A killed process restarted with the same
command continues where it stopped (see engine.library_import). With `--merge`, rank 0 waits for every rank and
merges the shards into MAIN; otherwise run `ctdesk library merge --library MAIN` later — also the way to join
shards computed on machines without a shared filesystem (copy each `shards/shard-*` folder into MAIN/shards first).
See docs/case_library.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.case_library import CaseLibrary
from engine.library_import import ImportReport, add_studies, import_ctrate, load_encoder
from engine.library_shards import merge_libraries, open_shard, shard_folders


def embed_shard(main: Path, inputs: Sequence[Path], *, rank: int, world: int, model: str | None,
                ctrate: bool = False, device: str | None = None, store: Path | None = None,
                tokenizer: Path | None = None, quiet: bool = False) -> ImportReport:
    """This process's share of `inputs` (study paths, or one CT-RATE folder) into its shard of `main`."""
    with open_shard(main, rank, world) as shard:
        encoder = load_encoder(shard, model, store=store, tokenizer=tokenizer, device=device)

        def progress(fraction: float, message: str) -> None:
            if not quiet:
                print(f"[rank {rank}/{world}] {message}", file=sys.stderr, flush=True)

        if ctrate:
            return import_ctrate(shard, inputs[0], encoder, progress=progress, shard=(rank, world))
        return add_studies(shard, inputs, encoder, progress=progress, shard=(rank, world))


class _Ranks:
    """accelerate's PartialState when installed (global rank, world size, this rank's device, barrier)."""

    def __init__(self) -> None:
        try:
            from accelerate import PartialState
        except ImportError:
            self.state: Any = None
            self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
            self.device: str | None = None
            return
        self.state = PartialState()
        self.rank, self.world = self.state.process_index, self.state.num_processes
        self.device = str(self.state.device)

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training.embed_archive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, metavar="PATH")
    parser.add_argument("--library", type=Path, required=True, metavar="MAIN")
    parser.add_argument("--model", default=None)
    parser.add_argument("--ctrate", action="store_true", help="PATH is one CT-RATE-style dataset folder")
    parser.add_argument("--merge", action="store_true", help="rank 0 merges the shards into MAIN at the end")
    parser.add_argument("--store", type=Path)
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--device", help="override accelerate's device for this rank")
    args = parser.parse_args(argv)
    if args.ctrate and len(args.inputs) != 1:
        parser.error("--ctrate takes exactly one dataset folder")

    ranks = _Ranks()
    if ranks.rank == 0:
        CaseLibrary(args.library).close()  # MAIN and its salt exist before any shard copies it
    ranks.barrier()
    report = embed_shard(args.library, args.inputs, rank=ranks.rank, world=ranks.world, model=args.model,
                         ctrate=args.ctrate, device=args.device or ranks.device, store=args.store,
                         tokenizer=args.tokenizer)
    print(f"[rank {ranks.rank}/{ranks.world}] {report.summary()}", file=sys.stderr)
    ranks.barrier()
    if args.merge and ranks.rank == 0:
        with CaseLibrary(args.library) as library:
            merged = merge_libraries(library, shard_folders(args.library))
            print(f"{library.folder}: {merged.summary()}; {len(library)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
